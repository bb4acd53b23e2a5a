"""One fake kube-apiserver for every test that needs an API server it can script.

A real HTTP server on 127.0.0.1, in the test's own process, so the official
``kubernetes`` client (and ``check``'s own client) make real requests and no
part of them is patched. Built in: the Namespace endpoints with list, watch
and get as kube-apiserver serves them (:mod:`.namespaces`). Anything else is
a route: a path prefix and a handler (:meth:`FakeKubeAPI.route`), with
ready-made handlers for slow, huge, endless, forbidden and review answers
(:mod:`.handlers`).
"""

from harness.fake_kube_api import handlers
from harness.fake_kube_api.namespaces import GoneAs
from harness.fake_kube_api.server import Call, FakeKubeAPI, Handler, Request
from harness.fake_kube_api.wire import CannedReply, status

__all__ = [
    "Call",
    "CannedReply",
    "FakeKubeAPI",
    "GoneAs",
    "Handler",
    "Request",
    "handlers",
    "status",
]
