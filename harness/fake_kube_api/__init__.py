"""One fake kube-apiserver for every test that needs an API server it can script.

A real HTTP server on 127.0.0.1, in the test's own process, so the official
``kubernetes`` client (and ``check``'s own client) make real requests and no
part of them is patched. Built in: ``/version``, and the Namespace endpoints
with list, watch and get as kube-apiserver serves them (:mod:`.namespaces`).
Anything else is a route: a path prefix and a handler
(:meth:`FakeKubeAPI.route`), with ready-made handlers for slow, huge,
endless, unframed, forbidden and review answers (:mod:`.handlers`), a
store of plain objects by path (:class:`.objects.ObjectStore`), and the
Events API's writes (:class:`.events.EventStore`).
"""

from harness.fake_kube_api import events, handlers
from harness.fake_kube_api.events import EventStore
from harness.fake_kube_api.namespaces import GoneAs
from harness.fake_kube_api.objects import ObjectStore
from harness.fake_kube_api.server import Call, FakeKubeAPI, Handler, Request
from harness.fake_kube_api.wire import CannedReply, status, version_info

__all__ = [
    "Call",
    "CannedReply",
    "EventStore",
    "FakeKubeAPI",
    "GoneAs",
    "Handler",
    "ObjectStore",
    "Request",
    "events",
    "handlers",
    "status",
    "version_info",
]
