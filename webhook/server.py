"""``sidecar-injector serve``: the admission app behind uvicorn, HTTPS only.

Start-up does everything that can fail before the port opens -- config,
namespace source, certificate -- so a mistake is one line on stderr and a
non-zero exit (:class:`ServeError`), never a server that answers 500s.

Workers. One worker runs uvicorn in this process. Several use uvicorn's own
supervisor: the socket is bound once here and inherited by *spawned* worker
processes, which rebuild the app from :data:`SETTINGS_ENV` through the
import-string factory ``webhook.server:worker_app`` (spawned processes cannot
receive an app object or a closure). Each worker has its own certificate
reloader and namespace source; the kernel spreads connections between them.

Shutdown. On SIGTERM uvicorn stops accepting, closes idle keep-alive
connections, lets in-flight requests finish (at most
:data:`GRACEFUL_SHUTDOWN_SECONDS`), runs the lifespan shutdown (stopping the
namespace watch) and we exit 0, which is what a Deployment rollout expects.
"""

from __future__ import annotations

import argparse
import logging
import logging.config
import os
import signal
import socket
import ssl
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from types import FrameType
from typing import Any, Final

import orjson
import uvicorn
from uvicorn.supervisors import Multiprocess

from webhook import logs, namespaces
from webhook.app import App, create_app
from webhook.config import ConfigError, load_config
from webhook.tls import ReloadingTLS, TLSError, uvicorn_config_with_tls

log = logging.getLogger(__name__)

SETTINGS_ENV: Final = "SIDECAR_INJECTOR_SERVE_SETTINGS"

# kube-apiserver's webhook client (Go net/http via client-go) keeps idle
# connections for 90 s. If the server closed them first, a request racing
# the close would fail, and Go does not retry a POST: one failed admission.
# Staying open longer than the client means the client always closes first.
KEEP_ALIVE_SECONDS: Final = 120

# Above the apiserver's default webhook timeout (10 s), so a request that can
# still succeed is allowed to, and below Kubernetes' default
# terminationGracePeriodSeconds (30 s), so we exit before the kubelet SIGKILLs.
GRACEFUL_SHUTDOWN_SECONDS: Final = 15


class ServeError(Exception):
    """The server cannot start; the message is one line for the user."""


@dataclass(frozen=True, slots=True)
class ServeSettings:
    """The ``serve`` options, in a form that survives the trip to a spawned worker."""

    host: str = "127.0.0.1"
    port: int = 8443
    cert_dir: str = "certs"
    config: str | None = None
    namespaces_file: str | None = None
    kubeconfig: str | None = None
    workers: int = 1
    log_level: str = "info"

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> ServeSettings:
        """From the ``serve`` subcommand's parsed arguments."""

        def text(value: Path | None) -> str | None:
            return None if value is None else str(value)

        return cls(
            host=args.host,
            port=args.port,
            cert_dir=str(args.cert_dir),
            config=text(args.config),
            namespaces_file=text(args.namespaces_file),
            kubeconfig=text(args.kubeconfig),
            workers=args.workers,
            log_level=args.log_level,
        )

    def to_env(self) -> str:
        """JSON for :data:`SETTINGS_ENV`."""
        return orjson.dumps(asdict(self)).decode()

    @classmethod
    def from_env(cls) -> ServeSettings:
        """Read back what :meth:`to_env` wrote (in a worker process)."""
        return cls(**orjson.loads(os.environ[SETTINGS_ENV]))


def _load_tls(settings: ServeSettings) -> ReloadingTLS:
    cert_dir = Path(settings.cert_dir)
    try:
        return ReloadingTLS(cert_dir)
    except TLSError as err:
        raise ServeError(
            f"no usable certificate in {cert_dir}/ ({err}); "
            f"make one with: sidecar-injector certs --out {cert_dir}"
        ) from None


def _namespace_source(settings: ServeSettings) -> namespaces.NamespaceSource:
    try:
        source = namespaces.namespace_source_from_args(
            namespaces_file=Path(settings.namespaces_file) if settings.namespaces_file else None,
            kubeconfig=Path(settings.kubeconfig) if settings.kubeconfig else None,
        )
    except namespaces.NamespaceSourceError as err:
        raise ServeError(str(err)) from None
    log.info("namespace source: %s", source.describe())
    return source


def _build_app(settings: ServeSettings, tls: ReloadingTLS | None) -> App:
    try:
        config = load_config(Path(settings.config) if settings.config else None)
    except ConfigError as err:
        raise ServeError(str(err)) from None
    return create_app(config=config, namespaces=_namespace_source(settings), tls=tls)


# --- worker processes (--workers N > 1) ---------------------------------------------------

_worker_tls: ReloadingTLS | None = None


def worker_ssl_context(
    _config: uvicorn.Config, _default: Callable[[], ssl.SSLContext]
) -> ssl.SSLContext:
    """uvicorn's ``ssl_context_factory`` in a worker: a reloading context of our own.

    Module-level so it pickles by reference into spawned workers. uvicorn calls
    it before loading the app, so :func:`worker_app` finds the same object for
    ``/readyz``.
    """
    global _worker_tls  # noqa: PLW0603 - one per worker process, shared with worker_app
    _worker_tls = _load_tls(ServeSettings.from_env())
    return _worker_tls.context


def worker_app() -> App:
    """The app factory a spawned worker imports (``webhook.server:worker_app``)."""
    return _build_app(ServeSettings.from_env(), _worker_tls)


# --- the command ----------------------------------------------------------------------------


def _bind(host: str, port: int) -> socket.socket:
    """Bind before starting, so "address in use" is a ServeError rather than a log line."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY only on accepted sockets
    # whose proto is IPPROTO_TCP, and accepted sockets copy the listener's proto
    # (0 by default). Without it, Nagle holds each response body behind its
    # headers until the client's delayed ACK: +40 ms per admission (make bench).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        raise ServeError(f"cannot listen on {host}:{port}: {err.strerror or err}") from None
    sock.set_inheritable(True)
    return sock


def _uvicorn_options(settings: ServeSettings) -> dict[str, Any]:
    return {
        "log_config": logs.log_config(settings.log_level),
        "log_level": settings.log_level,
        # One JSON line per admission comes from the app; per-request access
        # lines would double the log volume. ``--log-level debug`` adds them.
        "access_log": settings.log_level == "debug",
        "timeout_keep_alive": KEEP_ALIVE_SECONDS,
        "timeout_graceful_shutdown": GRACEFUL_SHUTDOWN_SECONDS,
        "proxy_headers": False,  # nobody sits in front of a webhook
        "server_header": False,
        "lifespan": "on",
    }


def serve(args: argparse.Namespace) -> int:
    """Run the webhook until SIGTERM/SIGINT; 0 after a graceful stop."""
    settings = ServeSettings.from_args(args)
    if settings.workers < 1:
        raise ServeError("--workers must be at least 1")
    logging.config.dictConfig(logs.log_config(settings.log_level))
    tls = _load_tls(settings)
    app = _build_app(settings, tls)
    sock = _bind(settings.host, settings.port)

    # uvicorn re-raises the signal that stopped it once it has shut down,
    # which under the default SIGTERM disposition would kill us with 143
    # after a clean drain. A handler of our own turns that into exit 0.
    signal.signal(signal.SIGTERM, _ignore_signal)
    log.info(
        "serving https://%s:%d (workers: %d)",
        settings.host,
        sock.getsockname()[1],
        settings.workers,
    )
    if settings.workers == 1:
        config = uvicorn_config_with_tls(
            app, host=settings.host, port=settings.port, tls=tls, **_uvicorn_options(settings)
        )
        server = uvicorn.Server(config)
        try:
            server.run(sockets=[sock])
        finally:
            sock.close()
        return 0 if server.started else 1

    # Start-up was checked above in this process; workers repeat it from the env.
    os.environ[SETTINGS_ENV] = settings.to_env()
    config = uvicorn.Config(
        "webhook.server:worker_app",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        ssl_context_factory=worker_ssl_context,
        **_uvicorn_options(settings),
    )
    try:
        Multiprocess(config, sockets=[sock]).run()
    finally:
        sock.close()
    return 0


def _ignore_signal(_sig: int, _frame: FrameType | None) -> None:
    """Placeholder disposition; uvicorn installs its own while serving."""
