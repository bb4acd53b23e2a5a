"""A least-recently-used cache bounded in entries *and* in bytes.

``functools.lru_cache(maxsize=N)`` bounds the number of entries, not what they
weigh: 4,096 entries of a few hundred bytes are nothing, 4,096 entries built
from the largest settings a pod may carry are hundreds of megabytes. Here each
entry is stored with its (approximate) size, and the oldest entries go once
either bound is reached; an entry larger than the whole byte budget is simply
not kept. Thread-safe, so it may be shared by requests handled on worker threads.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class BoundedCache(Generic[K, V]):
    """LRU mapping with ``max_entries`` and ``max_bytes`` (sizes are the caller's estimates)."""

    def __init__(self, *, max_entries: int, max_bytes: int) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._items: OrderedDict[K, tuple[V, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: K) -> V | None:
        """The cached value (now the most recently used), or None."""
        with self._lock:
            found = self._items.get(key)
            if found is None:
                return None
            self._items.move_to_end(key)
            return found[0]

    def put(self, key: K, value: V, *, size: int) -> None:
        """Keep ``value`` under ``key``, evicting the least recently used as needed."""
        if size > self.max_bytes:
            return
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._bytes -= old[1]
            self._items[key] = (value, size)
            self._bytes += size
            while len(self._items) > self.max_entries or self._bytes > self.max_bytes:
                _, (_, evicted) = self._items.popitem(last=False)
                self._bytes -= evicted

    def clear(self) -> None:
        """Forget everything (tests, config reloads)."""
        with self._lock:
            self._items.clear()
            self._bytes = 0

    @property
    def entries(self) -> int:
        """How many entries are held now."""
        return len(self._items)

    @property
    def bytes(self) -> int:
        """The sum of the held entries' sizes."""
        return self._bytes
