"""Run ``sidecar-injector serve`` as a real process and talk to it like kube-apiserver.

The service tests exercise the whole edge -- argument parsing, TLS, uvicorn,
signals -- so they start the console script itself, with certificates from
``sidecar-injector certs``, and reach it only over verified HTTPS: the
client dials 127.0.0.1 and checks the certificate for the Service's DNS name
against ``ca.crt``, as the apiserver checks it against the caBundle.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from harness.tls_client import SERVICE_HOSTNAME, client_context, https_get

BIN = Path(sys.executable).parent
CLI = str(BIN / "sidecar-injector")
# Generous: on a loaded 2-core machine importing the kubernetes client alone takes
# several seconds, and a deadline is a bound on failure, not on speed.
START_DEADLINE = 60.0


def free_port() -> int:
    """A port nobody listens on right now (the server binds it a moment later)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def make_certs(out: Path) -> Path:
    """Certificates from the real ``certs`` command; returns the directory."""
    subprocess.run([CLI, "certs", "--out", str(out)], check=True, capture_output=True)
    return out


@dataclass
class Server:
    """A running ``serve`` process and how to reach it."""

    port: int
    ca_file: Path
    cert_dir: Path
    proc: subprocess.Popen[bytes]
    log_file: Path
    clients: list[httpx.Client] = field(default_factory=list)
    # The name its certificate is verified for: the Service it stands behind.
    server_name: str = SERVICE_HOSTNAME

    @property
    def url(self) -> str:
        """Base URL (the client verifies SERVICE_HOSTNAME regardless)."""
        return f"https://127.0.0.1:{self.port}"

    def client(self, **kwargs: Any) -> WebhookClient:
        """A kept-alive verifying client; closed when the server stops."""
        raw = httpx.Client(
            base_url=self.url, verify=client_context(self.ca_file), timeout=30.0, **kwargs
        )
        self.clients.append(raw)
        return WebhookClient(raw)

    def log(self) -> str:
        """Everything the server wrote to stdout/stderr so far."""
        return self.log_file.read_text(errors="replace")

    def log_lines(self) -> list[str]:
        """The server's log lines."""
        return self.log().splitlines()

    def memory(self) -> Memory:
        """The server process's resident memory, now and at its peak, from /proc."""
        return process_memory(self.proc.pid)

    def metrics(self) -> dict[str, float]:
        """``/metrics`` samples by ``name{labels}`` over a fresh verified connection."""
        status, body, _ = https_get(
            self.port, self.ca_file, "/metrics", timeout=30, server_hostname=self.server_name
        )
        assert status == 200, body
        return parse_metrics(body.decode())

    def wait_for_metric(
        self, sample: str, predicate: Callable[[float], bool], *, timeout: float = 30.0
    ) -> float:
        """Poll ``/metrics`` until ``sample`` satisfies ``predicate``; its value then."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.metrics().get(sample, 0.0)
            if predicate(value):
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"{sample} = {value} after {timeout} s")
            time.sleep(0.05)

    def wait_for_log(self, needle: str, *, timeout: float = 30.0) -> str:
        """Poll the log until a line contains ``needle``; that line."""
        deadline = time.monotonic() + timeout
        while True:
            for line in self.log_lines():
                if needle in line:
                    return line
            if time.monotonic() > deadline:
                raise AssertionError(f"no log line with {needle!r} after {timeout} s")
            time.sleep(0.05)


@dataclass(frozen=True)
class Memory:
    """Resident set size of a process, in MiB: now (VmRSS) and its peak so far (VmHWM)."""

    rss_mib: float
    peak_mib: float


def process_memory(pid: int) -> Memory:
    """Read VmRSS and VmHWM from ``/proc/PID/status``: the kernel's own accounting."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) / 1024  # kB -> MiB
    return Memory(fields["VmRSS"], fields["VmHWM"])


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text samples as ``{'name{label="v"}': value}``."""
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


class WebhookClient:
    """httpx with SNI and verification for the Service name while dialling 127.0.0.1."""

    def __init__(self, client: httpx.Client) -> None:
        self.http = client

    def request(
        self,
        method: str,
        path: str,
        *,
        content: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        params: Any = None,
    ) -> httpx.Response:
        """One request over the kept-alive connection."""
        return self.http.request(
            method,
            path,
            content=content,
            headers=headers,
            params=params,
            extensions={"sni_hostname": SERVICE_HOSTNAME},
        )

    def post(
        self,
        path: str,
        content: bytes,
        *,
        content_type: str | None = "application/json",
        params: Any = None,
    ) -> httpx.Response:
        """POST ``content`` with ``content_type`` (None: no Content-Type header)."""
        headers = {} if content_type is None else {"Content-Type": content_type}
        return self.request("POST", path, content=content, headers=headers, params=params)

    def get(self, path: str) -> httpx.Response:
        """GET ``path``."""
        return self.request("GET", path)


def wait_ready(
    port: int,
    ca_file: Path,
    proc: subprocess.Popen[bytes],
    deadline: float,
    *,
    server_name: str = SERVICE_HOSTNAME,
) -> None:
    """Poll /readyz until 200; fail early if the process dies, late at the deadline."""
    last = "no answer"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"serve exited with {proc.returncode} before becoming ready")
        try:
            status, body, _ = https_get(
                port, ca_file, "/readyz", timeout=2.0, server_hostname=server_name
            )
        except (OSError, ssl.SSLError) as err:
            last = repr(err)
        else:
            if status == 200:
                return
            last = f"{status} {body!r}"
        time.sleep(0.05)
    raise RuntimeError(f"serve not ready in time: {last}")


@contextlib.contextmanager
def running_server(
    workdir: Path,
    *,
    namespaces_yaml: str | None = None,
    args: Sequence[str] = (),
    cert_dir: Path | None = None,
    ready: bool = True,
    env: Mapping[str, str] | None = None,
    server_name: str = SERVICE_HOSTNAME,
) -> Iterator[Server]:
    """Start ``serve`` in ``workdir`` and stop it afterwards (SIGKILL if it will not stop).

    ``cert_dir`` defaults to fresh certificates in ``workdir/certs``; with
    ``ready`` the context waits for ``/readyz`` to answer 200 first, verifying
    the certificate for ``server_name`` (the Service its certificates name).
    """
    workdir.mkdir(parents=True, exist_ok=True)
    if cert_dir is None:
        cert_dir = make_certs(workdir / "certs")
    command = [CLI, "serve", "--port", str(port := free_port()), "--cert-dir", str(cert_dir)]
    if namespaces_yaml is not None:
        ns_file = workdir / "namespaces.yaml"
        ns_file.write_text(namespaces_yaml)
        command += ["--namespaces-file", str(ns_file)]
    command += list(args)
    log_file = workdir / "serve.log"
    # A developer's $KUBECONFIG would switch serve to watching their cluster.
    child_env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
    child_env.update(env or {})
    with log_file.open("wb") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=child_env)
    server = Server(port, cert_dir / "ca.crt", cert_dir, proc, log_file, server_name=server_name)
    try:
        if ready:
            wait_ready(
                port,
                server.ca_file,
                proc,
                time.monotonic() + START_DEADLINE,
                server_name=server_name,
            )
        yield server
    except BaseException:
        sys.stderr.write(f"--- serve log ---\n{server.log()}\n")
        raise
    finally:
        for client in server.clients:
            client.close()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
