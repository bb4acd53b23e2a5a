"""Events on the pod's owner, telling users why their pods were (not) injected.

``Injected``, ``InjectionSkipped`` and ``InjectionRefused`` (``events.k8s.io/v1``)
on the ReplicaSet, StatefulSet, DaemonSet or Job that owns the pod, counted
in series as client-go's event recorder counts them, written off the request
path by one sender thread through a bounded queue and a token bucket. Parts:

- ``model``: which admissions make an event, the owner, the note, the body;
- ``series``: series of equal occurrences and the writes they need;
- ``bucket``: the token bucket;
- ``recorder``: ``EventRecorder``, what ``/mutate`` hands its answers to,
  and its thread; ``NoEvents`` where there is no cluster (``make run``).

The writes themselves go through ``webhook.cluster.events_api``.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from webhook.service.events.model import instance_name
from webhook.service.events.recorder import EventOptions, EventRecorder
from webhook.service.metrics import Metrics

if TYPE_CHECKING:
    from webhook.service.admission import Reviewed

__all__ = ["EventOptions", "EventRecorder", "EventSink", "NoEvents", "recorder_from_environment"]


class EventSink(Protocol):
    """What the app needs of an event recorder: ``record`` on the request path, a lifetime."""

    def record(self, reviewed: Reviewed) -> None: ...

    def start(self) -> None: ...

    def stop(self) -> None: ...


class NoEvents:
    """No cluster to write Events to (a namespaces file, or no source at all)."""

    def record(self, reviewed: Reviewed) -> None:
        """Nothing to do."""

    def start(self) -> None:
        """Nothing to start."""

    def stop(self) -> None:
        """Nothing to stop."""


def recorder_from_environment(
    kubeconfig: Path | None,
    metrics: Metrics,
    *,
    in_cluster: bool | None = None,
    options: EventOptions | None = None,
) -> EventRecorder:
    """A recorder writing through the client configuration the namespace cache uses.

    Its ``reportingInstance`` is the injector's pod name: ``$POD_NAME`` (the
    Deployment sets it from the downward API), else the host name, which is
    the pod's name in a pod. Raises ``kube.ConfigurationError`` with one line.
    """
    # The kubernetes client is imported only where there is a cluster to talk to.
    from webhook.cluster.events_api import EventsAPI  # noqa: PLC0415

    writer = EventsAPI.from_environment(kubeconfig, in_cluster=in_cluster)
    instance = instance_name(os.environ.get("POD_NAME") or socket.gethostname())
    return EventRecorder(writer, metrics, instance=instance, options=options)
