"""What the namespace cache knows: each namespace as admission reads it, within a byte budget.

As client-go's ``Store``, it holds objects and nothing about how they arrived:
the reflector replaces its contents on a list and puts or removes one
namespace per watch event; the fetcher may fill in a namespace the watch has
not delivered yet, under a rule that keeps the watch the authority on what
exists (``put_fetched``). Readers take no lock: ``get`` is one dict lookup,
atomic in CPython, which is what keeps ``cached()`` safe on the event loop.

Memory is bounded twice: a namespace may take ``max_entry_bytes`` and the
whole store ``max_bytes``, both estimated from string sizes plus a per-entry
and per-label overhead (``estimated_bytes``; a test checks the estimate
against tracemalloc). Of annotations only the ``sidecar.mesh.io/`` ones are
kept (``parse``): they are the only ones admission reads, and kubectl's
last-applied-configuration alone may be 256 KiB.

Every write that takes a namespace away (a removal, a relist, an entry pushed
out for want of room) bumps ``removals``: a reader that saw the count before
its GET knows whether the store may have lost something since.

Two sets of names complete the picture, each bounded in count, oldest
forgotten first:

- **uncached**: namespaces the watch delivered that do not fit (too large,
  or the store is full). They exist; admission reads them instead of
  waiting for the watch to deliver them.
- **absent**: names a GET found missing, remembered for a short while so
  that naming them again costs no read. Written under the mirror of the
  fetch rule (only if the watch has not delivered the name meanwhile) and
  dropped the moment the watch delivers it, on a relist, or when told
  (the watch stopped, so it could miss a creation).
"""

from __future__ import annotations

import sys
import threading
from types import MappingProxyType
from typing import Any

from webhook.cluster.namespace_cache.options import (
    MAX_ABSENT_NAMES,
    MAX_NAMESPACE_BYTES,
    MAX_UNCACHED_NAMES,
)
from webhook.contract import constants
from webhook.contract.namespaces import NamespaceInfo


def parse(obj: Any) -> NamespaceInfo:
    """A Namespace object as the cache keeps it: labels, and only the sidecar annotations.

    Raises ``ValueError`` (or ``AttributeError`` for a non-object) when it is
    not a usable Namespace.
    """
    info = NamespaceInfo.from_object(obj)
    kept = {k: v for k, v in info.annotations.items() if k.startswith(constants.PREFIX)}
    if len(kept) == len(info.annotations):
        return info
    return NamespaceInfo(info.name, info.labels, MappingProxyType(kept))


def _remember(names: dict[str, Any], name: str, value: Any, limit: int) -> None:
    """Put ``name`` last in an insertion-ordered dict of at most ``limit``, oldest out first."""
    names.pop(name, None)
    while len(names) >= limit:
        del names[next(iter(names))]
    names[name] = value


def estimated_bytes(info: NamespaceInfo) -> int:
    """A generous estimate of the memory a stored namespace takes.

    The strings' own sizes, plus room for the entry (the object, two maps and
    the store's dict slot) and for each map slot.
    """
    size = 700 + sys.getsizeof(info.name)
    for mapping in (info.labels, info.annotations):
        for key, value in mapping.items():
            size += 100 + sys.getsizeof(key) + sys.getsizeof(value)
    return size


class Listing:
    """A list's namespaces gathered within the store's budget, to be swapped in whole.

    Built page by page while the list arrives, so that what does not fit is
    dropped at once rather than held until the end.
    """

    def __init__(self, budget: int) -> None:
        self._budget = budget
        self.items: dict[str, NamespaceInfo] = {}
        self.bytes = 0
        # What the budget left out: how many, and the first one's name (for the log).
        self.left_out = 0
        self.first_left_out = ""
        # Every namespace listed but not kept (the budget's and too-large ones).
        self.uncached: dict[str, None] = {}

    def add(self, info: NamespaceInfo) -> bool:
        """Keep ``info`` if it fits in what is left of the budget; whether it did."""
        cost = estimated_bytes(info)
        if self.bytes + cost > self._budget:
            self.left_out += 1
            self.first_left_out = self.first_left_out or info.name
            self.skip(info.name)
            return False
        self.items[info.name] = info
        self.bytes += cost
        return True

    def skip(self, name: str) -> None:
        """Note a listed namespace that is not kept (it exists, uncached)."""
        _remember(self.uncached, name, None, MAX_UNCACHED_NAMES)


class NamespaceStore:
    """Namespaces by name, at most ``max_bytes`` of them, and when they were last known current.

    Writers serialise on a lock; ``get`` takes none. ``synced_at`` is the
    writer's word (``mark_synced``) for when the store last held everything
    the server had: a list, an event, a BOOKMARK, a watch that ended cleanly.
    """

    def __init__(self, *, max_bytes: int, max_entry_bytes: int = MAX_NAMESPACE_BYTES) -> None:
        self.max_bytes = max_bytes
        self.max_entry_bytes = max_entry_bytes
        # Replaced wholesale by replace() and updated in place by the rest,
        # under _lock; readers see one dict or the other, never a mix.
        self._items: dict[str, NamespaceInfo] = {}
        self._bytes = 0
        self._lock = threading.Lock()
        self._removals = 0
        self._synced_at: float | None = None
        # Names that exist but are not stored, and names read as missing (with
        # until when they are remembered); see the module docstring.
        self._uncached: dict[str, None] = {}
        self._absent: dict[str, float] = {}

    # -- reading (no lock) --------------------------------------------------------

    def get(self, name: str) -> NamespaceInfo | None:
        """The namespace as last known, or None; no lock, no I/O."""
        return self._items.get(name)

    def __len__(self) -> int:
        return len(self._items)

    @property
    def bytes(self) -> int:
        """The estimated memory the stored namespaces take (see ``estimated_bytes``)."""
        return self._bytes

    @property
    def removals(self) -> int:
        """How many writes so far took a namespace away (or may have); see ``put_fetched``."""
        return self._removals

    @property
    def synced_at(self) -> float | None:
        """When the store last held everything the server had (None: never yet)."""
        return self._synced_at

    def uncached(self, name: str) -> bool:
        """Whether ``name`` exists as far as the watch knows, but is not stored (no lock)."""
        return name in self._uncached

    def absent(self, name: str, now: float) -> bool:
        """Whether a GET found ``name`` missing recently, and nothing has said otherwise since."""
        until = self._absent.get(name)
        return until is not None and now < until

    def fits(self, info: NamespaceInfo) -> bool:
        """Whether ``info`` is small enough to be stored at all (``max_entry_bytes``)."""
        return estimated_bytes(info) <= self.max_entry_bytes

    # -- writing --------------------------------------------------------------------

    def listing(self) -> Listing:
        """An empty ``Listing`` with this store's budget, for ``replace``."""
        return Listing(self.max_bytes)

    def replace(self, listing: Listing) -> None:
        """Swap a list's namespaces in: whatever is not in it (deleted meanwhile) is gone."""
        with self._lock:
            self._items = listing.items
            self._bytes = listing.bytes
            self._removals += 1
            self._uncached = listing.uncached
            self._absent.clear()

    def put(self, info: NamespaceInfo) -> bool:
        """Store (or update) ``info`` if it fits; whether it did.

        A namespace that no longer fits leaves the store rather than stay as
        it was: a stale copy would be read as current.
        """
        cost = estimated_bytes(info)
        with self._lock:
            old = self._items.get(info.name)
            freed = estimated_bytes(old) if old is not None else 0
            fits = cost <= self.max_entry_bytes and self._bytes - freed + cost <= self.max_bytes
            if fits:
                self._items[info.name] = info
                self._bytes += cost - freed
                self._uncached.pop(info.name, None)
            else:
                if old is not None:
                    del self._items[info.name]
                    self._bytes -= freed
                    self._removals += 1
                _remember(self._uncached, info.name, None, MAX_UNCACHED_NAMES)
            self._absent.pop(info.name, None)
        return fits

    def put_uncached(self, name: str) -> None:
        """Note a namespace the watch delivered that cannot be stored at all (too large)."""
        with self._lock:
            old = self._items.pop(name, None)
            if old is not None:
                self._bytes -= estimated_bytes(old)
                self._removals += 1
            _remember(self._uncached, name, None, MAX_UNCACHED_NAMES)
            self._absent.pop(name, None)

    def remove(self, name: str) -> None:
        """Forget ``name``; counted as a removal even when it was not stored.

        A fetch of that name may be in flight, and must not bring it back.
        """
        with self._lock:
            old = self._items.pop(name, None)
            if old is not None:
                self._bytes -= estimated_bytes(old)
            self._removals += 1
            self._uncached.pop(name, None)

    def put_absent(self, name: str, *, now: float, seconds: float) -> bool:
        """Remember that a GET found ``name`` missing, for ``seconds``; whether it was noted.

        The mirror of ``put_fetched``'s rule: the watch is the authority on
        what exists, so the absence is not noted if the watch has delivered
        the name by now (stored or uncached): that GET was older than the
        creation. Delivered later, the name is dropped from here as it
        arrives (``put``).
        """
        with self._lock:
            if name in self._items or name in self._uncached:
                return False
            # Same lifetime for all, so the oldest noted are the first to expire.
            for old in list(self._absent):
                if self._absent[old] > now:
                    break
                del self._absent[old]
            _remember(self._absent, name, now + seconds, MAX_ABSENT_NAMES)
        return True

    def forget_absent(self) -> None:
        """Drop every remembered absence (the watch stopped: it may miss a creation)."""
        with self._lock:
            self._absent.clear()

    def put_fetched(self, info: NamespaceInfo, *, removals: int) -> bool:
        """Store a namespace read by a GET, if nothing says it may be gone by now; whether it was.

        ``removals`` is ``self.removals`` as read before the GET was sent. The
        watch is the authority on what exists; a fetch may only fill a gap it
        has not reached yet, never undo a removal. The GET's answer can be
        older than a deletion the watch applied while it was in flight, and
        resourceVersions are opaque strings that clients must not compare
        (API conventions), so the rule is by order of events instead: the
        answer is stored only if nothing was removed at all (no DELETED
        event, no relist) since before the GET was sent, and never over a copy
        the watch already holds (that one is as current, or its next event
        will make it so). A skipped insert costs one more GET on the next
        admission, or none once the watch delivers the namespace.
        """
        cost = estimated_bytes(info)
        with self._lock:
            self._absent.pop(info.name, None)  # it exists
            if cost > self.max_entry_bytes:
                return False
            if (
                self._removals == removals
                and info.name not in self._items
                and self._bytes + cost <= self.max_bytes
            ):
                self._items[info.name] = info
                self._bytes += cost
                return True
        return False

    def mark_synced(self, now: float) -> None:
        """Record that the store held everything the server had at ``now``."""
        self._synced_at = now
