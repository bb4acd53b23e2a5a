"""What the proxy does when its pod stops, driven as the kubelet would (pod-in-a-box).

The kubelet's order, which these tests replay step by step:

* classic sidecar: every container's preStop hook starts at once; a container
  gets SIGTERM when its own hook returns (the app, with no hook, at once);
* native sidecar: the sidecar's preStop also starts at once, but its SIGTERM
  waits until every app container has exited.

The app is a small line server with a graceful shutdown of its own: on SIGTERM
it closes its listening socket, keeps serving the connections it has, and
exits when the last one is closed. A client on the host holds a connection to
it through the proxy and decides when that connection ends. No step waits for
a fixed time: each waits for an event (a line, a refused connection, an exit)
under a generous deadline.
"""

from __future__ import annotations

import contextlib
import json
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.podbox import APP_UID, Box, leftovers, missing_requirement, pod_box

_MISSING = missing_requirement()
pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(_MISSING is not None, reason=f"pod-in-a-box {_MISSING}"),
]

P = "sidecar.mesh.io/"
APP_PORT = 8080
UPSTREAM_PORT = 8082
CLI = Path(sys.executable).parent / "sidecar-injector"
DEADLINE = 60.0  # seconds for any one event; generous, never a measure of speed

# The app: a line server run as APP_UID in the pod (self-contained, like
# podbox's helper: imports first, then drops to the UID before any socket).
# Commands per line: ``echo X`` -> ``X``; ``bye`` -> closes this connection;
# ``call HOST PORT`` -> opens and keeps an outbound connection, answers with
# the upstream's first line; ``exit`` -> exits at once (a Job that is done).
# Events go to stdout: ready, stopping (after SIGTERM), exit.
_APP = r"""
import encodings.idna, os, selectors, signal, socket, sys  # all before the UID drop
uid, port = int(sys.argv[1]), int(sys.argv[2])
os.setgroups([]); os.setgid(uid); os.setuid(uid)
sel = selectors.DefaultSelector()
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("0.0.0.0", port)); srv.listen(16); sel.register(srv, selectors.EVENT_READ)
conns, calls, stopping = {}, [], []
def term(*_):
    stopping.append(1)
signal.signal(signal.SIGTERM, term)
print("ready", flush=True)
while True:
    if stopping and srv.fileno() != -1:
        sel.unregister(srv); srv.close(); print("stopping", flush=True)
    if stopping and not conns:
        print("exit", flush=True); sys.exit(0)
    for key, _ in sel.select(0.1):
        sock = key.fileobj
        if sock is srv:
            conn, _ = srv.accept(); conns[conn] = b""; sel.register(conn, selectors.EVENT_READ)
            continue
        data = sock.recv(4096)
        if not data:
            sel.unregister(sock); del conns[sock]; sock.close(); continue
        conns[sock] += data
        while b"\n" in conns.get(sock, b""):
            line, _, rest = conns[sock].partition(b"\n"); conns[sock] = rest
            cmd, _, arg = line.decode().partition(" ")
            if cmd == "echo":
                sock.sendall(arg.encode() + b"\n")
            elif cmd == "bye":
                sel.unregister(sock); del conns[sock]; sock.close()
            elif cmd == "call":
                host, port_ = arg.split()
                out = socket.create_connection((host, int(port_)), timeout=10); calls.append(out)
                sock.sendall(out.makefile().readline().encode())
            elif cmd == "exit":
                sock.sendall(b"exiting\n"); print("exit", flush=True); os._exit(0)
"""


def inject(tmp_path: Path, *, native: bool, drain_seconds: int) -> dict[str, Any]:
    """The pod as ``sidecar-injector inject -o json`` makes it, with this drain time."""
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "web",
            "namespace": "demo",
            "annotations": {P + "native-sidecar": "true" if native else "false"},
        },
        "spec": {"containers": [{"name": "app", "image": "example.test/app:1"}]},
    }
    manifest = tmp_path / "pod.yaml"
    manifest.write_text(yaml.safe_dump(pod))
    config = tmp_path / "config.yaml"
    config.write_text(f"proxy:\n  drainSeconds: {drain_seconds}\n")
    result = subprocess.run(
        [str(CLI), "inject", "-f", str(manifest), "--config", str(config),
         "--label", "sidecar-injection=enabled", "-o", "json"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    injected: dict[str, Any] = json.loads(result.stdout)
    return injected


def container(pod: dict[str, Any], name: str) -> dict[str, Any]:
    spec = pod["spec"]
    return next(
        c for c in [*spec.get("initContainers", []), *spec["containers"]] if c["name"] == name
    )


def next_line(proc: subprocess.Popen[str]) -> str:
    """The next line the process prints, waiting at most DEADLINE."""
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], DEADLINE)
    assert ready, "no line before the deadline"
    return proc.stdout.readline().strip()


def wait_exit(proc: subprocess.Popen[Any]) -> int:
    return proc.wait(timeout=DEADLINE)


class Client:
    """A connection from the host to the app, through the proxy, held as long as the test likes."""

    def __init__(self, host: str, port: int) -> None:
        self.sock = socket.create_connection((host, port), timeout=DEADLINE)
        self.reader = self.sock.makefile("r")

    def ask(self, line: str) -> str:
        self.sock.sendall(line.encode() + b"\n")
        return self.reader.readline().strip()

    def ended(self) -> bool:
        """True once the other side has closed (EOF or reset), waiting at most DEADLINE."""
        try:
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return True

    def close(self) -> None:
        self.reader.close()
        self.sock.close()


class Upstream:
    """A server on the host end of the veth that greets and then holds each connection."""

    def __init__(self, host: str, port: int) -> None:
        self.sock = socket.create_server((host, port))
        self.open = 0
        self._threads: list[threading.Thread] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, peer = self.sock.accept()
                thread = threading.Thread(target=self._hold, args=(conn, peer), daemon=True)
                thread.start()
                self._threads.append(thread)

    def _hold(self, conn: socket.socket, peer: tuple[str, int]) -> None:
        with conn:
            self.open += 1
            conn.sendall(f"hello {peer[0]}\n".encode())
            with contextlib.suppress(OSError):
                while conn.recv(4096):
                    pass
            self.open -= 1

    def close(self) -> None:
        self.sock.close()


def refused(host: str, port: int) -> bool:
    """Whether a new connection is refused outright (not accepted and then dropped)."""
    try:
        socket.create_connection((host, port), timeout=DEADLINE).close()
    except ConnectionRefusedError:
        return True
    except ConnectionResetError:
        return False  # queued on a listener the moment it closed: ask again
    return False


def wait_until_refused(host: str, port: int) -> None:
    deadline = time.monotonic() + DEADLINE
    while not refused(host, port):
        assert time.monotonic() < deadline, "new inbound connections are still accepted"
        # Every accepted probe is a connection the hook then waits for: poll gently.
        time.sleep(0.02)


def listening(box: Box, port: int) -> bool:
    """Whether something in the pod listens on ``port`` (the app, or Envoy)."""
    out = box.run(["ss", "-Hltn", f"sport = :{port}"]).stdout
    return bool(out.strip())


@contextlib.contextmanager
def running_pod(
    tmp_path: Path, *, native: bool, drain_seconds: int
) -> Iterator[tuple[Box, dict[str, Any], subprocess.Popen[str]]]:
    """A box with mesh-init applied, mesh-proxy ready and the app serving; torn down after."""
    pod = inject(tmp_path, native=native, drain_seconds=drain_seconds)
    with pod_box() as box:
        box.run_init(pod, container(pod, "mesh-init"))
        box.start_proxy(pod, container(pod, "mesh-proxy"))
        box.wait_ready()
        app = box.start([sys.executable, "-I", "-S", "-c", _APP, str(APP_UID), str(APP_PORT)])
        assert next_line(app) == "ready"
        yield box, pod, app


def wait_for_stat(box: Box, name: str, value: int) -> None:
    """Until one of Envoy's gauges reads ``value``."""
    deadline = time.monotonic() + DEADLINE
    while box.stats().get(name) != value:
        assert time.monotonic() < deadline, f"{name} never reached {value}"


def stop_proxy(box: Box) -> int:
    """SIGTERM to Envoy (what the kubelet sends after the hook); its exit code."""
    assert box.proxy is not None
    box.proxy.send_signal(signal.SIGTERM)
    return wait_exit(box.proxy)


def test_classic_shutdown_keeps_a_long_lived_connection_until_the_app_closes_it(
    tmp_path: Path,
) -> None:
    with running_pod(tmp_path, native=False, drain_seconds=300) as (box, pod, app):
        client = Client(box.pod_ip, APP_PORT)
        assert client.ask("echo before") == "before"

        hook = box.start_hook(pod, "preStop")
        # New connections are refused by the proxy itself: the app still listens.
        wait_until_refused(box.pod_ip, APP_PORT)
        assert listening(box, APP_PORT)
        # The open connection goes on working, and the hook waits for it.
        assert client.ask("echo during") == "during"
        assert hook.poll() is None

        app.send_signal(signal.SIGTERM)  # the kubelet signals the app at the same time
        assert next_line(app) == "stopping"
        assert client.ask("echo while the app stops") == "while the app stops"
        assert hook.poll() is None, "the hook must wait while the app has connections"

        client.ask("bye")  # the app finishes its last connection and exits
        assert client.ended()
        client.close()  # as any client does on EOF (the proxy passes half-closes on)
        assert next_line(app) == "exit"
        assert wait_exit(hook) == 0, "the hook returns once nothing is left, before the drain time"
        assert stop_proxy(box) == 0


def test_classic_drain_time_bounds_the_wait_and_then_the_connection_ends(tmp_path: Path) -> None:
    with running_pod(tmp_path, native=False, drain_seconds=1) as (box, pod, _app):
        client = Client(box.pod_ip, APP_PORT)
        assert client.ask("echo held") == "held"
        hook = box.start_hook(pod, "preStop")
        assert wait_exit(hook) == 1
        assert hook.stderr is not None
        assert "drain time (1s) is up with 1 connections open" in hook.stderr.read()
        assert client.ask("echo still here") == "still here"  # until the SIGTERM
        assert stop_proxy(box) == 0
        assert client.ended()
        client.close()


def test_classic_drain_lets_the_app_call_out_and_waits_for_those_calls_too(
    tmp_path: Path,
) -> None:
    with running_pod(tmp_path, native=False, drain_seconds=300) as (box, pod, app):
        upstream = Upstream(box.host_ip, UPSTREAM_PORT)
        try:
            client = Client(box.pod_ip, APP_PORT)
            hook = box.start_hook(pod, "preStop")
            wait_until_refused(box.pod_ip, APP_PORT)
            # Finishing its last request, the app calls out: the outbound listener
            # still takes new connections (the upstream sees the pod IP: proxied).
            assert client.ask(f"call {box.host_ip} {UPSTREAM_PORT}") == f"hello {box.pod_ip}"
            client.ask("bye")
            assert client.ended()
            client.close()
            wait_for_stat(box, "listener.inbound.downstream_cx_active", 0)
            box.wait_for_hook_polls(hook, 3)  # it has looked, with no inbound connection left
            assert hook.poll() is None, "the app's outbound connection is still open"

            # The app stops (like a Job that is done): its call closes with it.
            app.send_signal(signal.SIGTERM)
            assert next_line(app) == "stopping"
            assert next_line(app) == "exit"
            assert wait_exit(hook) == 0
            assert stop_proxy(box) == 0
        finally:
            upstream.close()


def test_native_shutdown_refuses_new_connections_and_the_proxy_outlives_the_app(
    tmp_path: Path,
) -> None:
    with running_pod(tmp_path, native=True, drain_seconds=300) as (box, pod, app):
        client = Client(box.pod_ip, APP_PORT)
        assert client.ask("echo before") == "before"

        # Termination starts: the sidecar's preStop and the app's SIGTERM together.
        hook = box.start_hook(pod, "preStop")
        app.send_signal(signal.SIGTERM)
        # The native hook only closes the inbound listener; it does not wait.
        assert wait_exit(hook) == 0
        assert refused(box.pod_ip, APP_PORT)
        assert next_line(app) == "stopping"
        # The kubelet has not sent the proxy its SIGTERM: the app still runs.
        assert client.ask("echo after the hook") == "after the hook"

        client.ask("bye")
        assert client.ended()
        client.close()
        assert next_line(app) == "exit"
        assert wait_exit(app) == 0
        # Only now, every app container having exited, the sidecar gets SIGTERM.
        assert stop_proxy(box) == 0


def test_native_job_app_exits_and_the_kubelet_sequence_finishes(tmp_path: Path) -> None:
    with running_pod(tmp_path, native=True, drain_seconds=300) as (box, pod, app):
        client = Client(box.pod_ip, APP_PORT)
        assert client.ask("exit") == "exiting"
        assert wait_exit(app) == 0
        assert client.ended()
        client.close()
        # All app containers are done: the kubelet runs the preStop, then SIGTERM.
        assert wait_exit(box.start_hook(pod, "preStop")) == 0
        assert stop_proxy(box) == 0


def test_classic_job_app_ends_its_proxy_with_quitquitquit(tmp_path: Path) -> None:
    # Nothing stops a classic sidecar when the app is done; the documented way
    # out is the app asking the proxy to quit on the pod-local admin port.
    with running_pod(tmp_path, native=False, drain_seconds=300) as (box, _pod, _app):
        quit_call = (
            "import encodings.idna,os,sys,urllib.request; os.setgid(int(sys.argv[1])); os.setuid(int(sys.argv[1]));"
            "urllib.request.urlopen(urllib.request.Request("
            "'http://127.0.0.1:15000/quitquitquit', method='POST'), timeout=10)"
        )
        result = box.run([sys.executable, "-I", "-S", "-c", quit_call, str(APP_UID)])
        assert result.returncode == 0, result.stderr
        assert box.proxy is not None
        assert wait_exit(box.proxy) == 0


def test_nothing_is_left_behind() -> None:
    # Runs last in this module: every box above has been torn down by now.
    assert leftovers() == []
