"""What an admission says in an Event: the owner it is about, the reason, the note, the body.

Pure: plain values in, plain values and dicts out, no clock of its own (the
caller passes the times), so the series and the recorder can be tested
without an API server.

Which admissions make an event (:func:`occurrence`):

- ``Injected`` (Normal): the pod got the patch;
- ``InjectionSkipped`` (Normal): a skip the webhook decided from the pod
  itself or the injector's config (``LABEL_FREE_SKIPS``: host network,
  Windows, mirror pod, excluded namespace, already injected, opted out by
  annotation). Skips decided by the namespace's labels make none: that
  namespace has not opted in, so nobody there expects a sidecar, and its
  pods only reach the webhook when they opt in themselves;
- ``InjectionRefused`` (Warning): every refusal, with its message (which the
  pod's creator, a controller, also sees; the user sees its FailedCreate).

Only pods with a controlling owner of a kind users look at (``ReplicaSet``,
``StatefulSet``, ``DaemonSet``, ``Job``) get one, on that owner: a bare pod's
creator sees the answer itself. The owner is the one the pod's
``ownerReferences`` names with ``controller: true``, as the pod's creator
wrote it: the API server validates owner references only after admission,
so a name that is not a valid object name is ignored here.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

from webhook.contract import constants
from webhook.engine import LABEL_FREE_SKIPS
from webhook.engine.values import escape_controls

REPORTING_CONTROLLER: Final = "sidecar.mesh.io/injector"
# What the injector did to the pod, the same for all three reasons.
ACTION: Final = "InjectSidecar"
INJECTED: Final = "Injected"
SKIPPED: Final = "InjectionSkipped"
REFUSED: Final = "InjectionRefused"
Reason = Literal["Injected", "InjectionSkipped", "InjectionRefused"]
EventType = Literal["Normal", "Warning"]

# The Events API's own limits (events.k8s.io/v1 validation): a note of at
# most 1 KiB, a reportingInstance of at most 128 characters.
MAX_NOTE_BYTES: Final = 1024
MAX_INSTANCE_CHARS: Final = 128

# (API group, kind) of the owners that get events.
OWNER_KINDS: Final = frozenset(
    {("apps", "ReplicaSet"), ("apps", "StatefulSet"), ("apps", "DaemonSet"), ("batch", "Job")}
)
# Object names: DNS subdomains (RFC 1123), as the API server requires of
# ReplicaSets, StatefulSets, DaemonSets and Jobs.
MAX_NAME_CHARS: Final = 253
_NAME: Final = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_UID: Final = re.compile(r"[0-9A-Za-z][-0-9A-Za-z]{0,127}")
_API_VERSION: Final = re.compile(r"[a-z0-9.-]{1,253}/[a-z0-9]{1,32}")
# An Event's name: the owner's name, a dot, the time in hex nanoseconds (as
# client-go names them); the owner's part is cut to keep the whole a name.
_TIME_SUFFIX_CHARS: Final = 17


@dataclass(frozen=True, slots=True)
class Owner:
    """The pod's controlling owner: what the Event is about (``regarding``)."""

    api_version: str
    kind: str
    name: str
    namespace: str
    uid: str | None = None

    def reference(self) -> dict[str, str]:
        """The Event's ``regarding``."""
        ref = {
            "apiVersion": self.api_version,
            "kind": self.kind,
            "name": self.name,
            "namespace": self.namespace,
        }
        if self.uid is not None:
            ref["uid"] = self.uid
        return ref


def controller_owner(obj: Mapping[str, Any], namespace: str) -> Owner | None:
    """The owner of a pod being admitted that gets its events, or ``None``.

    The ``ownerReferences`` entry with ``controller: true`` when its kind is
    one of ``OWNER_KINDS`` and its name a valid object name. Cheap: this runs
    for every review.
    """
    meta = obj.get("metadata")
    refs = meta.get("ownerReferences") if isinstance(meta, dict) else None
    if not isinstance(refs, list):
        return None
    for ref in refs:
        if isinstance(ref, dict) and ref.get("controller") is True:
            return _owner(ref, namespace)
    return None


def _owner(ref: Mapping[str, Any], namespace: str) -> Owner | None:
    api_version, kind, name, uid = (
        ref.get("apiVersion"),
        ref.get("kind"),
        ref.get("name"),
        ref.get("uid"),
    )
    if not (isinstance(api_version, str) and isinstance(kind, str) and isinstance(name, str)):
        return None
    if _API_VERSION.fullmatch(api_version) is None:
        return None
    if (api_version.partition("/")[0], kind) not in OWNER_KINDS:
        return None
    if len(name) > MAX_NAME_CHARS or _NAME.fullmatch(name) is None:
        return None
    kept_uid = uid if isinstance(uid, str) and _UID.fullmatch(uid) else None
    return Owner(api_version, kind, name, namespace, kept_uid)


@dataclass(frozen=True, slots=True)
class Occurrence:
    """One admission worth an event; equal occurrences form one series (one Event)."""

    owner: Owner
    reason: Reason
    type: EventType
    note: str


def occurrence(
    owner: Owner | None, *, code: str, allowed: bool, patched: bool, message: str
) -> Occurrence | None:
    """What an admission of a pod owned by ``owner`` says in an Event, or ``None``.

    ``code`` and ``message`` are the review's decision code and reason (the
    refusal's message when not ``allowed``).
    """
    if owner is None:
        return None
    if not allowed:
        return Occurrence(owner, REFUSED, "Warning", note_text(message))
    if patched:
        added = f"{constants.PROXY_CONTAINER} and {constants.INIT_CONTAINER}"
        return Occurrence(owner, INJECTED, "Normal", note_text(f"{added} injected: {message}"))
    if code in LABEL_FREE_SKIPS:
        return Occurrence(owner, SKIPPED, "Normal", note_text(f"not injected: {message}"))
    return None


def note_text(text: str) -> str:
    """``text`` as a note: what a terminal acts on escaped (``kubectl describe`` prints it),
    then cut to the API's 1 KiB, counted in UTF-8 bytes as the API server counts."""
    shown = escape_controls(" ".join(text.split()))
    data = shown.encode()
    if len(data) <= MAX_NOTE_BYTES:
        return shown
    # Cut at a character boundary, leaving room for the mark that says so.
    return data[: MAX_NOTE_BYTES - 3].decode(errors="ignore") + "..."


def instance_name(name: str) -> str:
    """A ``reportingInstance`` (the injector's pod name) within the API's 128 characters."""
    shown = escape_controls(name.strip()) or "sidecar-injector"
    return shown[:MAX_INSTANCE_CHARS]


def event_name(owner: str, nanoseconds: int) -> str:
    """A new Event's name: ``<owner>.<hex time>``, a valid object name of at most 253."""
    keep = owner[: MAX_NAME_CHARS - _TIME_SUFFIX_CHARS].rstrip("-.")
    return f"{keep}.{nanoseconds:x}"


def micro_time(seconds: float) -> str:
    """A ``MicroTime`` (RFC 3339, microseconds, UTC) for a Unix time."""
    moment = datetime.datetime.fromtimestamp(seconds, tz=datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def event_body(
    found: Occurrence,
    *,
    name: str,
    instance: str,
    first_seen: float,
    count: int,
    last_seen: float,
) -> dict[str, Any]:
    """The Event to create: ``count`` occurrences, the first at ``first_seen`` (Unix time).

    From the second occurrence on, the Event carries its ``series`` as
    client-go's event recorder writes it.
    """
    event: dict[str, Any] = {
        "apiVersion": "events.k8s.io/v1",
        "kind": "Event",
        "metadata": {"name": name, "namespace": found.owner.namespace},
        "eventTime": micro_time(first_seen),
        "reportingController": REPORTING_CONTROLLER,
        "reportingInstance": instance,
        "action": ACTION,
        "reason": found.reason,
        "regarding": found.owner.reference(),
        "note": found.note,
        "type": found.type,
    }
    if count > 1:
        event["series"] = series_of(count, last_seen)
    return event


def series_of(count: int, last_seen: float) -> dict[str, Any]:
    """An Event's ``series``: how many times so far, and the last (Unix time)."""
    return {"count": count, "lastObservedTime": micro_time(last_seen)}
