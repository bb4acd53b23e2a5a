"""Drive ``xds-testserver`` (tests/e2e/xds/): go-control-plane's ADS server for pod-in-a-box.

The binary is built from the module in ``tests/e2e/xds`` by
``build_go_tool.sh`` and cached by a hash of its sources (``make
xds-server``). ``XdsServer`` runs it on the host with the ADS port where the
box's proxy will dial it and its JSON control port on a free loopback port,
and talks to that port: ``set_snapshot`` replaces what a node is served,
``state`` returns what the server has seen (connected nodes with their id and
cluster, the last version sent, ACKed and NACKed per type URL).
"""

from __future__ import annotations

import contextlib
import json
import select
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Final

from tests.e2e.podbox import STARTED_PIDS

BUILD_SCRIPT: Final = Path(__file__).with_name("build_go_tool.sh")
BUILD_ARGS: Final = ("xds", "xds-testserver")

LISTENER: Final = "type.googleapis.com/envoy.config.listener.v3.Listener"
ROUTE: Final = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
CLUSTER: Final = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
ENDPOINT: Final = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
ALL_TYPES: Final = (LISTENER, ROUTE, CLUSTER, ENDPOINT)


class XdsServerError(RuntimeError):
    """The server failed to build, start or answer."""


def cached_binary() -> Path | None:
    """The binary for the current sources if it is cached, without building."""
    result = subprocess.run(
        ["bash", str(BUILD_SCRIPT), *BUILD_ARGS, "--cached"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if result.returncode != 0:
        return None
    return Path(result.stdout.strip().splitlines()[-1])


def can_build() -> bool:
    return shutil.which("go") is not None


def build_binary(*, timeout: float = 3600.0) -> Path:
    """Build (or reuse) the binary; build output goes to our stderr, so a cold build shows progress."""
    result = subprocess.run(
        ["bash", str(BUILD_SCRIPT), *BUILD_ARGS],
        stdout=subprocess.PIPE,
        text=True,
        timeout=timeout,
        check=False,
    )
    if result.returncode != 0:
        raise XdsServerError(f"{BUILD_SCRIPT} failed with exit code {result.returncode}")
    return Path(result.stdout.strip().splitlines()[-1])


class XdsServer:
    """One ``xds-testserver`` process; ``restart`` brings it back on the same ADS address."""

    def __init__(self, binary: Path, xds_address: str, log: Path) -> None:
        self.binary = binary
        self.xds_address = xds_address
        self.log = log
        self.control = ""
        self._proc: subprocess.Popen[str] | None = None

    # --- process ---------------------------------------------------------------------

    def start(self, *, timeout: float = 20) -> None:
        """Start and wait for its ready line (both sockets listening)."""
        if self._proc is not None and self._proc.poll() is None:
            raise XdsServerError("already running")
        with self.log.open("a") as log:
            self._proc = subprocess.Popen(
                [str(self.binary), "-xds", self.xds_address],
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
                start_new_session=True,
            )
        STARTED_PIDS.append(self._proc.pid)
        line = _read_line(self._proc, timeout=timeout)
        try:
            ready = json.loads(line)
        except ValueError as err:
            raise XdsServerError(f"unexpected first line {line!r}: {self.log_text()}") from err
        self.control = ready["control"]

    def stop(self) -> None:
        """SIGTERM (the server stops at once, streams and all), then reap."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()

    def restart(self) -> None:
        self.stop()
        self.start()

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""

    # --- control interface -----------------------------------------------------------

    def _request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(f"http://{self.control}{path}", data=data, method=method)
        try:
            with urllib.request.urlopen(request, timeout=10) as resp:  # noqa: S310
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read() or b"{}")

    def set_snapshot(self, snapshot: Mapping[str, Any]) -> None:
        """Replace the node's snapshot; raises with the server's message when refused."""
        status, answer = self._request("PUT", "/snapshot", snapshot)
        if status != 200:
            raise XdsServerError(f"snapshot refused ({status}): {answer.get('error')}")

    def put_snapshot(self, snapshot: Mapping[str, Any]) -> tuple[int, dict[str, Any]]:
        """PUT a snapshot and return the raw answer (for tests of refusals)."""
        return self._request("PUT", "/snapshot", snapshot)

    def state(self) -> dict[str, Any]:
        status, answer = self._request("GET", "/state")
        if status != 200:
            raise XdsServerError(f"/state answered {status}")
        result: dict[str, Any] = answer
        return result

    def node(self, node_id: str) -> dict[str, Any] | None:
        found: dict[str, Any] | None = self.state()["nodes"].get(node_id)
        return found

    def wait_for(self, what: str, check: Any, *, timeout: float = 30) -> dict[str, Any]:
        """Poll ``state()`` until ``check(state)`` is true; its state, or TimeoutError."""
        deadline = time.monotonic() + timeout
        last: dict[str, Any] = {}
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError, XdsServerError):
                last = self.state()
                if check(last):
                    return last
            time.sleep(0.1)
        raise TimeoutError(f"xds-testserver: {what} not seen in {timeout}s; last state {last}")

    def wait_acked(
        self, node_id: str, version: str, types: Iterable[str] = ALL_TYPES, *, timeout: float = 30
    ) -> dict[str, Any]:
        """Until the node has ACKed ``version`` for every type in ``types``; the node's entry."""
        wanted = tuple(types)

        def acked(state: dict[str, Any]) -> bool:
            node = state["nodes"].get(node_id)
            if node is None:
                return False
            return all(node["types"].get(t, {}).get("acked") == version for t in wanted)

        state = self.wait_for(f"{node_id} ACKing version {version}", acked, timeout=timeout)
        entry: dict[str, Any] = state["nodes"][node_id]
        return entry


def _read_line(proc: subprocess.Popen[str], *, timeout: float) -> str:
    """The first stdout line of a freshly started process, within ``timeout``."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 0.1)
        if ready:
            return proc.stdout.readline().strip()
        if proc.poll() is not None:
            raise XdsServerError(
                f"xds-testserver exited with {proc.returncode} before it was ready"
            )
    raise XdsServerError(f"xds-testserver not ready in {timeout}s")
