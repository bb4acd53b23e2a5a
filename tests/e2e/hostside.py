"""The host side of pod-in-a-box: servers a box talks to, and requests from the host namespace."""

from __future__ import annotations

import contextlib
import http.server
import socket
import threading
import urllib.error
import urllib.request
from typing import Any


def http_get(url: str, *, timeout: float = 3) -> tuple[int, str]:
    """HTTP GET from the host namespace: status and body (errors count as answers)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - test URLs
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, ""


def connect_from_host(host: str, port: int) -> str:
    """Connect from the host namespace; the server's one-line answer."""
    with socket.create_connection((host, port), timeout=5) as conn:
        return conn.makefile().readline().strip()


class HostServer:
    """A TCP server on the host end of the veth that answers with the peer it saw.

    With ``capture`` it instead records the first bytes a client sends (used to
    catch the proxy's HTTP/2 preface on the xDS port).
    """

    def __init__(self, host: str, port: int, *, capture: int = 0) -> None:
        self.peers: list[str] = []
        self.received = b""
        self._capture = capture
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._sock = socket.create_server((host, port), family=family, reuse_port=False)
        self._sock.settimeout(0.1)
        self._stop = threading.Event()
        self._got = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, peer = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                self.peers.append(peer[0])
                if self._capture:
                    conn.settimeout(5)
                    with contextlib.suppress(OSError):
                        while len(self.received) < self._capture:
                            chunk = conn.recv(self._capture - len(self.received))
                            if not chunk:
                                break
                            self.received += chunk
                    self._got.set()
                else:
                    conn.sendall(f"{peer[0]} {peer[1]}\n".encode())

    def wait_capture(self, timeout: float) -> bytes:
        """The captured bytes once enough arrived, or what there is at the deadline."""
        self._got.wait(timeout)
        return self.received

    def close(self) -> None:
        """Stop accepting and join the thread."""
        self._stop.set()
        self._sock.close()
        self._thread.join(timeout=5)


class HostHTTPServer:
    """An HTTP server on the host end of the veth: every GET gets ``<name> <peer ip>``.

    Stands in for a service's endpoint; ``hits`` counts the requests it served.
    """

    def __init__(self, host: str, port: int, name: str) -> None:
        self.name = name
        self.hits = 0
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                owner.hits += 1
                body = f"{owner.name} {self.client_address[0]}\n".encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                del format, args

        self._server = http.server.ThreadingHTTPServer((host, port), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop serving and join the thread."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
