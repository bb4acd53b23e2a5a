"""Who waits for a namespace the watch has not delivered yet, and whether the watch is live.

kube-apiserver never sends a pod whose namespace does not exist, and a
namespace created just before its first pod reaches the watch within
moments. So while the watch is live, admission waits for the watch to
deliver an unknown namespace rather than reading it: reading would let any
client that names random namespaces turn each review into an API request.

The reflector tells :class:`Arrivals` two things, from its thread: a name
was applied to the store (:meth:`Arrivals.arrived`), and the watch became
live or stopped being live (:meth:`Arrivals.set_live`). "Live" runs from a
watch stream opening to the reflector failing (a broken, refused or expired
watch) or stopping; a watch that ends cleanly at its timeout and is renewed
stays live. When it stops, every waiter is woken at once: nothing more will
arrive, and each goes on without the watch.

Waiters give a callback, called at most once from the reflector's thread;
it must be quick and must not block (the service's hands the wake-up to its
event loop). Callbacks run outside the lock, and one that raises is ignored.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger("webhook.namespaces")

Wake = Callable[[], None]


class Arrivals:
    """Callbacks by namespace name, at most ``max_waiters`` in all, and the watch's liveness."""

    def __init__(self, max_waiters: int) -> None:
        self._max = max_waiters
        self._lock = threading.Lock()
        self._live = False
        self._waiting: dict[str, list[Wake]] = {}
        self._count = 0

    @property
    def live(self) -> bool:
        """Whether a watch is open and delivering (see the module docstring)."""
        return self._live

    @property
    def waiting(self) -> int:
        """How many callbacks are registered now."""
        return self._count

    def wait(self, name: str, wake: Wake) -> Callable[[], None] | None:
        """Call ``wake`` once ``name`` arrives or the watch stops being live; the canceller.

        ``None`` (nothing registered) when the watch is not live, or when as
        many are waiting as allowed: the caller should not wait. The caller
        checks the store again after registering, since the name may have
        arrived just before.
        """
        with self._lock:
            if not self._live or self._count >= self._max:
                return None
            self._waiting.setdefault(name, []).append(wake)
            self._count += 1

        def cancel() -> None:
            with self._lock:
                waiting = self._waiting.get(name)
                if waiting is None or wake not in waiting:
                    return  # woken already
                waiting.remove(wake)
                self._count -= 1
                if not waiting:
                    del self._waiting[name]

        return cancel

    def arrived(self, name: str) -> None:
        """``name`` was applied to the store: wake its waiters (the reflector's thread)."""
        if name not in self._waiting:  # the common case, without the lock
            return
        with self._lock:
            woken = self._waiting.pop(name, [])
            self._count -= len(woken)
        _call(woken)

    def set_live(self, live: bool) -> None:
        """The watch became live, or stopped being live (then every waiter is woken)."""
        with self._lock:
            was, self._live = self._live, live
            if live or not was:
                return
            woken = [wake for waiting in self._waiting.values() for wake in waiting]
            self._waiting.clear()
            self._count = 0
        _call(woken)


def _call(callbacks: list[Wake]) -> None:
    for wake in callbacks:
        try:
            wake()
        except Exception:  # a waiter's bug must not stop the watch
            log.exception("namespace watch: a waiter's wake-up failed")
