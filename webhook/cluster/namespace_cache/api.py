"""The namespace cache's requests: a list page, a watch stream, one namespace's GET.

What client-go calls a ListerWatcher, plus the single read the fetcher makes.
The plumbing (configuration, connection pool, bounded bodies and events)
comes from ``webhook.cluster.kube``, the one module that imports
``kubernetes``; objects stay plain dicts, never the client's models (they drop
and rename fields). Every answer is bounded in bytes (``options``) and in
time; an error body is read up to 64 KiB, of which only the message is kept.

Responses being read are tracked, so that ``stop()`` can cut them off: a
thread blocked reading a socket wakes only when that socket is shut down.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import quote

import orjson
import urllib3

from webhook.cluster import kube
from webhook.cluster.namespace_cache.options import MAX_LIST_PAGE_BYTES, MAX_OBJECT_BYTES
from webhook.cluster.namespace_cache.store import parse
from webhook.contract.namespaces import NamespaceInfo, NamespaceUnavailable

PATH = "/api/v1/namespaces"
_GONE = 410
_NOT_FOUND = 404
_OK = 200

# The watch's resourceVersion (or a list's continue token) is too old: list again.
Expired = kube.Expired
# A body or an event over its bound; the request is abandoned.
TooLarge = kube.TooLarge


class WatchError(kube.ResponseError):
    """The server answered, but with something the cache cannot use (a status, an ERROR event)."""


class Stopping(Exception):
    """``stop()`` was called while a request was being opened."""


class NamespaceAPI:
    """Namespaces over one connection pool; no retries (the callers decide)."""

    def __init__(self, configuration: Any, *, connect_timeout: float) -> None:
        # No retries in the connection: the reflector retries with its own
        # backoff, and urllib3's would multiply each timeout on a hung server.
        self._connection = kube.Connection(configuration, connect_timeout=connect_timeout)
        self.host: str = self._connection.host
        self._open: set[Any] = set()
        self._lock = threading.Lock()
        self._stopping = threading.Event()

    def list_page(self, query: Mapping[str, str], *, timeout: float) -> dict[str, Any]:
        """One page of the list (``limit``, ``continue`` in ``query``), parsed, within ``timeout``.

        Raises ``Expired`` when the continue token has expired, ``TooLarge``
        for a page over ``MAX_LIST_PAGE_BYTES`` (``kube.paged`` then asks for
        fewer items), ``WatchError`` for another status or a late page.
        """
        response = self._send(PATH, query, read_timeout=timeout)
        complete = False
        try:
            if response.status == _GONE and "continue" in query:
                raise Expired("the list's continue token expired (HTTP 410)")
            if response.status != _OK:
                raise WatchError(
                    f"list: HTTP {response.status}"
                    f"{kube.read_status_message(response, timeout=timeout)}"
                )
            with kube.deadline(timeout, response) as expired:
                try:
                    body = kube.read_body(response, limit=MAX_LIST_PAGE_BYTES, what="a list page")
                except TooLarge:
                    raise
                except Exception:
                    if expired.is_set():
                        raise WatchError(
                            f"a list page did not arrive within {timeout:g}s"
                        ) from None
                    raise
            complete = True
        finally:
            self._release(response, complete=complete)
        page = orjson.loads(body)
        if not isinstance(page, dict):
            raise ValueError("the namespace list is not an object")
        return page

    @contextlib.contextmanager
    def watch(
        self, resource_version: str, *, timeout_seconds: int, read_timeout: float
    ) -> Iterator[Iterator[bytes]]:
        """A watch from ``resource_version``: its events as raw lines, while the block runs.

        The server is asked to end the stream after ``timeout_seconds``;
        ``read_timeout`` of silence counts as a dead connection (``WatchError``).
        Raises ``Expired`` when the version is too old (HTTP 410).
        """
        query = {
            "watch": "true",
            "resourceVersion": resource_version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(timeout_seconds),
        }
        # Silence past the cache's read timeout ends the watch, not the
        # watch's own timeout plus slack: a half-open connection would
        # otherwise go unnoticed for many minutes (options.READ_TIMEOUT_SECONDS).
        response = self._send(PATH, query, read_timeout=read_timeout)
        try:
            if response.status == _GONE:
                raise Expired(f"resourceVersion {resource_version} is too old (HTTP 410)")
            if response.status != _OK:
                raise WatchError(
                    f"watch: HTTP {response.status}"
                    f"{kube.read_status_message(response, timeout=read_timeout)}"
                )
            kube.check_encoding(response, "the watch")
            yield kube.lines(response, limit=MAX_OBJECT_BYTES)
        except urllib3.exceptions.ReadTimeoutError:
            raise WatchError(
                f"the watch was silent for {read_timeout:g}s, past its own"
                f" {timeout_seconds}s timeout; taking the connection for dead"
            ) from None
        finally:
            self._release(response, complete=False)

    def get(self, name: str, *, timeout: float) -> NamespaceInfo | None:
        """Read one namespace within ``timeout``: what the store would keep of it.

        ``None`` only for a 404 carrying the API server's own ``NotFound``
        Status (not a proxy's page). Every other outcome raises
        ``NamespaceUnavailable`` with one line naming the namespace.
        """
        what = f"namespace {name}"
        try:
            response = self._send(f"{PATH}/{quote(name, safe='')}", {}, read_timeout=timeout)
        except Stopping:
            raise NamespaceUnavailable(f"{what}: the namespace source is stopped") from None
        except Exception as err:  # connection refused, connect or header timeout, TLS
            raise NamespaceUnavailable(f"{what}: {kube.one_line(err)}") from None
        complete = False
        try:
            with kube.deadline(timeout, response) as expired:
                try:
                    if response.status == _NOT_FOUND:
                        body = kube.read_body(
                            response, limit=kube.MAX_ERROR_BYTES, what="the 404 answer"
                        )
                        complete = True
                        if kube.is_not_found(body):
                            return None
                        raise NamespaceUnavailable(
                            f"{what}: HTTP 404 without a Kubernetes NotFound status"
                        )
                    if response.status != _OK:
                        raise NamespaceUnavailable(
                            f"{what}: HTTP {response.status}"
                            f"{kube.read_status_message(response, timeout=timeout)}"
                        )
                    body = kube.read_body(response, limit=MAX_OBJECT_BYTES, what="the body")
                    complete = True
                except NamespaceUnavailable:
                    raise
                except Exception as err:  # a cut or garbled stream, an oversized body
                    if expired.is_set():
                        raise NamespaceUnavailable(
                            f"{what}: the answer did not arrive within {timeout:g}s"
                        ) from None
                    raise NamespaceUnavailable(f"{what}: {kube.one_line(err)}") from None
        finally:
            self._release(response, complete=complete)
        try:
            info = parse(orjson.loads(body))
        except (ValueError, AttributeError) as err:
            raise NamespaceUnavailable(
                f"{what}: the API server's answer is not a Namespace: {kube.one_line(err)}"
            ) from None
        if info.name != name:
            raise NamespaceUnavailable(f"{what}: the API server answered for {info.name}")
        return info

    def stop(self) -> None:
        """Refuse new requests and cut off the responses being read."""
        self._stopping.set()
        with self._lock:
            responses = list(self._open)
        for response in responses:
            kube.shutdown(response)

    def clear(self) -> None:
        """Close the pool's idle connections."""
        self._connection.clear()

    def _send(
        self, path: str, query: Mapping[str, str], *, read_timeout: float
    ) -> urllib3.BaseHTTPResponse:
        """One GET through the client's pool, remembered so that ``stop()`` can cut it off."""
        if self._stopping.is_set():
            raise Stopping
        response = self._connection.request("GET", path, query, read_timeout=read_timeout)
        with self._lock:
            self._open.add(response)
        # stop() sets the flag before it looks for responses, so either it
        # saw this response or we see the flag here.
        if self._stopping.is_set():
            self._release(response, complete=False)
            raise Stopping
        return response

    def _release(self, response: Any, *, complete: bool) -> None:
        with self._lock:
            self._open.discard(response)
        if not complete:
            # Unread bytes would be the next request's garbage: drop the connection.
            response.close()
        response.release_conn()
