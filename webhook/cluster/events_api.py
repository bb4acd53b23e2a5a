"""Writes of Events (``events.k8s.io/v1``) for ``serve``: create one, patch its series.

The two requests client-go's event broadcaster makes (``k8s.io/client-go/tools/events``):
a POST that creates an Event, and a merge patch of its ``series`` (count and
last observed time) when the same thing happens again. Which RBAC verbs that
needs on ``events.events.k8s.io``: ``create`` and ``patch``, nothing else (no
reads: the sender remembers the names it created).

Bounded like every other request here (``webhook.cluster.kube``): each write
gets at most ``timeout`` seconds from the request to the answer's last byte,
and the answer is read up to ``MAX_ANSWER_BYTES`` (an Event with its 1 KiB
note is well under it), error bodies up to 64 KiB of which only the message
is kept. No retries: the sender (``webhook.service.events``) decides, and a
retry would multiply each timeout on a hung server.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote

from webhook.cluster import kube

API_PATH: Final = "/apis/events.k8s.io/v1"
# The API server answers a write with the object written: an Event with a
# note of at most 1 KiB and short fields is a few KiB.
MAX_ANSWER_BYTES: Final = 64 * kube.KiB
# client-go sends a series update as a merge patch (computed with
# jsonpatch.CreateMergePatch); the API server takes it as that content type.
MERGE_PATCH: Final = "application/merge-patch+json"


class EventWriteError(Exception):
    """A write failed; one line. ``status`` is the HTTP status when there was one.

    ``not_found``: the API server's own NotFound (the Event to patch is gone:
    Events expire, one hour after their last write by default).
    """

    def __init__(self, message: str, *, status: int | None = None, not_found: bool = False):
        super().__init__(message)
        self.status = status
        self.not_found = not_found


class EventsAPI:
    """Event writes over one connection pool, each bounded in bytes and time."""

    def __init__(self, configuration: Any, *, connect_timeout: float = 2.0) -> None:
        self._connection = kube.Connection(configuration, connect_timeout=connect_timeout)
        self.host: str = self._connection.host

    @classmethod
    def from_environment(
        cls, kubeconfig: Path | None = None, *, in_cluster: bool | None = None
    ) -> EventsAPI:
        """Configured as the namespace cache is (``kube.load_configuration``).

        Raises ``kube.ConfigurationError`` with one line.
        """
        return cls(kube.load_configuration(kubeconfig, in_cluster=in_cluster))

    def create(self, event: Mapping[str, Any], *, timeout: float) -> None:
        """POST ``event`` into its namespace (``metadata.namespace``)."""
        namespace = str(event["metadata"]["namespace"])
        self._write("POST", _events_path(namespace), event, timeout=timeout)

    def patch(self, namespace: str, name: str, patch: Mapping[str, Any], *, timeout: float) -> None:
        """Merge-patch the Event ``namespace/name`` (its ``series``)."""
        path = f"{_events_path(namespace)}/{quote(name, safe='')}"
        self._write("PATCH", path, patch, timeout=timeout, content_type=MERGE_PATCH)

    def close(self) -> None:
        """Close the pool's idle connections."""
        self._connection.clear()

    def _write(
        self,
        method: str,
        path: str,
        body: Mapping[str, Any],
        *,
        timeout: float,
        content_type: str = "application/json",
    ) -> None:
        try:
            self._connection.call_bytes(
                method,
                path,
                limit=MAX_ANSWER_BYTES,
                timeout=timeout,
                body=body,
                content_type=content_type,
                what="the written Event",
            )
        except kube.APIStatus as err:
            raise EventWriteError(str(err), status=err.status, not_found=err.not_found) from None
        except Exception as err:  # connection refused, timeouts, TLS, an oversized answer
            raise EventWriteError(kube.one_line(err)) from None


def _events_path(namespace: str) -> str:
    return f"{API_PATH}/namespaces/{quote(namespace, safe='')}/events"
