"""``sidecar-injector serve``: the admission app behind uvicorn, HTTPS only, one process.

Start-up does everything that can fail before the port opens -- config,
namespace source, certificate -- so a mistake is one line on stderr and a
non-zero exit (:class:`ServeError`), never a server that answers 500s.

One process, one event loop. A replica serves a few thousand admissions a
second (``make bench``), far above the rate a cluster creates pods, so more
capacity comes from more replicas, which also survive a node going away.
Several worker processes in one pod would each need their own certificate
reloader, namespace watch and metrics registry, for nothing a replica
cannot give.

Bounded reading: a request's headers, then its body, must each arrive
within ``read_timeout``, deadlines that uvicorn does not have and that
``webhook.service.h11_deadlines`` adds to its h11 protocol (with the note on
why uvicorn and h11 are pinned). This module passes that protocol to uvicorn.

Process-wide settings belong here, not in the app factory: logging, the fd
limit and TLS buffer size that bound what connections cost, the listening
socket that caps connections per client (``webhook.service.connections``),
giving back what closed connections leave (``webhook.service.heap``, on
the server's tick), freezing the start-up heap for the garbage collector,
and the interpreter's switch interval (how soon the event loop gets its
turn back from a worker thread).

Shutdown. On the first SIGTERM the server first *drains*
(:class:`DrainingServer`): for up to :data:`DRAIN_SECONDS` it goes on
answering, every response with ``Connection: close``, so that kube-apiserver
drops each kept-alive connection after its next review instead of racing a
close. Then uvicorn's own graceful shutdown: stop accepting, close idle
connections, let in-flight requests finish (at most
``--graceful-shutdown-seconds``, :data:`GRACEFUL_SHUTDOWN_SECONDS` by
default), run the lifespan shutdown (stopping the namespace watch), and we
exit 0, which is what a Deployment rollout expects.
A second SIGTERM, or SIGINT (Ctrl-C), skips what is left of the drain.
"""

from __future__ import annotations

import argparse
import asyncio
import asyncio.constants
import asyncio.sslproto
import dataclasses
import errno
import gc
import logging
import math
import os
import resource
import signal
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, Final

import uvicorn

from webhook.cluster import namespaces_file as namespaces
from webhook.cluster.environment import running_in_cluster
from webhook.manifests.config_file import ConfigError, load_config
from webhook.service import logs
from webhook.service.app import App, create_app
from webhook.service.connections import (
    MAX_CONNECTIONS_PER_CLIENT,
    ClientConnections,
    GatedListener,
)
from webhook.service.events import EventSink
from webhook.service.h11_deadlines import (
    CONNECTION_CLOSE,
    READ_TIMEOUT_SECONDS,
    DeadlineH11Protocol,
    deadline_protocol,
)
from webhook.service.heap import HeapTrimmer
from webhook.service.metrics import Metrics
from webhook.service.preview_access import ClusterAccess, PreviewAccess
from webhook.service.tls import ReloadingTLS, TLSError, uvicorn_config_with_tls

log = logging.getLogger("webhook.server")

# kube-apiserver's webhook client (Go net/http via client-go) keeps idle
# connections for 90 s. If the server closed them first, a request racing
# the close would fail, and Go does not retry a POST: one failed admission.
# Staying open longer than the client means the client always closes first.
KEEP_ALIVE_SECONDS: Final = 120

# How long requests in flight may go on after the drain before they are cut
# off (the default of ``--graceful-shutdown-seconds``). Above the apiserver's
# default webhook timeout (10 s), so a request that can still succeed is
# allowed to. Together with the preStop sleep and the drain it must fit in
# the pod's terminationGracePeriodSeconds (see DRAIN_SECONDS).
GRACEFUL_SHUTDOWN_SECONDS: Final = 15
# The most the flag accepts, ten times the longest any client waits (the
# apiserver's longest webhook timeout, 30 s; a preview is answered within
# 15 s): a longer wait would serve nobody and only keep a stopping process
# around.
MAX_GRACEFUL_SHUTDOWN_SECONDS: Final = 300

# How long serve goes on answering after SIGTERM, each response with
# ``Connection: close``, before the graceful shutdown above.
#
# Why at all: the kubelet sends SIGTERM after the preStop sleep, when this pod
# is out of the Service's endpoints and new connections go to other replicas.
# But kube-apiserver keeps sending reviews on the connections it already holds
# to this pod (endpoint removal does not touch them), and its Go client does
# not retry a POST that raced the server's close of an idle connection
# ("http: server closed idle connection", "EOF"). uvicorn closes idle
# connections at once on SIGTERM, so a `kubectl rollout restart` while pods
# were being created failed some creations (BENCHMARKS.md, "Profiling"). A
# response carrying ``Connection: close`` makes the client drop that
# connection after reading it, with nothing left to race.
#
# How long: Go's client takes the most recently used idle connection for each
# request, so every connection the apiserver is using gets its next review
# within a few milliseconds under load; a connection that stays idle for the
# whole drain is the least recently used one, the last it would pick. Seconds
# are ample; the drain ends early once no connection is left open.
#
# Budget: manifests/base/deployment.yaml's terminationGracePeriodSeconds (30)
# covers preStop (5) + DRAIN_SECONDS (5) + GRACEFUL_SHUTDOWN_SECONDS (15) +
# the namespace watch stopping and the exit (tests/unit/test_service_drain.py
# checks the sum).
DRAIN_SECONDS: Final = 5.0

# Each TLS connection costs memory before its first byte is read: asyncio's
# TLS layer allocates a read buffer per connection (256 KiB by default) plus
# OpenSSL's state. 32 KiB (two TLS records) reads just as well, and then at
# most MAX_OPEN_FILES connections (the process's descriptor limit, which
# asyncio obeys by pausing accept()) fit the memory budget
# (docs/service.md, "Limits", has the cost per connection). The apiservers of
# a cluster hold a few dozen connections.
TLS_READ_BUFFER_BYTES: Final = 32 * 1024
MAX_OPEN_FILES: Final = 1024

# How long a thread holding the interpreter lock keeps it while another waits.
SWITCH_INTERVAL_SECONDS: Final = 0.001
# The collector's thresholds (generation 0, 1, 2): CPython's defaults but
# for the last, see serve().
GC_THRESHOLDS: Final = (700, 10, 100)


class ServeError(Exception):
    """The server cannot start; the message is one line for the user."""


@dataclass(frozen=True, slots=True)
class ServeSettings:
    """The ``serve`` options."""

    host: str = "127.0.0.1"
    port: int = 8443
    cert_dir: Path = Path("certs")
    config: Path | None = None
    namespaces_file: Path | None = None
    kubeconfig: Path | None = None
    log_level: str = "info"
    read_timeout: float = READ_TIMEOUT_SECONDS
    drain_seconds: float = DRAIN_SECONDS
    graceful_shutdown_seconds: float = GRACEFUL_SHUTDOWN_SECONDS
    max_connections_per_client: int = MAX_CONNECTIONS_PER_CLIENT
    # The injector revision served (docs/upgrade.md); None: the config's.
    revision: str | None = None

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> ServeSettings:
        """From the ``serve`` subcommand's parsed arguments."""
        read_timeout = READ_TIMEOUT_SECONDS if args.read_timeout is None else args.read_timeout
        if not (math.isfinite(read_timeout) and read_timeout > 0):
            raise ServeError("--read-timeout must be a positive number of seconds")
        drain = getattr(args, "drain_seconds", None)
        drain_seconds = DRAIN_SECONDS if drain is None else drain
        if not (math.isfinite(drain_seconds) and drain_seconds >= 0):
            raise ServeError("--drain-seconds must be a number of seconds, 0 or more")
        graceful = getattr(args, "graceful_shutdown_seconds", None)
        graceful_seconds = GRACEFUL_SHUTDOWN_SECONDS if graceful is None else graceful
        # (NaN compares false, so the range check refuses it too.)
        if not 0 <= graceful_seconds <= MAX_GRACEFUL_SHUTDOWN_SECONDS:
            raise ServeError(
                "--graceful-shutdown-seconds must be a number of seconds from 0 to "
                f"{MAX_GRACEFUL_SHUTDOWN_SECONDS}"
            )
        per_client = getattr(args, "max_connections_per_client", None)
        per_client = MAX_CONNECTIONS_PER_CLIENT if per_client is None else per_client
        if not 1 <= per_client <= MAX_OPEN_FILES:
            raise ServeError(
                f"--max-connections-per-client must be a whole number from 1 to {MAX_OPEN_FILES}"
            )
        return cls(
            host=args.host,
            port=args.port,
            cert_dir=args.cert_dir,
            config=args.config,
            namespaces_file=args.namespaces_file,
            kubeconfig=args.kubeconfig,
            log_level=args.log_level,
            read_timeout=read_timeout,
            drain_seconds=drain_seconds,
            graceful_shutdown_seconds=graceful_seconds,
            max_connections_per_client=per_client,
            revision=getattr(args, "revision", None),
        )


# --- draining on SIGTERM ----------------------------------------------------------------


class DrainingServer(uvicorn.Server):
    """uvicorn's server, draining kept-alive connections on the first SIGTERM (see
    :data:`DRAIN_SECONDS` for why).

    The drain keeps the listener open (a connection routed here late is still
    served) and adds ``Connection: close`` to every response through uvicorn's
    default headers, which h11 then honours by closing after the response. It
    ends when no connection is left open, or after ``drain_seconds``; then
    uvicorn's graceful shutdown runs as usual. Everything happens on the event
    loop, in uvicorn's once-every-100-ms tick: the signal handler only notes
    the request.
    """

    def __init__(
        self,
        config: uvicorn.Config,
        *,
        drain_seconds: float = DRAIN_SECONDS,
        heap: HeapTrimmer | None = None,
    ) -> None:
        super().__init__(config)
        self.drain_seconds = drain_seconds
        self.heap = heap
        self._drain_requested = False
        self._drain_started: float | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        """The first SIGTERM asks for a drain; any other signal stops as uvicorn does."""
        if sig == signal.SIGTERM and not self._drain_requested and self.drain_seconds > 0:
            self._drain_requested = True
            return
        super().handle_exit(sig, frame)

    async def on_tick(self, counter: int) -> bool:
        """uvicorn's tick, plus trimming the heap after connection churn and the drain."""
        if await super().on_tick(counter):
            return True
        if self.heap is not None:
            self.heap.maybe_trim()
        if not self._drain_requested:
            return False
        # Every tick: uvicorn rebuilds the default headers every second (for Date).
        headers = self.server_state.default_headers
        if CONNECTION_CLOSE not in headers:
            self.server_state.default_headers = [*headers, CONNECTION_CLOSE]
        now = time.monotonic()
        if self._drain_started is None:
            self._drain_started = now
            # Requests already being read took the headers of their start.
            for connection in self.server_state.connections:
                if isinstance(connection, DeadlineH11Protocol):
                    connection.close_after_response()
            log.info(
                "draining: answering with Connection: close for up to %g s (%d connections open)",
                self.drain_seconds,
                len(self.server_state.connections),
            )
        open_connections = len(self.server_state.connections)
        elapsed = now - self._drain_started
        if open_connections == 0:
            log.info("drained: no connection left open after %.1f s", elapsed)
            return True
        if elapsed >= self.drain_seconds:
            log.info("drain time over with %d connections still open", open_connections)
            return True
        return False


# --- building the server ------------------------------------------------------------------


def _load_tls(settings: ServeSettings) -> ReloadingTLS:
    try:
        return ReloadingTLS(settings.cert_dir)
    except TLSError as err:
        raise ServeError(
            f"no usable certificate in {settings.cert_dir}/ ({err}); "
            f"make one with: sidecar-injector certs --out {settings.cert_dir}"
        ) from None


def namespace_source_from_args(
    *,
    namespaces_file: Path | None,
    kubeconfig: Path | None,
    in_cluster: bool | None = None,
) -> namespaces.NamespaceSource:
    """Choose the namespace source for ``serve``; the result is not started yet.

    In order:

    1. ``--namespaces-file``: the file, even in a cluster. A user who passes a
       file means it (e.g. to try settings against a live cluster without
       labelling its namespaces).
    2. In a cluster (``in_cluster``; detected from the service account when
       ``None``), with ``--kubeconfig``, or with ``$KUBECONFIG`` set: a
       watch-backed cache of the cluster's Namespaces (no API call per
       admission). ``~/.kube/config`` alone does not count: a local ``serve``
       should not quietly start watching whatever cluster it points at.
    3. Otherwise no source: unknown namespaces have no labels or annotations.

    Raises ``namespaces.NamespaceSourceError`` (``NamespacesFileError`` for the file)
    with a one-line message when the chosen source cannot be set up.
    """
    if namespaces_file is not None:
        return namespaces.FileNamespaces(namespaces_file)
    if in_cluster is None:
        in_cluster = running_in_cluster()
    if in_cluster or kubeconfig is not None or os.environ.get("KUBECONFIG"):
        # Imported here so that choosing a file or no source never imports the
        # kubernetes client (slow to import, and not needed offline).
        from webhook.cluster.namespace_cache import KubeNamespaceCache  # noqa: PLC0415

        return KubeNamespaceCache.from_environment(kubeconfig, in_cluster=in_cluster)
    return namespaces.StaticNamespaces()


def _namespace_source(settings: ServeSettings) -> namespaces.NamespaceSource:
    try:
        source = namespace_source_from_args(
            namespaces_file=settings.namespaces_file, kubeconfig=settings.kubeconfig
        )
    except namespaces.NamespaceSourceError as err:
        raise ServeError(str(err)) from None
    log.info("namespace source: %s", source.describe())
    return source


def _preview_access(
    settings: ServeSettings, source: namespaces.NamespaceSource
) -> PreviewAccess | None:
    """Who may preview: open with a file or no source; else callers the API server vouches for.

    Decided by the source chosen, not by the flags again, so that no source
    that reads the cluster can ever go with an open ``/preview``.
    """
    if isinstance(source, namespaces.StaticNamespaces):  # a file, or nothing
        log.info("preview: open to every client (%s)", source.describe())
        return None
    # Imported here for the reason namespace_source_from_args gives.
    from webhook.cluster.access import KubeAccessReviewer  # noqa: PLC0415
    from webhook.cluster.kube import ConfigurationError  # noqa: PLC0415

    try:
        reviewer = KubeAccessReviewer.from_environment(settings.kubeconfig)
    except ConfigurationError as err:
        raise ServeError(str(err)) from None
    log.info(
        "preview: callers need a bearer token (TokenReview) and get on the namespaces"
        " they preview (SubjectAccessReview), asked of %s",
        reviewer.host,
    )
    return ClusterAccess(reviewer)


def _event_recorder(settings: ServeSettings, metrics: Metrics) -> EventSink | None:
    """Events go to the cluster the namespaces come from; with a file, or no cluster, none."""
    in_cluster = running_in_cluster()
    if settings.namespaces_file is not None or not (
        in_cluster or settings.kubeconfig is not None or os.environ.get("KUBECONFIG")
    ):
        log.info("events: none (no cluster to write them to)")
        return None
    # Imported here for the reason namespace_source_from_args gives.
    from webhook.cluster.kube import ConfigurationError  # noqa: PLC0415
    from webhook.service.events import recorder_from_environment  # noqa: PLC0415

    try:
        return recorder_from_environment(settings.kubeconfig, metrics, in_cluster=in_cluster)
    except ConfigurationError as err:
        raise ServeError(str(err)) from None


def _build_app(settings: ServeSettings, tls: ReloadingTLS, metrics: Metrics) -> App:
    try:
        config = load_config(settings.config)
    except ConfigError as err:
        raise ServeError(str(err)) from None
    if settings.revision is not None:
        config = dataclasses.replace(config, revision=settings.revision)
    log.info("injector revision: %s", config.revision)
    source = _namespace_source(settings)
    return create_app(
        config=config,
        namespaces=source,
        tls=tls,
        metrics=metrics,
        preview_access=_preview_access(settings, source),
        events=_event_recorder(settings, metrics),
    )


def _bind(host: str, port: int, gate: ClientConnections) -> GatedListener:
    """Bind before starting, so "address in use" is a ServeError rather than a log line.

    The listener accepts only what ``gate`` admits: the per-client cap is
    decided before the TLS handshake (``webhook.service.connections``).
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = GatedListener(gate, family)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        raise ServeError(f"cannot listen on {host}:{port}: {err.strerror or err}") from None
    return sock


def build_server(settings: ServeSettings) -> tuple[DrainingServer, GatedListener]:
    """The uvicorn server and its bound socket; raises :class:`ServeError` for bad settings."""
    tls = _load_tls(settings)
    metrics = Metrics()
    gate = ClientConnections(
        settings.max_connections_per_client, on_refused=metrics.connection_refused
    )
    metrics.connection_counts(total=lambda: gate.total, busiest=gate.busiest)
    app = _build_app(settings, tls, metrics)
    sock = _bind(settings.host, settings.port, gate)
    config = uvicorn_config_with_tls(
        app,
        host=settings.host,
        port=settings.port,
        tls=tls,
        http=deadline_protocol(settings.read_timeout, metrics.read_timeout),
        log_config=None,  # configured once, by logs.configure
        log_level=settings.log_level,
        # One JSON line per admission comes from the app; per-request access
        # lines would double the log volume. ``--log-level debug`` adds them.
        access_log=settings.log_level == "debug",
        timeout_keep_alive=KEEP_ALIVE_SECONDS,
        timeout_graceful_shutdown=settings.graceful_shutdown_seconds,
        proxy_headers=False,  # nobody sits in front of a webhook
        server_header=False,
        lifespan="on",
        loop="webhook.service.server:new_event_loop",
    )
    heap = HeapTrimmer(lambda: gate.closed, on_trim=metrics.heap_trims.inc)
    server = DrainingServer(config, drain_seconds=settings.drain_seconds, heap=heap)
    return server, sock


def new_event_loop() -> asyncio.AbstractEventLoop:
    """The serving loop (uvicorn's ``loop`` option): asyncio's, with our exception handler."""
    loop = asyncio.new_event_loop()
    loop.set_exception_handler(_loop_exception)
    return loop


def _loop_exception(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """One warning line when the descriptor limit is reached; asyncio's handler otherwise.

    At the limit asyncio stops accepting for a second and reports it with a
    traceback; that is the limit doing its job (see MAX_OPEN_FILES), not a bug.
    """
    err = context.get("exception")
    if isinstance(err, OSError) and err.errno in (errno.EMFILE, errno.ENFILE):
        log.warning(
            "not accepting connections for a second: all %d file descriptors are in use",
            resource.getrlimit(resource.RLIMIT_NOFILE)[0],
        )
        return
    loop.default_exception_handler(context)


def _bound_connection_costs(handshake_timeout: float) -> None:
    """Cap what TLS connections can cost (see :data:`TLS_READ_BUFFER_BYTES`).

    Three process-wide settings, each the only switch there is: asyncio's TLS
    layer reads its buffer size and handshake timeout from module attributes
    (uvicorn passes neither), and the descriptor limit is what makes asyncio
    stop accepting for a moment instead of allocating without end.
    """
    if hasattr(asyncio.sslproto.SSLProtocol, "max_size"):
        asyncio.sslproto.SSLProtocol.max_size = TLS_READ_BUFFER_BYTES
    # A client that never finishes its handshake holds a connection like one
    # that never sends its headers; give it the same time (default 60 s).
    asyncio.constants.SSL_HANDSHAKE_TIMEOUT = handshake_timeout
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = MAX_OPEN_FILES if hard == resource.RLIM_INFINITY else min(MAX_OPEN_FILES, hard)
    if soft == resource.RLIM_INFINITY or soft > wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


def serve(args: argparse.Namespace) -> int:
    """Run the webhook until SIGTERM/SIGINT; 0 after a graceful stop."""
    settings = ServeSettings.from_args(args)
    logs.configure(settings.log_level)
    server, sock = build_server(settings)
    _bound_connection_costs(settings.read_timeout)

    # uvicorn re-raises the signal that stopped it once it has shut down,
    # which under the default SIGTERM disposition would kill us with 143
    # after a clean drain. A handler of our own turns that into exit 0.
    signal.signal(signal.SIGTERM, _ignore_signal)
    # Everything allocated so far (modules, config, the app) lives as long as
    # the process: move it out of the collector's reach, so a full collection
    # walks only what requests allocate (otherwise each full collection walks
    # the whole start-up heap and pauses the loop: BENCHMARKS.md,
    # "Profiling"). Here rather than in the app factory: it is a
    # process-wide side effect, and tests build many apps in one process.
    gc.collect()
    gc.freeze()
    log.info("froze %d start-up objects for the garbage collector", gc.get_freeze_count())
    # A full collection walks every object outside the frozen heap while
    # holding the interpreter lock, so it stalls the event loop even when it
    # runs in a preview's thread. A big preview builds a great many objects,
    # and with the default third threshold (10) that set off several full
    # collections per preview; at 100 it is one in several previews, and the
    # loop's worst stall in them fell accordingly (docs/service.md, "Limits",
    # has the figures). What requests leave behind is acyclic (parsed JSON and
    # YAML), freed by reference counting; the young generations still collect
    # cycles.
    gc.set_threshold(*GC_THRESHOLDS)
    # Previews and big reviews run in worker threads (webhook.service.preview_route,
    # webhook.service.mutate) so that the event loop keeps its turns; the loop
    # waits for the interpreter lock at most this long each time it wakes up,
    # and it wakes up several times per request. 1 ms instead of the default
    # 5 ms cuts the loop's lag while a big review runs in a thread
    # (docs/service.md, "Limits"); threads only pay for it when they contend.
    sys.setswitchinterval(SWITCH_INTERVAL_SECONDS)
    log.info("serving https://%s:%d", settings.host, sock.getsockname()[1])
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
    return 0 if server.started else 1


def _ignore_signal(_sig: int, _frame: FrameType | None) -> None:
    """Placeholder disposition; uvicorn installs its own while serving."""
