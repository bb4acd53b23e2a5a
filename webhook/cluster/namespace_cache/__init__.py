"""A watch-backed cache of the cluster's Namespaces, over ``webhook.cluster.kube``.

Admission must not make an API call per request, so the cache keeps a copy of
every Namespace's labels and (sidecar) annotations. As client-go's
``tools/cache``, it is small parts with one job each behind one facade:

- ``reflector``: one daemon thread that lists, then watches from the list's
  resourceVersion, resumes a broken watch where it stopped, lists again on
  "410 Gone", backs off (the streak ends only after a healthy period) and
  logs an outage in a few throttled lines;
- ``store``: what is known, bounded per namespace and in total, and since
  when (freshness);
- ``fetcher``: single-flight reads of one namespace the watch has not
  delivered yet, bounded in threads and in names, that never resurrect a
  namespace the watch deleted, and remember one found missing;
- ``arrivals``: who waits for the watch to deliver a namespace rather than
  reading it, and whether the watch is live;
- ``api``: the requests the reflector and the fetcher make, bounded in bytes
  and time;
- ``cache``: ``KubeNamespaceCache``, the facade admission sees (a
  ``WatchedSource``: it can be waited on), configured by
  one ``NamespaceCacheOptions`` (``options``, where the bounds and their
  reasons live).

Everything the API server sends is bounded, so a broken or hostile server
costs time, never the process: list pages of ``LIST_PAGE_SIZE`` namespaces
in at most ``MAX_LIST_PAGE_BYTES`` (a page over it is asked for again with a
quarter of the items), watch events and GET bodies of ``MAX_OBJECT_BYTES``, a
namespace of ``MAX_NAMESPACE_BYTES`` and a cache of ``MAX_CACHE_BYTES``
(what does not fit is read from the API server on each admission instead),
each request within its timeout, each kind of warning at most once per
``warn_every``. A compressed body (never asked for) is refused.
"""

from webhook.cluster.namespace_cache.cache import KubeNamespaceCache
from webhook.cluster.namespace_cache.options import (
    FETCH_THREADS,
    LIST_PAGE_SIZE,
    MAX_CACHE_BYTES,
    MAX_FETCHES_IN_FLIGHT,
    MAX_LIST_PAGE_BYTES,
    MAX_NAMESPACE_BYTES,
    MAX_OBJECT_BYTES,
    NamespaceCacheOptions,
)

__all__ = [
    "FETCH_THREADS",
    "LIST_PAGE_SIZE",
    "MAX_CACHE_BYTES",
    "MAX_FETCHES_IN_FLIGHT",
    "MAX_LIST_PAGE_BYTES",
    "MAX_NAMESPACE_BYTES",
    "MAX_OBJECT_BYTES",
    "KubeNamespaceCache",
    "NamespaceCacheOptions",
]
