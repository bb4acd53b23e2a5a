"""Bounded reads (and the few writes) of a live cluster, for the commands that look at one.

Every request has a timeout and a body limit, so a hostile or huge API server
costs a one-line error, never a hang or the machine's memory: 4 MiB for an
object, 8 MiB for a list page (asked again with fewer items when over, down to
one item), each within ``timeout`` seconds. A list is bounded as a whole too,
since a server may promise one more page forever: at most 64 MiB and 1,000
pages in all, read within ``timeout`` seconds altogether (or by a deadline
the caller gives). Errors come out as ``ClusterError`` with one line of
text (``kube.one_line``), the HTTP status kept for callers that tell a
NotFound or a Forbidden apart.

Objects stay plain JSON (``webhook.cluster.kube``): nothing is turned into
the client's model classes.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Final
from urllib.parse import quote

from webhook.cluster import kube
from webhook.manifests.files import size_text

OBJECT_LIMIT: Final = 4 * kube.MiB
PAGE_LIMIT: Final = 8 * kube.MiB
PAGE_SIZE: Final = 250
# One list, all its pages together. Callers keep a list's items (the
# namespaces, the EndpointSlices) or something per item (the pod scan), so
# this bounds their memory as well as the time spent: 64 MiB of metadata is
# tens of thousands of pods or namespaces.
LIST_LIMIT: Final = 64 * kube.MiB
# Requests for one list: pages asked again smaller count too.
MAX_PAGES: Final = 1_000
_METADATA_LIST: Final = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1"
_METADATA: Final = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1"


class ClusterError(Exception):
    """A request failed; one line. ``status`` is the HTTP status when there was one.

    ``answered``: the server answered, but with something unusable (a body
    over its bound, not JSON, late); false with no status when it could not
    be reached at all (refused, timed out, TLS).
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        not_found: bool = False,
        answered: bool = False,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.not_found = not_found
        self.answered = answered or status is not None


class TimeUp(Exception):
    """A time budget ran out."""


class Cluster:
    """Reads and writes of one API server, each bounded in size and time."""

    def __init__(self, connection: kube.Connection, *, timeout: float) -> None:
        self.connection = connection
        self.host = connection.host
        self.timeout = timeout

    def _call(
        self, method: str, path: str, query: Mapping[str, str] | None = None, **kw: Any
    ) -> Any:
        try:
            return self.connection.call(method, path, query, timeout=self.timeout, **kw)
        except kube.APIStatus as err:
            raise ClusterError(str(err), status=err.status, not_found=err.not_found) from None
        except Exception as err:  # connection refused, timeouts, TLS, garbled bodies
            answered = isinstance(err, kube.ResponseError)
            raise ClusterError(kube.one_line(err), answered=answered) from None

    def get(self, path: str, *, metadata_only: bool = False) -> dict[str, Any] | None:
        """One object (at most 4 MiB), or ``None`` when the API server says NotFound."""
        try:
            found = self._call(
                "GET",
                path,
                limit=OBJECT_LIMIT,
                accept=_METADATA if metadata_only else "application/json",
                what="the object",
            )
        except ClusterError as err:
            if err.not_found:
                return None
            raise
        if not isinstance(found, dict):
            raise ClusterError(f"{path}: the answer is not an object")
        return found

    def list(
        self,
        path: str,
        *,
        query: Mapping[str, str] | None = None,
        metadata_only: bool = False,
        page_size: int = PAGE_SIZE,
        until: float | None = None,
        max_bytes: int = LIST_LIMIT,
        max_pages: int = MAX_PAGES,
    ) -> Iterator[dict[str, Any]]:
        """The items of a list, page by page, the whole list bounded in bytes, pages and time.

        Each page is at most 8 MiB, all of them together at most
        ``max_bytes`` in ``max_pages`` requests; past either, ``ClusterError``.
        The whole list (the caller's work between pages included) gets the
        request timeout, each page the time left of it, so a server that
        answers every page at once but never stops costs one timeout. With
        ``until`` (a monotonic time) the caller sets the deadline instead and
        gets ``TimeUp`` when it passes, to keep what it has read.
        """
        accept = _METADATA_LIST if metadata_only else "application/json"
        deadline = time.monotonic() + self.timeout if until is None else until
        # Requests (the bound), pages read whole, and their bytes.
        read = {"requests": 0, "pages": 0, "bytes": 0}

        def late() -> Exception:
            if until is not None:
                return TimeUp()
            pages = read["pages"]
            return ClusterError(
                f"the list {path} did not finish within {self.timeout:g}s"
                f" ({pages} page{'' if pages == 1 else 's'} read)"
            )

        def fetch(page_query: dict[str, str]) -> Any:
            if read["requests"] >= max_pages:
                raise ClusterError(f"the list {path} goes on past {max_pages} pages")
            left = deadline - time.monotonic()
            if left <= 0:
                raise late()
            read["requests"] += 1
            try:
                raw = self.connection.call_bytes(
                    "GET",
                    path,
                    {**(query or {}), **page_query},
                    limit=PAGE_LIMIT,
                    timeout=min(self.timeout, left),
                    accept=accept,
                    what="a list page",
                )
            except kube.TooLarge:
                raise  # kube.paged asks again with fewer items
            except kube.APIStatus as err:
                raise ClusterError(str(err), status=err.status) from None
            except MemoryError:
                raise
            except Exception as err:
                if time.monotonic() >= deadline:
                    raise late() from None
                raise ClusterError(kube.one_line(err)) from None
            read["pages"] += 1
            read["bytes"] += len(raw)
            if read["bytes"] > max_bytes:
                raise ClusterError(
                    f"the list {path} is over {size_text(max_bytes)} in all"
                    f" ({read['pages']} pages read)"
                )
            try:
                return kube.parse_json(raw, what="a list page")
            except kube.ResponseError as err:
                raise ClusterError(str(err)) from None

        try:
            for _, items in kube.paged(fetch, page_size=page_size, what=f"the list {path}"):
                for item in items:
                    if isinstance(item, dict):
                        yield item
        except (kube.TooLarge, ValueError) as err:
            raise ClusterError(kube.one_line(err)) from None

    def dry_run_pod(
        self, namespace: str, pod: Mapping[str, Any], *, field_manager: str
    ) -> dict[str, Any]:
        """Create ``pod`` with ``dryRun=All``: admitted (webhooks called), never stored."""
        created = self._call(
            "POST",
            f"/api/v1/namespaces/{quote(namespace, safe='')}/pods",
            {"dryRun": "All", "fieldManager": field_manager},
            body=pod,
            limit=OBJECT_LIMIT,
            what="the dry-run pod",
        )
        if not isinstance(created, dict):
            raise ClusterError("the dry-run answer is not an object")
        return created

    def write(
        self,
        method: str,
        path: str,
        body: Mapping[str, Any] | Sequence[Any],
        *,
        field_manager: str,
        content_type: str = "application/json",
    ) -> dict[str, Any]:
        """Create (POST), replace (PUT) or patch (PATCH) an object; what the server stored.

        The answer is bounded like a read; a PUT carries the ``resourceVersion``
        it read, so a change made meanwhile is a 409 rather than lost.
        """
        stored = self._call(
            method,
            path,
            {"fieldManager": field_manager},
            body=body,
            content_type=content_type,
            limit=OBJECT_LIMIT,
            what="the stored object",
        )
        if not isinstance(stored, dict):
            raise ClusterError(f"{path}: the answer is not an object")
        return stored

    def port_forward(self, namespace: str, pod: str, port: int) -> Any:
        """A connection to ``pod``'s ``port`` through the API server."""
        try:
            return self.connection.port_forward(namespace, pod, port, timeout=self.timeout)
        except Exception as err:  # the WebSocket client raises many types
            raise OSError(f"port-forward to pod {namespace}/{pod}: {kube.one_line(err)}") from None
