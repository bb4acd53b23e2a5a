"""The webhook's TLS, tested over real sockets on 127.0.0.1 with real certificates.

Clients verify the way kube-apiserver does (dial an IP, verify the service
name against the CA bundle). Certificate rotation is done the two ways it
happens in practice: files renamed over the old ones (``sidecar-injector
certs``, most tools) and the kubelet's Secret-volume ``..data`` symlink swap.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import shutil
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from harness.tls_client import (
    SERVICE_HOSTNAME,
    client_context,
    connect,
    file_fingerprint,
    https_get,
    peer_fingerprint,
)
from webhook.pki import served_cert
from webhook.pki.certs import KeyPair, make_ca, make_serving_cert, service_names, write_certs
from webhook.service.tls import ReloadingTLS, TLSError, uvicorn_config_with_tls

# --- certificates and how they land on disk -----------------------------------------------


@pytest.fixture(scope="module")
def ca() -> KeyPair:
    return make_ca()


@pytest.fixture(scope="module")
def ca_file(ca: KeyPair, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ca") / "ca.crt"
    path.write_bytes(ca.cert_pem())
    return path


def issue(ca: KeyPair) -> KeyPair:
    dns, ips = service_names()
    return make_serving_cert(ca, dns_names=dns, ips=ips, days=1)


def print_of(pair: KeyPair) -> str:
    return served_cert.fingerprint(pair.cert)


def replace_file(path: Path, data: bytes) -> None:
    """Write beside, then rename over: what most tools (and ``certs``) do."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def rename_over(cert_dir: Path, pair: KeyPair) -> None:
    # Key first, then certificate, like write_certs: in between the files do not match.
    replace_file(cert_dir / "tls.key", pair.key_pem())
    replace_file(cert_dir / "tls.crt", pair.cert_pem())


class SecretVolume:
    """A directory laid out, and updated, the way the kubelet projects a Secret.

    ``tls.crt -> ..data/tls.crt``, ``..data -> ..<timestamp>``; an update
    writes a new timestamped directory, swaps ``..data`` with one rename and
    then deletes the old directory, so both files change at the same instant.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.generation = 0

    def publish(self, pair: KeyPair) -> None:
        self.generation += 1
        stamp = f"..2026_11_25_21_00_00.{self.generation:09d}"
        (self.root / stamp).mkdir()
        (self.root / stamp / "tls.crt").write_bytes(pair.cert_pem())
        (self.root / stamp / "tls.key").write_bytes(pair.key_pem())
        data = self.root / "..data"
        old = os.readlink(data) if data.is_symlink() else None
        (self.root / "..data_tmp").symlink_to(stamp)
        os.replace(self.root / "..data_tmp", data)
        for name in ("tls.crt", "tls.key"):
            if not (self.root / name).is_symlink():
                (self.root / name).symlink_to(f"..data/{name}")
        if old is not None:
            shutil.rmtree(self.root / old)


# --- servers --------------------------------------------------------------------------------


class EchoServer:
    """A threaded TLS line-echo server using the context under test."""

    def __init__(self, context: ssl.SSLContext) -> None:
        self.context = context
        self.errors: list[BaseException] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                raw, _ = self._listener.accept()
            except OSError:
                return  # closed
            threading.Thread(target=self._serve, args=(raw,), daemon=True).start()

    def _serve(self, raw: socket.socket) -> None:
        raw.settimeout(5)
        try:
            with self.context.wrap_socket(raw, server_side=True) as conn:
                while line := conn.recv(1024):
                    conn.sendall(line)
        except (OSError, ssl.SSLError) as err:
            self.errors.append(err)

    def close(self) -> None:
        # shutdown() wakes the thread blocked in accept(); close() alone does not.
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        self._thread.join(timeout=5)


@contextlib.contextmanager
def echo_server(context: ssl.SSLContext) -> Iterator[EchoServer]:
    server = EchoServer(context)
    try:
        yield server
    finally:
        server.close()


def roundtrip(sock: ssl.SSLSocket, data: bytes = b"ping\n") -> bytes:
    sock.sendall(data)
    return sock.recv(1024)


async def hello_app(
    scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]
) -> None:
    """The smallest ASGI app: every request gets 200 ``ok``."""
    assert scope["type"] == "http"
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]}
    )
    await send({"type": "http.response.body", "body": b"ok"})


@contextlib.contextmanager
def uvicorn_server(tls: ReloadingTLS) -> Iterator[tuple[int, uvicorn.Config]]:
    """uvicorn in a thread, configured the way the service configures it."""
    sock = socket.create_server(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn_config_with_tls(
        hello_app, host="127.0.0.1", port=port, tls=tls,
        lifespan="off", log_config=None, access_log=False,
    )  # fmt: skip
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive(), "uvicorn exited during start-up"
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.01)
    try:
        yield port, config
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


@pytest.fixture
def cert_dir(tmp_path: Path, ca: KeyPair) -> Path:
    rename_over(tmp_path, issue(ca))
    return tmp_path


@pytest.fixture
def tls(cert_dir: Path) -> ReloadingTLS:
    return ReloadingTLS(cert_dir)


@pytest.fixture
def server(tls: ReloadingTLS) -> Iterator[EchoServer]:
    with echo_server(tls.context) as running:
        yield running


# --- verification as kube-apiserver does it ----------------------------------------------------


def test_a_client_dialling_the_ip_verifies_the_service_name_against_the_ca(
    server: EchoServer, cert_dir: Path, ca_file: Path
) -> None:
    with connect(server.port, ca_file, server_hostname=SERVICE_HOSTNAME) as sock:
        assert roundtrip(sock) == b"ping\n"
        assert peer_fingerprint(sock) == file_fingerprint(cert_dir / "tls.crt")


def test_a_name_outside_the_certificate_fails_verification(
    server: EchoServer, ca_file: Path
) -> None:
    with pytest.raises(ssl.SSLCertVerificationError, match="match"):
        connect(server.port, ca_file, server_hostname="sidecar-injector.other-namespace.svc")


def test_a_client_trusting_another_ca_fails_verification(
    server: EchoServer, tmp_path: Path
) -> None:
    stranger = tmp_path / "stranger.crt"
    stranger.write_bytes(make_ca().cert_pem())
    with pytest.raises(ssl.SSLCertVerificationError, match="unable to get local issuer"):
        connect(server.port, stranger)


def test_a_client_without_sni_still_gets_the_certificate(
    server: EchoServer, cert_dir: Path, ca_file: Path
) -> None:
    # Python sends no SNI for an IP address; the outer context holds no
    # certificate, so only the ClientHello callback can have supplied one.
    with connect(server.port, ca_file, server_hostname="127.0.0.1") as sock:
        assert peer_fingerprint(sock) == file_fingerprint(cert_dir / "tls.crt")


# --- protocol and cipher policy ------------------------------------------------------------


def test_the_context_demands_tls_1_2_or_newer_without_compression_or_renegotiation(
    tls: ReloadingTLS,
) -> None:
    context = tls.context
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert context.options & ssl.OP_NO_COMPRESSION
    assert context.options & ssl.OP_NO_RENEGOTIATION
    tls12 = [c for c in context.get_ciphers() if c["protocol"] == "TLSv1.2"]
    assert tls12
    for cipher in tls12:
        assert cipher["kea"] == "kx-ecdhe", cipher["name"]
        assert cipher["aead"], cipher["name"]


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1 is deprecated:DeprecationWarning")
def test_a_tls_1_1_client_is_refused(server: EchoServer, ca_file: Path) -> None:
    old = client_context(
        ca_file,
        minimum=ssl.TLSVersion.TLSv1_1,
        maximum=ssl.TLSVersion.TLSv1_1,
        ciphers="DEFAULT:@SECLEVEL=0",  # let the client offer 1.1 at all
    )
    with pytest.raises(ssl.SSLError):
        connect(server.port, ca_file, context=old)


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_tls_1_2_and_1_3_clients_are_accepted_with_forward_secret_aead_ciphers(
    server: EchoServer, ca_file: Path, version: ssl.TLSVersion
) -> None:
    context = client_context(ca_file, minimum=version, maximum=version)
    with connect(server.port, ca_file, context=context) as sock:
        assert sock.version() == {"TLSv1_2": "TLSv1.2", "TLSv1_3": "TLSv1.3"}[version.name]
        name = sock.cipher()[0]  # type: ignore[index]
        assert "GCM" in name or "CHACHA20" in name
        assert version.name == "TLSv1_3" or name.startswith("ECDHE-")
        assert roundtrip(sock) == b"ping\n"


@pytest.mark.parametrize("weak", ["ECDHE-ECDSA-AES128-SHA", "ECDHE-ECDSA-AES256-SHA384"])
def test_a_cbc_cipher_under_tls_1_2_is_refused_though_openssl_would_allow_it(
    server: EchoServer, cert_dir: Path, ca_file: Path, weak: str
) -> None:
    def weak_client() -> ssl.SSLContext:
        return client_context(ca_file, maximum=ssl.TLSVersion.TLSv1_2, ciphers=weak)

    with pytest.raises(ssl.SSLError, match=r"HANDSHAKE_FAILURE|handshake failure"):
        connect(server.port, ca_file, context=weak_client())

    # The control: the same certificate behind OpenSSL's DEFAULT cipher list
    # accepts this cipher, so the refusal above is the webhook's policy at work.
    permissive = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    permissive.set_ciphers("DEFAULT")
    permissive.load_cert_chain(cert_dir / "tls.crt", cert_dir / "tls.key")
    with (
        echo_server(permissive) as control,
        connect(control.port, ca_file, context=weak_client()) as sock,
    ):
        assert sock.cipher()[0] == weak  # type: ignore[index]


# --- hot reload ---------------------------------------------------------------------------


def test_after_a_rename_over_a_new_connection_presents_the_new_certificate(
    server: EchoServer, cert_dir: Path, ca: KeyPair, ca_file: Path
) -> None:
    with connect(server.port, ca_file) as before:
        old = peer_fingerprint(before)
        new_pair = issue(ca)
        rename_over(cert_dir, new_pair)

        with connect(server.port, ca_file) as after:
            assert peer_fingerprint(after) == print_of(new_pair) != old
        # The connection made before the swap carries on with its old certificate.
        assert roundtrip(before) == b"ping\n"


def test_after_a_secret_volume_swap_a_new_connection_presents_the_new_certificate(
    tmp_path: Path, ca: KeyPair, ca_file: Path
) -> None:
    volume = SecretVolume(tmp_path)
    first, second = issue(ca), issue(ca)
    volume.publish(first)
    tls = ReloadingTLS(tmp_path)
    with echo_server(tls.context) as running:
        with connect(running.port, ca_file) as sock:
            assert peer_fingerprint(sock) == print_of(first)
        volume.publish(second)
        with connect(running.port, ca_file) as sock:
            assert peer_fingerprint(sock) == print_of(second)


def test_a_mismatched_or_half_written_pair_keeps_the_old_certificate(
    server: EchoServer,
    tls: ReloadingTLS,
    cert_dir: Path,
    ca: KeyPair,
    ca_file: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    old = file_fingerprint(cert_dir / "tls.crt")
    new_pair = issue(ca)
    caplog.set_level(logging.WARNING, logger="webhook.tls")

    replace_file(cert_dir / "tls.crt", new_pair.cert_pem())  # key still the old one
    for _ in range(3):
        with connect(server.port, ca_file) as sock:
            assert peer_fingerprint(sock) == old
    key = new_pair.key_pem()
    replace_file(cert_dir / "tls.key", key[: len(key) // 2])  # torn write
    with connect(server.port, ca_file) as sock:
        assert peer_fingerprint(sock) == old
    assert tls.loaded
    assert tls.last_error is not None
    assert "tls.crt" in tls.last_error
    # One warning per distinct problem, not one per handshake.
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2, [r.getMessage() for r in warnings]

    replace_file(cert_dir / "tls.key", key)  # the writer finishes
    with connect(server.port, ca_file) as sock:
        assert peer_fingerprint(sock) == print_of(new_pair)
    assert tls.last_error is None


def test_unchanged_files_are_not_reloaded(tls: ReloadingTLS, cert_dir: Path) -> None:
    # maybe_reload is True exactly when it starts serving a newly loaded pair.
    assert not any(tls.maybe_reload() for _ in range(50))
    os.utime(cert_dir / "tls.crt")  # touched, same content: re-read, not reloaded
    assert tls.maybe_reload() is False


def test_missing_files_are_an_error_naming_the_file(tmp_path: Path) -> None:
    with pytest.raises(TLSError, match=r"tls\.crt: cannot read"):
        ReloadingTLS(tmp_path)


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"not a certificate\n",
        b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    ],
)
def test_a_certificate_file_without_a_certificate_says_so(cert_dir: Path, content: bytes) -> None:
    # OpenSSL alone would only say "PEM lib".
    replace_file(cert_dir / "tls.crt", content)
    with pytest.raises(TLSError, match=r"tls\.crt, .*tls\.key: no PEM certificate found$"):
        ReloadingTLS(cert_dir)


def test_an_encrypted_key_is_refused_without_prompting(cert_dir: Path, ca: KeyPair) -> None:
    from cryptography.hazmat.primitives import serialization

    pair = issue(ca)
    encrypted = pair.key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    )
    replace_file(cert_dir / "tls.key", encrypted)
    replace_file(cert_dir / "tls.crt", pair.cert_pem())
    with pytest.raises(TLSError, match="encrypted"):
        ReloadingTLS(cert_dir)


# --- uvicorn ------------------------------------------------------------------------------


def test_uvicorn_serves_https_with_the_reloading_context(
    tls: ReloadingTLS, cert_dir: Path, ca_file: Path
) -> None:
    with uvicorn_server(tls) as (port, config):
        assert config.ssl is tls.context
        status, body, served = https_get(port, ca_file)
    assert (status, body) == (200, b"ok")
    assert served == file_fingerprint(cert_dir / "tls.crt")


def _hammer(
    port: int, ca_file: Path, stop: threading.Event, seen: list[str]
) -> tuple[list[str], list[str]]:
    """Fresh connections back to back until ``stop``: (failures, fingerprints seen)."""
    failures: list[str] = []
    while not stop.is_set():
        try:
            status, body, served = https_get(port, ca_file, timeout=5)
        except Exception as err:  # every kind of failure counts
            failures.append(repr(err))
            continue
        if (status, body) != (200, b"ok"):
            failures.append(f"{status} {body!r}")
        seen.append(served)
    return failures, seen


def wait_until_served(seen_by: list[list[str]], fingerprint: str) -> None:
    """Poll until every client's latest connection presented ``fingerprint``."""
    deadline = time.monotonic() + 30
    while not all(seen and seen[-1] == fingerprint for seen in seen_by):
        assert time.monotonic() < deadline, "the clients were never served that certificate"
        time.sleep(0.01)


@pytest.mark.parametrize("style", ["rename-over", "secret-volume"])
def test_requests_running_through_several_rotations_never_fail(
    tmp_path: Path, ca: KeyPair, ca_file: Path, style: str
) -> None:
    pairs = [issue(ca) for _ in range(6)]
    volume = SecretVolume(tmp_path)
    rotate: Callable[[KeyPair], None] = (
        volume.publish if style == "secret-volume" else lambda pair: rename_over(tmp_path, pair)
    )
    rotate(pairs[0])
    tls = ReloadingTLS(tmp_path)
    stop = threading.Event()
    results: list[tuple[list[str], list[str]]] = []
    seen_by: list[list[str]] = [[], []]
    with uvicorn_server(tls) as (port, _config):
        clients = [
            threading.Thread(target=lambda s=seen: results.append(_hammer(port, ca_file, stop, s)))
            for seen in seen_by
        ]
        for client in clients:
            client.start()
        for previous, pair in itertools.pairwise(pairs):
            # Rotate only once both clients have been served the current pair,
            # so every generation is seen while requests keep flowing.
            wait_until_served(seen_by, print_of(previous))
            rotate(pair)
        wait_until_served(seen_by, print_of(pairs[-1]))
        stop.set()
        for client in clients:
            client.join(timeout=10)
        _status, _body, final = https_get(port, ca_file)

    failures = [f for fails, _ in results for f in fails]
    seen = {s for _, served in results for s in served}
    assert failures == []
    assert final == print_of(pairs[-1])
    assert seen == {print_of(p) for p in pairs}


def test_write_certs_output_is_served_and_renewal_is_picked_up(tmp_path: Path) -> None:
    write_certs(tmp_path)
    tls = ReloadingTLS(tmp_path)
    ca_file = tmp_path / "ca.crt"
    with echo_server(tls.context) as running:
        with connect(running.port, ca_file) as sock:
            first = peer_fingerprint(sock)
        write_certs(tmp_path)  # renew: same CA, new leaf
        with connect(running.port, ca_file) as sock:
            second = peer_fingerprint(sock)
    assert first != second == file_fingerprint(tmp_path / "tls.crt")


class CountingPath(type(Path())):  # type: ignore[misc]
    """A path that counts how often its content is read."""

    reads = 0

    def read_bytes(self) -> bytes:
        type(self).reads += 1
        return super().read_bytes()


def test_at_each_handshake_unchanged_files_cost_a_stat_not_a_read(tls: ReloadingTLS) -> None:
    """What makes checking at every ClientHello affordable: two ``os.stat`` calls, no reads.

    Right after a change the content is compared too (file times tick
    coarsely, see ``_RACY_NS``), so this polls until that window has passed.
    """
    tls.cert_path = CountingPath(tls.cert_path)
    deadline = time.monotonic() + 30
    reloaded: list[bool] = []
    while True:
        CountingPath.reads = 0
        reloaded += [tls.maybe_reload() for _ in range(100)]
        if CountingPath.reads == 0:
            break
        assert time.monotonic() < deadline, "files are still re-read 30 s after they changed"
        time.sleep(0.1)
    assert not any(reloaded)  # re-read while the change was recent, never reloaded
