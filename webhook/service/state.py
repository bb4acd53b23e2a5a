"""What the endpoints share, built once per app by ``webhook.service.app.create_app``."""

from __future__ import annotations

import datetime
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

import anyio
import anyio.to_thread

from webhook.cluster.namespaces_file import NamespaceSource
from webhook.engine.config import InjectorConfig
from webhook.service.body import BodyBudget
from webhook.service.events import EventSink, NoEvents
from webhook.service.limits import Limits
from webhook.service.metrics import Metrics
from webhook.service.namespace_lookup import SourceLookup
from webhook.service.preview_access import PreviewAccess

T = TypeVar("T")


class TLSState(Protocol):
    """What ``/readyz`` needs of ``webhook.service.tls.ReloadingTLS``."""

    @property
    def loaded(self) -> bool: ...
    @property
    def not_after(self) -> datetime.datetime | None: ...


@dataclass
class AppState:
    """State shared by the endpoints; ``started`` is the lifespan's to set."""

    config: InjectorConfig
    namespaces: NamespaceSource
    tls: TLSState | None
    metrics: Metrics
    limits: Limits
    budget: BodyBudget
    lookup: SourceLookup
    preview_slots: anyio.Semaphore
    review_threads: anyio.CapacityLimiter
    # Who may preview; None: anyone (no cluster namespaces to protect).
    preview_access: PreviewAccess | None = None
    # Events on the pods' owners; none without a cluster to write them to.
    events: EventSink = field(default_factory=NoEvents)
    started: bool = False

    async def in_thread(self, func: Callable[[], T], /) -> T:
        """An ``admission.Runner``: ``func`` in a worker thread, one review at a time."""
        return await anyio.to_thread.run_sync(func, limiter=self.review_threads)
