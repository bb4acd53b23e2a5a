"""The webhook's server-side TLS: a hardened ``SSLContext`` that follows its cert files.

Serving certificates are short-lived and renewed in place (``sidecar-injector
certs`` on the same directory, cert-manager, or a Kubernetes Secret volume
updated by the kubelet). A webhook that needs a restart to pick up the new
certificate fails every admission once the old one expires, so the context
reloads itself.

How: uvicorn (through asyncio) gets one *outer* context that never changes.
Its ``sni_callback`` runs for every ClientHello, with or without SNI, before
OpenSSL chooses a certificate; it cheaply checks whether ``tls.crt`` or
``tls.key`` changed (two ``os.stat`` calls, following symlinks, so both a
rename-over and the Secret volume's ``..data`` symlink swap are seen) and then
points the connection at the current *inner* context, which holds the pair.
Connections already established keep the context they started with; new
handshakes get the new pair; nothing restarts and no request fails.

A new pair is read into memory, both files together, and loaded from those
bytes, so the certificate and key always come from the same moment. If they
do not match (a writer replaced one file but not yet the other) or do not
parse, the old pair keeps serving and one warning is logged; the next change
of either file triggers another attempt.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import logging
import os
import ssl
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Final

import uvicorn
from cryptography import x509

from webhook.manifests.files import PEM_LIMIT, FileError, read_file
from webhook.pki.served_cert import fingerprint

log = logging.getLogger("webhook.tls")

# TLS 1.2 suites: forward-secret key exchange (ECDHE) with an AEAD cipher only.
# No RSA key transport, no CBC (Lucky13/padding oracles), no SHA-1 MACs.
# kube-apiserver (Go crypto/tls) offers these first. TLS 1.3 suites are
# configured separately by OpenSSL and are all AEAD already.
TLS12_CIPHERS: Final = "ECDHE+AESGCM:ECDHE+CHACHA20"

# Within this long after a file's last change, identical stat results do not
# prove identical content: file timestamps tick coarsely (a jiffy on many
# kernels), so a same-size rewrite inside one tick looks unchanged. While a
# change is that recent the content itself is compared (the "racy git" rule).
_RACY_NS: Final = 2_000_000_000

_FileStamp = tuple[int, int, int, int, int]


class TLSError(Exception):
    """The serving certificate could not be loaded; the message names the file."""


def harden(context: ssl.SSLContext) -> ssl.SSLContext:
    """Apply the webhook's TLS policy to a server context and return it.

    Public so the policy can be checked (and reused) without a certificate.
    """
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(TLS12_CIPHERS)
    context.options |= (
        ssl.OP_NO_COMPRESSION  # CRIME
        | ssl.OP_NO_RENEGOTIATION  # client-initiated renegotiation is a DoS lever
        | ssl.OP_CIPHER_SERVER_PREFERENCE
        # No session tickets: their key would live, unrotated, for the whole
        # process (weakening forward secrecy), and kube-apiserver keeps
        # connections alive, so resumption saves next to nothing. Also, a TLS
        # 1.3 server writing tickets after the handshake races clients that
        # close early, which shows up as spurious connection-reset errors.
        | ssl.OP_NO_TICKET
    )
    context.num_tickets = 0
    return context


def _server_context() -> ssl.SSLContext:
    return harden(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))


@contextlib.contextmanager
def _private_file(data: bytes) -> Iterator[str]:
    """A path holding ``data`` that nobody else can read, removed afterwards.

    ``load_cert_chain`` only takes paths. An anonymous in-memory file keeps
    the key off every filesystem; elsewhere a 0600 temporary file is used.
    """
    memfd_create = getattr(os, "memfd_create", None)
    if memfd_create is not None and os.path.isdir("/proc/self/fd"):
        fd = memfd_create("sidecar-injector-tls", os.MFD_CLOEXEC)
        try:
            os.write(fd, data)
            yield f"/proc/self/fd/{fd}"
        finally:
            os.close(fd)
        return
    fd, name = tempfile.mkstemp(prefix="sidecar-injector-tls-")  # created 0600
    try:
        os.write(fd, data)
        os.close(fd)
        yield name
    finally:
        os.unlink(name)


def _refuse_password() -> bytes:
    # Without a callback OpenSSL would prompt on the terminal for an encrypted
    # key, blocking the event loop; the webhook must start unattended.
    raise TLSError("the key is encrypted; give an unencrypted key")


class ReloadingTLS:
    """A server ``SSLContext`` serving the current ``tls.crt``/``tls.key`` in ``cert_dir``.

    Hand :attr:`context` to the server once; it stays the same object while
    the certificate behind it changes. The files are stat'ed at every
    handshake (a few microseconds). The constructor raises :class:`TLSError`
    when no valid pair can be loaded: a server without a certificate should
    not start.
    """

    def __init__(self, cert_dir: Path) -> None:
        self.cert_path = Path(cert_dir) / "tls.crt"
        self.key_path = Path(cert_dir) / "tls.key"
        self._lock = threading.Lock()
        # What the files looked like at the last attempt, and whether that
        # was too recent to trust the stamps alone (see _RACY_NS).
        self._stamps: tuple[_FileStamp, _FileStamp] | None = None
        self._racy = False
        self._loaded_digest: bytes | None = None
        self._failed_digest: bytes | None = None
        self._warned: str | None = None
        self._inner: ssl.SSLContext | None = None
        # notAfter of the served certificate, for /metrics, /readyz and the
        # expiry warning (webhook/service/expiry.py).
        self.not_after: datetime.datetime | None = None
        self.last_error: str | None = None

        self._context = _server_context()
        self._context.sni_callback = self._on_client_hello
        self.maybe_reload(force=True)
        if self._inner is None:
            raise TLSError(self.last_error or f"{self.cert_path}: not loaded")

    @property
    def context(self) -> ssl.SSLContext:
        """The context to give the server; the same object for the process's lifetime."""
        return self._context

    @property
    def loaded(self) -> bool:
        """Whether a certificate is being served (for ``/readyz``)."""
        return self._inner is not None

    def maybe_reload(self, *, force: bool = False) -> bool:
        """Load the pair if the files changed since the last look; True if a new pair is served.

        Called on every ClientHello; a server may also call it from a timer so
        :attr:`loaded` and logs stay current while no client connects.
        """
        with self._lock:
            try:
                stamps = (_stamp(self.cert_path), _stamp(self.key_path))
            except OSError as err:
                self._fail(f"{err.filename}: cannot read: {err.strerror or err}")
                self._stamps = None
                return False
            if stamps == self._stamps and not self._racy and not force:
                return False
            return self._attempt(stamps)

    def _attempt(self, stamps: tuple[_FileStamp, _FileStamp]) -> bool:
        # Stamps are taken before reading and again after: if a writer changed
        # either file meanwhile (a ..data swap between our two reads), read
        # again rather than report a mismatch that never existed on disk.
        try:
            for _ in range(3):
                # Bounded: a path swapped for a FIFO or /dev/zero is a failed
                # reload (the current pair stays), not a hung or bloated server.
                cert_pem = read_file(self.cert_path, limit=PEM_LIMIT)
                key_pem = read_file(self.key_path, limit=PEM_LIMIT)
                after = (_stamp(self.cert_path), _stamp(self.key_path))
                if after == stamps:
                    break
                stamps = after
        except FileError as err:
            self._stamps = None
            self._fail(str(err))
            return False
        except OSError as err:
            self._stamps = None
            self._fail(f"{err.filename}: cannot read: {err.strerror or err}")
            return False
        self._stamps = stamps
        self._racy = max(max(s[3], s[4]) for s in stamps) > time.time_ns() - _RACY_NS
        digest = hashlib.sha256(cert_pem + b"\0" + key_pem).digest()
        if digest in (self._loaded_digest, self._failed_digest):
            return False
        try:
            inner, cert = self._build(cert_pem, key_pem)
        except (ssl.SSLError, ValueError, TLSError, OSError) as err:
            reason = getattr(err, "reason", None) or str(err)
            self._fail(f"{self.cert_path}, {self.key_path}: {reason}")
            self._failed_digest = digest
            return False
        self._inner = inner
        self.not_after = cert.not_valid_after_utc
        self._loaded_digest = digest
        self.last_error = self._warned = None
        log.info("serving certificate %s from %s", fingerprint(cert), self.cert_path)
        return True

    def _build(self, cert_pem: bytes, key_pem: bytes) -> tuple[ssl.SSLContext, x509.Certificate]:
        # The first certificate of the chain is the one served. Parsed before
        # OpenSSL sees the files, whose complaint about a file without one is
        # only "PEM lib".
        try:
            cert = x509.load_pem_x509_certificate(cert_pem)
        except ValueError:
            raise ValueError("no PEM certificate found") from None
        context = _server_context()
        # load_cert_chain also checks that the key belongs to the certificate,
        # which catches a pair caught between its two file replacements.
        with _private_file(cert_pem) as cert_file, _private_file(key_pem) as key_file:
            context.load_cert_chain(cert_file, key_file, password=_refuse_password)
        return context, cert

    def _fail(self, message: str) -> None:
        self.last_error = message
        # One warning per distinct problem, not one per handshake.
        if message != self._warned:
            self._warned = message
            if self._inner is None:
                log.warning("no serving certificate: %s", message)
            else:
                log.warning("keeping the current certificate: %s", message)

    def _on_client_hello(
        self,
        connection: ssl.SSLObject | ssl.SSLSocket,
        _server_name: str | None,  # any name: the cert carries all of ours
        _outer: ssl.SSLContext,
    ) -> int | None:
        try:
            self.maybe_reload()
        except Exception:  # a reload bug must not break handshakes with the old pair
            log.exception("certificate reload check failed")
        inner = self._inner
        if inner is None:
            return ssl.ALERT_DESCRIPTION_HANDSHAKE_FAILURE
        connection.context = inner
        return None


def _stamp(path: Path) -> _FileStamp:
    # os.stat follows symlinks, so a swapped ..data link shows up as another inode.
    st = os.stat(path)
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def uvicorn_config_with_tls(
    app: Any,
    *,
    host: str,
    port: int,
    tls: ReloadingTLS,
    **kwargs: Any,
) -> uvicorn.Config:
    """A ``uvicorn.Config`` that serves HTTPS with ``tls.context``.

    uvicorn (0.54; pinned below 0.55 in pyproject.toml) calls
    ``ssl_context_factory`` from ``Config.load()``; ours ignores uvicorn's
    default factory (it would build a static context from files, with
    uvicorn's permissive cipher default) and returns the reloading context.
    The webhook speaks HTTP/1.1 only, so no ALPN protocols are set. Usage::

        tls = ReloadingTLS(cert_dir)  # raises TLSError if the pair is unusable
        config = uvicorn_config_with_tls(app, host=host, port=port, tls=tls)
        uvicorn.Server(config).run()
    """

    def factory(_config: uvicorn.Config, _default: Callable[[], ssl.SSLContext]) -> ssl.SSLContext:
        return tls.context

    return uvicorn.Config(app, host=host, port=port, ssl_context_factory=factory, **kwargs)
