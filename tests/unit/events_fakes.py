"""A writer of Events without HTTP, for the tests of the sender and of ``/mutate`` with it.

``FakeWriter`` stands in for ``webhook.cluster.events_api.EventsAPI``: it
keeps what it is asked to create and patch, and can hang (``gate`` cleared,
``entered`` released as each write starts) or fail (``failure``,
``patch_failure``). The Events API over HTTP is the fake API server's
``EventStore`` (``harness.fake_kube_api.events``).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


class WriteFailed(Exception):
    """What the fake raises; ``not_found`` as the real writer's error has it."""

    def __init__(self, message: str, *, not_found: bool = False) -> None:
        super().__init__(message)
        self.not_found = not_found


@dataclass
class FakeWriter:
    """Keeps what it is asked to write; can hang (``gate`` cleared) or fail (``failure``)."""

    creates: list[dict[str, Any]] = field(default_factory=list)
    patches: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)
    timeouts: list[float] = field(default_factory=list)
    failure: WriteFailed | None = None
    patch_failure: WriteFailed | None = None
    gate: threading.Event = field(default_factory=threading.Event)
    entered: threading.Semaphore = field(default_factory=lambda: threading.Semaphore(0))
    closed: bool = False

    def __post_init__(self) -> None:
        self.gate.set()

    def create(self, event: Mapping[str, Any], *, timeout: float) -> None:
        self._enter(timeout)
        if self.failure is not None:
            raise self.failure
        self.creates.append(dict(event))

    def patch(self, namespace: str, name: str, patch: Mapping[str, Any], *, timeout: float) -> None:
        self._enter(timeout)
        failure = self.failure or self.patch_failure
        if failure is not None:
            raise failure
        self.patches.append((namespace, name, dict(patch)))

    def close(self) -> None:
        self.closed = True

    def _enter(self, timeout: float) -> None:
        self.timeouts.append(timeout)
        self.entered.release()
        self.gate.wait(30)

    def last_count(self) -> int:
        """The count the API server would show for the one Event written."""
        if self.patches:
            return int(self.patches[-1][2]["series"]["count"])
        return int((self.creates[-1].get("series") or {}).get("count", 1))
