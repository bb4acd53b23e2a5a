"""How the namespace cache is bounded and timed: the bounds with their reasons, and its options.

The defaults suit a cluster; tests shrink the timings so that a whole file runs
in seconds. Everything the API server sends is bounded here, so that a broken
or hostile server costs time, never the process.
"""

from __future__ import annotations

from dataclasses import dataclass

_KiB = 1024
_MiB = 1024 * _KiB

# As client-go's reflector pages its lists.
LIST_PAGE_SIZE = 500
# A list page over this is asked for again with a quarter of the items, down
# to one namespace per page (kube.paged): large namespaces cost requests, not memory.
MAX_LIST_PAGE_BYTES = 8 * _MiB
# A watch event or a GET body; etcd stores at most 1.5 MiB per object by default.
MAX_OBJECT_BYTES = 4 * _MiB
# One cached namespace (labels and sidecar annotations, estimated), and the
# whole cache (over 20,000 ordinary namespaces). What does not fit is read from
# the API server on each admission instead.
MAX_NAMESPACE_BYTES = 64 * _KiB
MAX_CACHE_BYTES = 32 * _MiB
# Distinct namespaces being fetched at once, and the GETs that may run at
# once: a burst of new namespaces (or /preview?namespace= calls) neither
# queues without end nor opens a connection each.
MAX_FETCHES_IN_FLIGHT = 64
# Eight, so that a client at its own bound on reads (four at once, see
# webhook.service.namespace_lookup) leaves half of them to the others.
FETCH_THREADS = 8

# Reviews waiting at once for the watch to deliver a namespace it does not
# know yet (each holds a connection, and the server has about 1,000).
MAX_ARRIVAL_WAITERS = 2048
# A name a GET found missing is not read again for this long, while the watch
# is live; a review naming it waits for the watch, and is refused (fail
# closed) if the watch does not deliver it either.
ABSENT_SECONDS = 10.0
# Names remembered as missing, and names of namespaces that exist but are not
# cached (too large, or past the cache's budget): each set at most this many,
# the oldest forgotten first.
MAX_ABSENT_NAMES = 4096
MAX_UNCACHED_NAMES = 16_384

# How long a watch may stay silent before it counts as a dead connection (a
# half-open TCP connection after a node or network change never says so).
#
# Bookmarks alone cannot bound the silence: kube-apiserver's watch cache sends
# a BOOKMARK only when it has one newer than the resourceVersion the watch
# started from, so while no Namespace changes a watch may get no event at all
# for its whole life (docs/e2e.md, "What the tests prove", has the observations
# behind this and the test that keeps checking them).
#
# What does bound it is the watch's own timeout: the server ends the stream
# cleanly at timeoutSeconds. So each watch asks for a timeout below the read
# timeout (WATCH_TIMEOUT_SECONDS to 1.8 times it, 45-81 s): a healthy watch,
# quiet or not, always ends or speaks within 81 s, and 90 s of silence means
# the connection is gone. (The client's TCP keepalive drops a peer that stops
# answering, but not a proxy that keeps the TCP session up while the watch
# behind it is gone.) The price is a watch request every minute or so per
# replica, from the watch cache, against a relist or a stale cache.
READ_TIMEOUT_SECONDS = 90.0
# The shortest server-side watch timeout; each watch asks for a random one in
# [t, 1.8 t), capped below the read timeout, so replicas do not renew in step.
WATCH_TIMEOUT_SECONDS = 45.0


@dataclass(frozen=True, slots=True, kw_only=True)
class NamespaceCacheOptions:
    """Timings and bounds of one ``KubeNamespaceCache``; the defaults suit a cluster.

    The watch (``Reflector``):

    - ``watch_timeout_seconds``: the shortest server-side watch timeout. Each
      watch asks for a random value between it and 1.8 times it, never above
      0.9 ``read_timeout``, so that a healthy quiet watch ends before it could
      look dead and many replicas do not renew their watches in lockstep.
    - ``read_timeout``: how long a watch may be silent before it is abandoned
      and resumed.
    - ``list_timeout``: each list page, from request to last byte.
    - ``list_page_size``: namespaces asked for per list page.
    - ``backoff_initial``, ``backoff_max``: the retry delay after a first
      failure and its cap (doubling in between, with jitter).
    - ``healthy_after``: how long without a failure ends a backoff streak
      (never less than twice ``backoff_max``).
    - ``warn_every``: each kind of warning (failures, recovery, relists,
      malformed or oversized namespaces, a full cache) at most this often.

    The reads of one namespace (``Fetcher``):

    - ``fetch_timeout``: ``fetch`` answers within it, whatever the server does.
    - ``fetch_threads``: GETs that may run at once.
    - ``max_fetches_in_flight``: distinct namespaces being read at once;
      a fetch of one more is refused rather than queued.

    Waiting for the watch instead (``Arrivals``, ``KubeNamespaceCache.on_arrival``):

    - ``max_arrival_waiters``: how many may wait at once; more read at once.
    - ``absent_seconds``: how long a name a GET found missing is remembered.

    The rest: ``connect_timeout`` for every request, ``stop_timeout`` for
    joining the watch thread in ``stop()``, ``max_cache_bytes`` for what the
    store may hold (estimated).
    """

    watch_timeout_seconds: float = WATCH_TIMEOUT_SECONDS
    read_timeout: float = READ_TIMEOUT_SECONDS
    list_timeout: float = 30.0
    list_page_size: int = LIST_PAGE_SIZE
    backoff_initial: float = 0.5
    backoff_max: float = 30.0
    healthy_after: float = 60.0
    warn_every: float = 60.0
    fetch_timeout: float = 2.0
    fetch_threads: int = FETCH_THREADS
    max_fetches_in_flight: int = MAX_FETCHES_IN_FLIGHT
    max_arrival_waiters: int = MAX_ARRIVAL_WAITERS
    absent_seconds: float = ABSENT_SECONDS
    connect_timeout: float = 5.0
    stop_timeout: float = 2.0
    max_cache_bytes: int = MAX_CACHE_BYTES
