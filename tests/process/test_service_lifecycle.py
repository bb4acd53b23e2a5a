"""The serve process over its life: start-up errors, certificate rotation under load,
a namespace watch (and what happens when it cannot be read), and draining on SIGTERM.
Each test owns its process. Waits are polls with generous deadlines, never fixed sleeps.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
from pathlib import Path

import httpx
import orjson
import pytest

from harness.fake_kube_api import FakeKubeAPI
from harness.server import (
    CLI,
    START_DEADLINE,
    Server,
    free_port,
    make_certs,
    running_server,
)
from harness.tls_client import SERVICE_HOSTNAME, connect, file_fingerprint, peer_fingerprint
from tests.builders import DEMO_NAMESPACES, replicaset_pod, review, review_bytes
from webhook.pki.certs import write_certs
from webhook.service.server import (
    GRACEFUL_SHUTDOWN_SECONDS,
    MAX_GRACEFUL_SHUTDOWN_SECONDS,
    ServeSettings,
    build_server,
)

# Three hundred containers with an environment each: a body that takes a while to answer.
BULKY = [
    {"name": f"c{i}", "image": "nginx", "env": [{"name": "A", "value": "x" * 200}]}
    for i in range(300)
]


def post_once(server: Server, body: bytes) -> tuple[int, bytes, str]:
    """One POST /mutate on a new connection (a new handshake): (status, body, cert fingerprint)."""
    with connect(server.port, server.ca_file, timeout=10) as sock:
        seen = peer_fingerprint(sock)
        head = (
            f"POST /mutate HTTP/1.1\r\nHost: {SERVICE_HOSTNAME}\r\nConnection: close\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        sock.sendall(head.encode() + body)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    status = int(data.split(b" ", 2)[1])
    return status, data.partition(b"\r\n\r\n")[2], seen


# --- start-up -----------------------------------------------------------------------------


def run_serve(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CLI, "serve", "--port", str(free_port()), *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_without_certificates_serve_says_how_to_make_them(tmp_path: Path) -> None:
    result = run_serve("--cert-dir", str(tmp_path / "nothing"))
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("sidecar-injector: error: no usable certificate")
    assert "sidecar-injector certs --out" in last


def test_a_bad_config_or_namespaces_file_stops_serve_with_one_line(tmp_path: Path) -> None:
    certs = make_certs(tmp_path / "certs")
    bad_config = tmp_path / "config.yaml"
    bad_config.write_text("proxy: {uid: 0}\n")
    result = run_serve("--cert-dir", str(certs), "--config", str(bad_config))
    assert result.returncode == 1
    assert "config.yaml: proxy.uid" in result.stderr.strip().splitlines()[-1]
    bad_ns = tmp_path / "ns.yaml"
    bad_ns.write_text("kind: Pod\n")
    result = run_serve("--cert-dir", str(certs), "--namespaces-file", str(bad_ns))
    assert result.returncode == 1
    assert "expected a Namespace" in result.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf"])
def test_a_read_timeout_that_is_not_a_positive_number_stops_serve(
    tmp_path: Path, value: str
) -> None:
    result = run_serve("--cert-dir", str(tmp_path), "--read-timeout", value)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "sidecar-injector: error: --read-timeout must be a positive number of seconds"
    )


@pytest.mark.parametrize("value", ["-1", "nan", "inf", "-inf", "300.5", "1e9"])
def test_a_graceful_shutdown_time_outside_0_to_300_seconds_stops_serve(
    tmp_path: Path, value: str
) -> None:
    result = run_serve("--cert-dir", str(tmp_path), f"--graceful-shutdown-seconds={value}")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "sidecar-injector: error: --graceful-shutdown-seconds must be a number of seconds "
        "from 0 to 300"
    )


def test_the_graceful_shutdown_flag_is_documented_with_its_default_and_bound() -> None:
    result = subprocess.run(
        [CLI, "serve", "--help"], capture_output=True, text=True, timeout=30, check=True
    )
    help_text = " ".join(result.stdout.split())
    assert "--graceful-shutdown-seconds SECONDS" in help_text
    assert f"default {GRACEFUL_SHUTDOWN_SECONDS};" in help_text
    assert f"at most {MAX_GRACEFUL_SHUTDOWN_SECONDS})" in help_text


def test_the_graceful_shutdown_time_reaches_uvicorn_and_defaults_to_15_seconds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KUBECONFIG", raising=False)
    certs = make_certs(tmp_path / "certs")
    for settings, expected in [
        (ServeSettings(port=free_port(), cert_dir=certs), 15),
        (ServeSettings(port=free_port(), cert_dir=certs, graceful_shutdown_seconds=2.5), 2.5),
        (ServeSettings(port=free_port(), cert_dir=certs, graceful_shutdown_seconds=0), 0),
    ]:
        server, sock = build_server(settings)
        sock.close()
        assert server.config.timeout_graceful_shutdown == expected


def test_a_port_in_use_is_a_clear_error(tmp_path: Path) -> None:
    certs = make_certs(tmp_path / "certs")
    with running_server(tmp_path / "first", cert_dir=certs) as first:
        result = subprocess.run(
            [CLI, "serve", "--port", str(first.port), "--cert-dir", str(certs)],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{first.port}" in result.stderr


# --- SIGTERM drains -----------------------------------------------------------------------


def test_sigterm_lets_requests_in_flight_finish_then_exits_zero(tmp_path: Path) -> None:
    with running_server(tmp_path, namespaces_yaml=DEMO_NAMESPACES) as server:
        bodies = [
            orjson.dumps(review(replicaset_pod(containers=BULKY), uid=f"drain-{i}"))
            for i in range(8)
        ]
        sockets = [connect(server.port, server.ca_file, timeout=30) for _ in bodies]
        # Every request is half sent -- in flight -- when SIGTERM arrives.
        for sock, body in zip(sockets, bodies, strict=True):
            head = (
                f"POST /mutate HTTP/1.1\r\nHost: {SERVICE_HOSTNAME}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
            )
            sock.sendall(head.encode() + body[: len(body) // 2])
        # In flight means read by the app: the halves sent of all eight are held.
        server.wait_for_metric(
            "sidecar_injector_request_body_bytes_held",
            lambda held: held == sum(len(body) // 2 for body in bodies),
        )
        server.proc.send_signal(signal.SIGTERM)
        server.wait_for_log("Waiting for connections to close")
        statuses = []
        for sock, body in zip(sockets, bodies, strict=True):
            sock.sendall(body[len(body) // 2 :])
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
            sock.close()
            statuses.append(int(data.split(b" ", 2)[1]))
            assert b'"allowed":true' in data
        assert statuses == [200] * 8
        assert server.proc.wait(timeout=20) == 0
        # A new connection after the drain is refused: the port is closed.
        with pytest.raises(ConnectionRefusedError):
            connect(server.port, server.ca_file, timeout=2)


def test_a_request_still_in_flight_when_the_graceful_shutdown_time_is_over_is_cut_off(
    tmp_path: Path,
) -> None:
    # No drain, and a read deadline that cannot end the request first.
    args = ["--drain-seconds", "0", "--read-timeout", "600", "--graceful-shutdown-seconds", "0.5"]
    with running_server(tmp_path, namespaces_yaml=DEMO_NAMESPACES, args=args) as server:
        body = orjson.dumps(review(namespace="demo", uid="stuck"))
        sock = connect(server.port, server.ca_file, timeout=30)
        head = (
            f"POST /mutate HTTP/1.1\r\nHost: {SERVICE_HOSTNAME}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        # Half a body, and never the rest: in flight until it is cut off.
        sock.sendall(head.encode() + body[: len(body) // 2])
        server.wait_for_metric(
            "sidecar_injector_request_body_bytes_held", lambda held: held == len(body) // 2
        )
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(timeout=60) == 0
        server.wait_for_log("timeout graceful shutdown exceeded")
        data = b""
        with contextlib.suppress(ConnectionResetError, ssl.SSLError):
            while chunk := sock.recv(65536):
                data += chunk
        sock.close()
        # No admission answer (uvicorn cancels the request; the connection ends).
        assert b'"allowed"' not in data
        assert "internal error in /mutate" not in server.log()


def test_serve_freezes_its_start_up_heap_and_logs_how_much(tmp_path: Path) -> None:
    with running_server(tmp_path) as server:
        line = orjson.loads(server.wait_for_log("start-up objects for the garbage collector"))
    assert int(line["message"].split()[1]) > 10_000


def test_accepted_connections_have_nagle_off(tmp_path: Path) -> None:
    """Without TCP_NODELAY each response waits for the client's delayed ACK (+40 ms).

    In-process, with the server ``serve`` builds, because the option is only
    visible on the server's own accepted socket.
    """
    settings = ServeSettings(port=free_port(), cert_dir=make_certs(tmp_path / "certs"))
    server, sock = build_server(settings)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            assert thread.is_alive(), "uvicorn exited during start-up"
            assert time.monotonic() < deadline, "did not start"
            time.sleep(0.01)
        with connect(settings.port, settings.cert_dir / "ca.crt") as client:
            while not server.server_state.connections:
                assert time.monotonic() < deadline, "the connection never reached uvicorn"
                time.sleep(0.01)
            (connection,) = server.server_state.connections
            accepted = connection.transport.get_extra_info("socket")
            assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
            client.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert client.recv(100).startswith(b"HTTP/1.1 200")
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


# --- certificate rotation under load ------------------------------------------------------


class Load:
    """Posts reviews on fresh connections from a thread until stopped; records failures."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.body = orjson.dumps(review(namespace="default"))
        self.failures: list[str] = []
        self.count = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                status, body, _ = post_once(self.server, self.body)
                if status != 200:
                    self.failures.append(f"{status} {body[:200]!r}")
            except Exception as err:  # every failure counts, whatever its type
                self.failures.append(repr(err))
            self.count += 1

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def progress(self, requests: int = 5) -> None:
        """Wait until ``requests`` more requests have been made (the load is really running)."""
        target = self.count + requests
        deadline = time.monotonic() + 30
        while self.count < target:
            assert self._thread.is_alive(), "the load thread died"
            assert time.monotonic() < deadline, "load stalled"
            time.sleep(0.01)

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def wait_for_fingerprint(server: Server, expected: str, deadline: float = 5.0) -> None:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        with connect(server.port, server.ca_file) as sock:
            if peer_fingerprint(sock) == expected:
                return
        time.sleep(0.02)
    raise AssertionError("the new certificate was never presented")


def test_renewing_the_certificate_by_rename_under_load_fails_no_request(tmp_path: Path) -> None:
    with running_server(tmp_path) as server, Load(server) as load:
        old = file_fingerprint(server.cert_dir / "tls.crt")
        for _ in range(3):
            load.progress()
            write_certs(server.cert_dir)  # same CA, new leaf; files replaced by rename
            new = file_fingerprint(server.cert_dir / "tls.crt")
            assert new != old
            wait_for_fingerprint(server, new)
            old = new
        load.progress()
    assert load.failures == []
    assert load.count > 20


class SecretVolume:
    """The kubelet's Secret volume layout: files are symlinks through ``..data`` to a timestamped dir."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.serial = 0

    def publish(self, files: dict[str, bytes]) -> None:
        self.serial += 1
        target = self.root / f"..2026_11_25_00_00_{self.serial:02d}.000000001"
        target.mkdir()
        for name, data in files.items():
            (target / name).write_bytes(data)
        tmp_link = self.root / "..data_tmp"
        tmp_link.symlink_to(target.name)
        os.replace(tmp_link, self.root / "..data")  # the atomic swap
        for name in files:
            link = self.root / name
            if not link.is_symlink():
                link.symlink_to(f"..data/{name}")


def leaf_files(ca_dir: Path, scratch: Path) -> dict[str, bytes]:
    """A new leaf from the same CA, as the Secret would hold it."""
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir()
    for name in ("ca.crt", "ca.key"):
        shutil.copy(ca_dir / name, scratch / name)
    write_certs(scratch)
    return {name: (scratch / name).read_bytes() for name in ("ca.crt", "tls.crt", "tls.key")}


def test_a_secret_volume_swap_under_load_fails_no_request(tmp_path: Path) -> None:
    ca_dir = make_certs(tmp_path / "ca")
    volume = SecretVolume(tmp_path / "secret")
    volume.root.mkdir()
    volume.publish(leaf_files(ca_dir, tmp_path / "scratch"))
    with running_server(tmp_path / "run", cert_dir=volume.root) as server, Load(server) as load:
        for _ in range(3):
            load.progress()
            volume.publish(leaf_files(ca_dir, tmp_path / "scratch"))
            wait_for_fingerprint(server, file_fingerprint(volume.root / "tls.crt"))
        load.progress()
    assert load.failures == []
    assert load.count > 20


# --- a namespace watch instead of a file --------------------------------------------------


def test_a_watched_namespace_label_decides_and_a_change_applies_without_restart(
    tmp_path: Path, fake_api: FakeKubeAPI
) -> None:
    fake_api.add("shop", {"sidecar-injection": "enabled"})
    fake_api.add("legacy")
    config = fake_api.write_kubeconfig(tmp_path / "kubeconfig")
    with running_server(tmp_path, args=["--kubeconfig", str(config)]) as server:
        client = server.client()

        def patched(namespace: str) -> bool:
            response = client.post("/mutate", orjson.dumps(review(namespace=namespace)))
            assert response.status_code == 200
            return "patch" in response.json()["response"]

        assert patched("shop")
        assert not patched("legacy")
        lists_before = fake_api.requests["list"]

        fake_api.modify("legacy", {"sidecar-injection": "enabled"})
        end = time.monotonic() + 30
        while not patched("legacy"):
            assert time.monotonic() < end, "the MODIFIED event never reached the cache"
            time.sleep(0.05)
        fake_api.modify("shop", {"sidecar-injection": "disabled"})
        end = time.monotonic() + 30
        while patched("shop"):
            assert time.monotonic() < end, "the MODIFIED event never reached the cache"
            time.sleep(0.05)
        # Decisions came from the watch, not from a new list per admission.
        assert fake_api.requests["list"] == lists_before


def test_readyz_is_503_until_the_namespace_cache_has_listed(
    tmp_path: Path, fake_api: FakeKubeAPI
) -> None:
    fake_api.stop()  # the API server is down when the webhook starts
    config = fake_api.write_kubeconfig(tmp_path / "kubeconfig")
    with running_server(tmp_path, args=["--kubeconfig", str(config)], ready=False) as server:
        client = server.client()
        end = time.monotonic() + START_DEADLINE
        while True:
            try:
                response = client.get("/readyz")
                break
            except httpx.TransportError:  # not listening yet
                assert time.monotonic() < end
                time.sleep(0.05)
        assert response.status_code == 503
        assert "namespace source not synced yet" in response.json()["reasons"]
        # Admission answers meanwhile, and fails closed: a namespace it cannot
        # read could be opted in, so the pod is refused rather than unmeshed.
        answer = client.post("/mutate", orjson.dumps(review(namespace="shop"))).json()["response"]
        assert answer["allowed"] is False
        assert answer["status"]["code"] == 503
        assert answer["status"]["reason"] == "ServiceUnavailable"
        assert "namespace shop could not be read" in answer["status"]["message"]
        # A preview reads the cluster's namespaces, so it needs the API server
        # to vouch for its caller first: without it, a 503 naming the cause.
        # (A preview whose caller is vouched for goes on with a warning for a
        # namespace it cannot read: tests/process/test_preview_auth.py.)
        previewed = client.request(
            "POST",
            "/preview",
            content=orjson.dumps(review(namespace="shop")["request"]["object"]),
            headers={"Content-Type": "application/json", "Authorization": "Bearer t"},
            params={"namespace": "shop"},
        )
        assert previewed.status_code == 503
        assert previewed.json()["error"].startswith(
            "cannot check access now: the TokenReview failed"
        )
        fake_api.restart()
        end = time.monotonic() + START_DEADLINE
        while client.get("/readyz").status_code != 200:
            assert time.monotonic() < end, "never became ready after the API server came back"
            time.sleep(0.1)


@pytest.mark.parametrize(
    "labels",
    [
        pytest.param({}, id="unlabelled"),
        # Switched from disabled to enabled, pods created at once.
        pytest.param({"sidecar-injection": "disabled"}, id="disabled"),
    ],
)
def test_a_label_the_watch_has_not_delivered_yet_is_read_before_the_pod_is_skipped(
    tmp_path: Path, fake_api: FakeKubeAPI, labels: dict[str, str]
) -> None:
    """The apiserver called us because it saw the label; our cache has not seen it yet."""
    fake_api.add("late", labels)
    config = fake_api.write_kubeconfig(tmp_path / "kubeconfig")
    with running_server(tmp_path, args=["--kubeconfig", str(config)]) as server:
        client = server.client()
        skipped = client.post(
            "/mutate", orjson.dumps(review(namespace="late", uid="before"))
        ).json()
        assert "patch" not in skipped["response"]
        gets = fake_api.requests["get"]

        # The label lands in the API server, but the watch never reports it.
        fake_api.modify("late", {"sidecar-injection": "enabled"}, emit=False)
        injected = client.post(
            "/mutate", orjson.dumps(review(namespace="late", uid="after"))
        ).json()
        assert injected["response"]["allowed"] is True
        assert "patch" in injected["response"]
        assert fake_api.requests["get"] == gets + 1
        samples = server.metrics()
        recheck = 'sidecar_injector_namespace_fetches_total{reason="recheck",result="found"}'
        assert samples[recheck] == 2  # the skip before the label was rechecked too


def test_with_the_api_server_gone_pods_no_label_could_mesh_are_admitted_and_others_refused(
    tmp_path: Path, fake_api: FakeKubeAPI
) -> None:
    config = fake_api.write_kubeconfig(tmp_path / "kubeconfig")
    status = '{"version":"0","initContainers":["mesh-init","mesh-proxy"]}'
    label_free = {
        "host-network": review_bytes(
            replicaset_pod(spec={"hostNetwork": True}), namespace="new-team", uid="h"
        ),
        "windows-pod": review_bytes(
            replicaset_pod(spec={"os": {"name": "windows"}}), namespace="new-team", uid="w"
        ),
        "mirror-pod": review_bytes(
            replicaset_pod(annotations={"kubernetes.io/config.mirror": "x"}),
            namespace="new-team",
            uid="m",
        ),
        "excluded-namespace": review_bytes(replicaset_pod(), namespace="kube-system", uid="k"),
        "already-injected": review_bytes(
            replicaset_pod(
                spec={"initContainers": [{"name": n} for n in ("mesh-init", "mesh-proxy")]},
                annotations={"sidecar.mesh.io/status": status},
            ),
            namespace="new-team",
            uid="a",
        ),
        "pod-opted-out": review_bytes(
            replicaset_pod(labels={"sidecar.mesh.io/inject": "false"}),
            namespace="new-team",
            uid="o",
        ),
    }
    with running_server(tmp_path, args=["--kubeconfig", str(config)]) as server:
        client = server.client()
        fake_api.stop()
        for code, body in label_free.items():
            answer = client.post("/mutate", body).json()["response"]
            assert answer["allowed"] is True, (code, answer)
            assert "patch" not in answer
        refused = client.post(
            "/mutate", review_bytes(replicaset_pod(), namespace="new-team", uid="plain")
        ).json()["response"]
        assert refused["allowed"] is False
        assert refused["status"]["code"] == 503
        samples = server.metrics()
        for code in label_free:
            assert samples[f'sidecar_injector_decisions_total{{code="{code}"}}'] == 1, code
        assert samples['sidecar_injector_decisions_total{code="namespace-unavailable"}'] == 1
        # Only the plain pod needed the namespace's labels.
        fetched = "sidecar_injector_namespace_fetches_total"
        assert samples[f'{fetched}{{reason="miss",result="unavailable"}}'] == 1
        assert sum(v for k, v in samples.items() if k.startswith(fetched + "{")) == 1


def test_with_the_api_server_gone_an_unknown_namespace_is_refused_until_it_is_back(
    tmp_path: Path, fake_api: FakeKubeAPI
) -> None:
    fake_api.add("shop", {"sidecar-injection": "enabled"})
    config = fake_api.write_kubeconfig(tmp_path / "kubeconfig")
    with running_server(tmp_path, args=["--kubeconfig", str(config)]) as server:
        client = server.client()
        fake_api.stop()
        # Known namespaces are served from the cache meanwhile.
        cached = client.post("/mutate", orjson.dumps(review(namespace="shop", uid="cached"))).json()
        assert "patch" in cached["response"]
        refused = client.post(
            "/mutate", orjson.dumps(review(namespace="new-team", uid="new"))
        ).json()
        assert refused["response"]["allowed"] is False
        assert refused["response"]["status"]["code"] == 503
        assert "namespace new-team could not be read" in refused["response"]["status"]["message"]
        samples = server.metrics()
        assert samples['sidecar_injector_decisions_total{code="namespace-unavailable"}'] == 1
        assert samples['sidecar_injector_requests_total{endpoint="mutate",outcome="refused"}'] == 1

        fake_api.add("new-team", {"sidecar-injection": "enabled"})
        fake_api.restart()
        deadline = time.monotonic() + 30
        while True:
            answer = client.post(
                "/mutate", orjson.dumps(review(namespace="new-team", uid="retry"))
            ).json()
            if answer["response"]["allowed"]:
                break
            assert time.monotonic() < deadline, "still refused after the API server came back"
            time.sleep(0.1)
        assert "patch" in answer["response"]
