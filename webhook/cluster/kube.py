"""The project's one door to the Kubernetes API: the only module that imports ``kubernetes``.

Several parts of the product talk to an API server: ``serve``'s namespace
cache (``webhook.cluster.namespace_cache``) and the Events it writes
(``webhook.cluster.events_api``), and the commands that look at a live cluster
(``sidecar-injector check`` and ``why``, through ``webhook.cluster.reader``).
All get their plumbing here, so there is one place that configures the client
and one set of bounds on what a server may send.

The ``kubernetes`` package supplies the configuration (kubeconfig or service
account, TLS, tokens and their refresh; the kubeconfig and the files it names
are read within bounds first, by ``webhook.cluster.kubeconfig``) and its
connection pool; requests go
through that pool directly rather than through the generated API, which reads
a whole error body into memory before it raises and turns objects into model
classes that drop and rename fields. Objects stay plain JSON.

Every body is bounded by its caller (``limit``) and read within a deadline
(``deadline``): socket timeouts bound each read, not a body that trickles in
a byte at a time. Error bodies are read up to 64 KiB and only their message is
kept. A compressed body is refused: it was never asked for, and inflating it
would undo every size bound.
"""

from __future__ import annotations

import contextlib
import copy
import socket
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlencode

import orjson
import urllib3
from kubernetes import client as kube_client
from kubernetes import config as _kube_config
from kubernetes.config import kube_config as _kube_config_files

from webhook import __version__
from webhook.cluster.environment import SERVICE_ACCOUNT_DIR, running_in_cluster
from webhook.cluster.kubeconfig import KubeconfigError, load_kubeconfig
from webhook.manifests.files import CREDENTIAL_LIMIT, FileError, read_file

# The config loaders carry partial annotations that mypy --strict rejects.
kube_config: Any = _kube_config
kube_config_files: Any = _kube_config_files

KiB: Final = 1024
MiB: Final = 1024 * KiB
MAX_ERROR_BYTES: Final = 64 * KiB
_CHUNK: Final = 64 * KiB


class ConfigurationError(Exception):
    """The client cannot be configured (no kubeconfig, a broken one, no service account)."""


class ResponseError(Exception):
    """The server answered with something unusable; the message is written for people."""


class TooLarge(ResponseError, ValueError):
    """A body or an event over its bound; the request is abandoned."""


class Expired(ResponseError):
    """A resourceVersion or a list's continue token the server no longer has (HTTP 410)."""


class APIStatus(ResponseError):
    """A non-2xx answer: ``status``, and the message of the Kubernetes Status body if any."""

    def __init__(self, status: int, message: str, *, not_found: bool = False) -> None:
        super().__init__(message)
        self.status = status
        # True only for the API server's own NotFound Status, not a proxy's 404 page.
        self.not_found = not_found


def load_configuration(kubeconfig: Path | None = None, *, in_cluster: bool | None = None) -> Any:
    """A client configuration as ``kubectl`` would build it, inside or outside a cluster.

    An explicit ``kubeconfig`` wins; otherwise the pod's service account when
    running in a cluster; otherwise ``$KUBECONFIG`` or ``~/.kube/config``.
    Every file involved is read within bounds first (``webhook.cluster.kubeconfig``;
    the service account's by a bounded read before the client's own).
    Raises ``ConfigurationError`` with one line.
    """
    config = kube_client.Configuration()
    try:
        if kubeconfig is None and (running_in_cluster() if in_cluster is None else in_cluster):
            where = "in-cluster service account"
            for name in ("token", "ca.crt"):
                read_file(SERVICE_ACCOUNT_DIR / name, limit=CREDENTIAL_LIMIT)
            load: Callable[[], None] = lambda: kube_config.load_incluster_config(  # noqa: E731
                client_configuration=config
            )
        else:
            # The client is given the files' contents, never a path to read.
            loaded = load_kubeconfig(kubeconfig)
            where = f"kubeconfig {' or '.join(loaded.sources)}"
            load = lambda: kube_config_files.KubeConfigLoader(  # noqa: E731
                config_dict=loaded.config,
                config_base_path=loaded.base_path,
                # No persister: refreshed credentials are never written back.
            ).load_and_set(config)
    except (KubeconfigError, FileError) as err:
        raise ConfigurationError(f"cannot configure the Kubernetes client: {err}") from None
    try:
        load()
    except Exception as err:  # the loaders raise many types; all mean "cannot configure"
        raise ConfigurationError(
            f"cannot configure the Kubernetes client from the {where}: {one_line(err)}"
        ) from None
    return config


class Connection:
    """Requests through the client's pool: its TLS and proxy settings, current credentials.

    No retries anywhere (urllib3's are off): callers decide, and a retry would
    multiply every timeout on a hung server.
    """

    def __init__(self, configuration: Any, *, connect_timeout: float = 5.0) -> None:
        config = copy.deepcopy(configuration)
        config.retries = False
        self.config: Any = config
        self.pool: urllib3.PoolManager = kube_client.rest.RESTClientObject(config).pool_manager
        self.host: str = config.host
        self._base = config.host.rstrip("/")
        self.connect_timeout = connect_timeout

    def request(
        self,
        method: str,
        path: str,
        query: Mapping[str, str] | None = None,
        *,
        read_timeout: float,
        body: bytes | None = None,
        accept: str = "application/json",
        content_type: str = "application/json",
    ) -> urllib3.BaseHTTPResponse:
        """Send one request; the response is not read yet (``preload_content=False``).

        ``content_type`` is the body's (a PATCH says which patch it is).
        """
        headers = {"Accept": accept, "User-Agent": f"sidecar-injector/{__version__}"}
        if body is not None:
            headers["Content-Type"] = content_type
        # auth_settings() runs the configuration's refresh hook, so rotated
        # service-account tokens and exec-plugin credentials stay current.
        for setting in self.config.auth_settings().values():
            if setting.get("in") == "header" and setting.get("value"):
                headers[setting["key"]] = setting["value"]
        url = f"{self._base}{path}"
        if query:
            url = f"{url}?{urlencode(query)}"
        return self.pool.request(
            method,
            url,
            body=body,
            headers=headers,
            preload_content=False,
            decode_content=False,
            redirect=False,
            retries=False,
            timeout=urllib3.Timeout(connect=self.connect_timeout, read=read_timeout),
        )

    def call(
        self,
        method: str,
        path: str,
        query: Mapping[str, str] | None = None,
        *,
        limit: int,
        timeout: float,
        body: Any = None,
        accept: str = "application/json",
        content_type: str = "application/json",
        what: str = "the answer",
    ) -> Any:
        """One request whose JSON answer (at most ``limit`` bytes, within ``timeout``) is parsed.

        Raises ``APIStatus`` for a non-2xx answer, ``TooLarge`` for a body
        over ``limit``, ``ResponseError`` for a body that is late, cut or not
        JSON, and urllib3/OS errors for the connection itself (see
        ``one_line``).
        """
        raw = self.call_bytes(
            method,
            path,
            query,
            limit=limit,
            timeout=timeout,
            body=body,
            accept=accept,
            content_type=content_type,
            what=what,
        )
        return parse_json(raw, what=what)

    def call_bytes(
        self,
        method: str,
        path: str,
        query: Mapping[str, str] | None = None,
        *,
        limit: int,
        timeout: float,
        body: Any = None,
        accept: str = "application/json",
        content_type: str = "application/json",
        what: str = "the answer",
    ) -> bytes:
        """``call`` without the parsing: the body as it came, for callers that count bytes."""
        data = None if body is None else orjson.dumps(body)
        response = self.request(
            method,
            path,
            query,
            read_timeout=timeout,
            body=data,
            accept=accept,
            content_type=content_type,
        )
        complete = False
        try:
            with deadline(timeout, response) as expired:
                try:
                    if not 200 <= response.status < 300:
                        raw = read_body(response, limit=MAX_ERROR_BYTES, what="the error body")
                        complete = True
                        raise APIStatus(
                            response.status,
                            f"HTTP {response.status}{status_message(raw)}",
                            not_found=response.status == 404 and is_not_found(raw),
                        )
                    raw = read_body(response, limit=limit, what=what)
                    complete = True
                    if expired.is_set():  # the cut can look like a clean end of the body
                        raise ResponseError(f"{what} did not arrive within {timeout:g}s")
                except ResponseError:
                    raise
                except Exception:
                    if expired.is_set():
                        raise ResponseError(f"{what} did not arrive within {timeout:g}s") from None
                    raise
        finally:
            if not complete:
                # Unread bytes would be the next request's garbage: drop the connection.
                response.close()
            response.release_conn()
        return raw

    def clear(self) -> None:
        """Close the pool's idle connections."""
        self.pool.clear()

    def port_forward(self, namespace: str, pod: str, port: int, *, timeout: float) -> Any:
        """A socket-like object connected to ``port`` of ``pod``, through the API server.

        What ``kubectl port-forward`` does (a WebSocket to the pod's
        ``portforward`` subresource, which needs ``create`` on
        ``pods/portforward``), for one connection. The caller closes it.
        """
        # Only check needs WebSockets; serve should not import them.
        from kubernetes.stream import portforward  # noqa: PLC0415

        api = kube_client.CoreV1Api(kube_client.ApiClient(self.config))
        forward = portforward(
            api.connect_get_namespaced_pod_portforward,
            pod,
            namespace,
            ports=str(port),
            _request_timeout=timeout,
        )
        return forward.socket(port)


def parse_json(raw: bytes, *, what: str) -> Any:
    """``raw`` parsed; ``ResponseError`` when it is not JSON, ``MemoryError`` when it does not fit.

    orjson reports a failed allocation as a decode error; calling that "not
    JSON" would send people looking for a bug in the server's answer.
    """
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as err:
        if str(err).startswith("Not enough memory"):
            raise MemoryError(f"parsing {what} ({len(raw)} bytes)") from None
        raise ResponseError(f"{what} is not JSON") from None


def paged(
    fetch: Callable[[dict[str, str]], Any], *, page_size: int, what: str
) -> Iterator[tuple[str, list[Any]]]:
    """A list's pages as ``(resourceVersion, items)``, following continue tokens.

    ``fetch(query)`` returns one page (a parsed List). A page over its byte
    bound (``TooLarge``) is asked for again with a quarter of the items, down
    to one item per page, where the error is raised: large objects cost more
    requests, never more memory.
    """
    token: str | None = None
    limit = page_size
    while True:
        query = {"limit": str(limit)}
        if token:
            query["continue"] = token
        try:
            page = fetch(query)
        except TooLarge:
            if limit == 1:
                raise
            limit = max(1, limit // 4)
            continue
        if not isinstance(page, dict):
            raise ValueError(f"{what} is not an object")
        metadata = page.get("metadata")
        if not isinstance(metadata, dict):
            raise ValueError(f"{what} has no metadata")
        version = metadata.get("resourceVersion")
        if not isinstance(version, str) or not version:
            raise ValueError(f"{what} has no metadata.resourceVersion")
        items = page.get("items")
        if not isinstance(items, list | None):
            raise ValueError(f"{what}'s items are not a list")
        yield version, items or []
        token = metadata.get("continue")
        if not isinstance(token, str) or not token:
            return


def read_body(response: Any, *, limit: int, what: str) -> bytes:
    """The whole body, refused as soon as it is known to be over ``limit`` bytes."""
    check_encoding(response, what)
    declared = response.headers.get("Content-Length")
    if declared is not None and declared.strip().isdigit() and int(declared) > limit:
        raise TooLarge(f"{what} is {int(declared)} bytes, over the {limit}-byte limit")
    body = bytearray()
    for chunk in response.stream(_CHUNK, decode_content=False):
        body += chunk
        if len(body) > limit:
            raise TooLarge(f"{what} is over the {limit}-byte limit")
    return bytes(body)


def check_encoding(response: Any, what: str) -> None:
    """Refuse a compressed body: a small gzip body can inflate to gigabytes."""
    encoding = (response.headers.get("Content-Encoding") or "identity").strip().lower()
    if encoding != "identity":
        raise ResponseError(
            f"{what} came with Content-Encoding {encoding!r}, which was not asked for"
        )


def status_message(body: bytes) -> str:
    """': <message>' from a Kubernetes Status error body, or ''."""
    try:
        status = orjson.loads(body)
    except orjson.JSONDecodeError:
        return ""
    message = status.get("message") if isinstance(status, dict) else None
    return f": {message}" if isinstance(message, str) and message else ""


def read_status_message(response: Any, *, timeout: float) -> str:
    """': <message>' from an error response's body (64 KiB within ``timeout``), or ''."""
    try:
        with deadline(timeout, response):
            body = read_body(response, limit=MAX_ERROR_BYTES, what="the error body")
    except Exception:  # an error about the error: the status code says enough
        return ""
    return status_message(body)


def is_not_found(body: bytes) -> bool:
    """Whether a 404 body is the API server's own NotFound, not some proxy's page."""
    try:
        status = orjson.loads(body)
    except orjson.JSONDecodeError:
        return False
    return (
        isinstance(status, dict)
        and status.get("kind") == "Status"
        and status.get("reason") == "NotFound"
    )


def lines(response: Any, *, limit: int) -> Iterator[bytes]:
    """Newline-delimited watch events as they arrive; a line over ``limit`` bytes is an error."""
    buffer = bytearray()
    for chunk in response.stream(_CHUNK, decode_content=False):
        searched = len(buffer)  # no newline before here: don't scan it again
        buffer += chunk
        start = 0
        while (end := buffer.find(b"\n", max(start, searched))) != -1:
            if end - start > limit:
                raise TooLarge(f"a watch event is over the {limit}-byte limit")
            line = bytes(buffer[start:end])
            start = end + 1
            if line.strip():
                yield line
        del buffer[:start]
        if len(buffer) > limit:
            raise TooLarge(f"a watch event is over the {limit}-byte limit")
    if buffer.strip():
        yield bytes(buffer)


@contextlib.contextmanager
def deadline(seconds: float, response: Any) -> Iterator[threading.Event]:
    """Cut ``response``'s connection if the block is still reading after ``seconds``.

    Socket timeouts bound each read, not a body that trickles in a byte at a
    time; this bounds the whole. The event says whether the cut happened.
    """
    fired = threading.Event()

    def cut() -> None:
        fired.set()
        shutdown(response)

    timer = threading.Timer(seconds, cut)
    timer.daemon = True
    timer.start()
    try:
        yield fired
    finally:
        timer.cancel()


def shutdown(response: Any) -> None:
    """Wake whatever thread is blocked reading ``response``: shut its socket down."""
    # Closing the response object from another thread would not wake recv().
    sock = _socket_of(response)
    if sock is not None:
        # Already closed is fine: the reader is on its way out anyway.
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


def _socket_of(response: Any) -> Any:
    """The socket a urllib3 response reads from, wherever it is kept.

    Usually the pooled connection holds it; but for an answer that ends the
    connection (HTTP/1.0, ``Connection: close``) http.client hands the socket
    to the response and the connection's ``sock`` is None: then it is the
    one under the response's buffered reader.
    """
    connection = getattr(response, "connection", None) or getattr(response, "_connection", None)
    sock = getattr(connection, "sock", None)
    if sock is not None:
        return sock
    reader = getattr(getattr(response, "_fp", None), "fp", None)  # http.client's BufferedReader
    return getattr(getattr(reader, "raw", None), "_sock", None)  # its SocketIO's socket


def one_line(err: BaseException) -> str:
    """A short, single-line description of an error for logs, warnings and check results."""
    if isinstance(err, ResponseError):
        text = str(err)  # written for people already; the class name adds nothing
    else:
        reason = getattr(err, "reason", None)  # urllib3's MaxRetryError wraps the real cause
        cause = reason if isinstance(reason, BaseException) else err
        text = f"{type(cause).__name__}: {cause}"
    text = " ".join(text.split())
    return text if len(text) <= 300 else text[:297] + "..."
