"""What an admission says in an Event: the owner, the reason, the note, the body; the bucket.

The Event body is checked against the Events API's own validation rules
(events.k8s.io/v1): a note of at most 1 KiB, names that are object names,
reportingController a qualified name, action and reason at most 128
characters, ``series.count`` at least 2.
"""

from __future__ import annotations

import re

import pytest

from tests.builders import replicaset_pod
from webhook.service.events.bucket import TokenBucket
from webhook.service.events.model import (
    ACTION,
    MAX_NOTE_BYTES,
    REPORTING_CONTROLLER,
    Occurrence,
    Owner,
    controller_owner,
    event_body,
    event_name,
    instance_name,
    micro_time,
    note_text,
    occurrence,
)

RS = Owner("apps/v1", "ReplicaSet", "web-7d9f", "shop", "0b7e4a8c-1111-2222-3333-444455556666")
DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
QUALIFIED_NAME = re.compile(r"([a-z0-9.-]+/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?")
MICRO_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")


def _pod(*refs: dict[str, object]) -> dict[str, object]:
    return replicaset_pod(ownerReferences=list(refs))


def _ref(kind: str = "ReplicaSet", name: str = "web-7d9f", **more: object) -> dict[str, object]:
    api = "batch/v1" if kind == "Job" else "apps/v1"
    return {"apiVersion": api, "kind": kind, "name": name, "uid": "u-1", "controller": True} | more


# --- the owner --------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["ReplicaSet", "StatefulSet", "DaemonSet", "Job"])
def test_the_controlling_owner_of_each_kind_users_look_at_gets_the_events(kind: str) -> None:
    owner = controller_owner(_pod(_ref(kind)), "shop")
    assert owner is not None
    assert (owner.kind, owner.name, owner.namespace, owner.uid) == (kind, "web-7d9f", "shop", "u-1")


def test_a_bare_pod_has_no_owner_to_tell() -> None:
    assert controller_owner({"metadata": {"name": "web"}}, "shop") is None
    assert controller_owner({}, "shop") is None
    assert controller_owner({"metadata": "nonsense"}, "shop") is None


def test_only_the_reference_marked_controller_counts() -> None:
    pod = _pod(_ref(name="not-me", controller=False), _ref(name="me"))
    owner = controller_owner(pod, "shop")
    assert owner is not None
    assert owner.name == "me"
    assert controller_owner(_pod(_ref(controller=False)), "shop") is None


@pytest.mark.parametrize(
    "ref",
    [
        _ref(kind="Node", name="node-1"),  # a mirror pod's owner
        _ref(kind="Deployment"),  # never a pod's direct owner
        _ref(name="Not_A_Name"),
        _ref(name="x" * 254),
        _ref(name=""),
        _ref(apiVersion="example.com/v1"),
        _ref(apiVersion=None),
        _ref(name=7),
        {"controller": True},
    ],
)
def test_an_owner_that_is_not_an_object_users_look_at_gets_nothing(
    ref: dict[str, object],
) -> None:
    assert controller_owner(_pod(ref), "shop") is None


def test_a_uid_that_is_not_one_is_left_out_rather_than_echoed() -> None:
    owner = controller_owner(_pod(_ref(uid="\x1b[31m" + "u" * 300)), "shop")
    assert owner is not None
    assert owner.uid is None
    assert "uid" not in owner.reference()


# --- which admissions say what ----------------------------------------------------------


def test_an_injected_pod_says_injected_and_why() -> None:
    found = occurrence(
        RS, code="namespace-enabled", allowed=True, patched=True, message="namespace shop is on"
    )
    assert found == Occurrence(
        RS, "Injected", "Normal", "mesh-proxy and mesh-init injected: namespace shop is on"
    )


@pytest.mark.parametrize(
    "code",
    ["host-network", "windows-pod", "mirror-pod", "excluded-namespace", "already-injected",
     "pod-opted-out"],
)  # fmt: skip
def test_skips_the_webhook_decides_from_the_pod_or_the_config_say_so(code: str) -> None:
    found = occurrence(RS, code=code, allowed=True, patched=False, message="the reason")
    assert found is not None
    assert (found.reason, found.type, found.note) == (
        "InjectionSkipped",
        "Normal",
        "not injected: the reason",
    )


@pytest.mark.parametrize("code", ["not-enabled", "namespace-disabled", "not-create", "not-a-pod"])
def test_namespaces_that_did_not_opt_in_and_other_reviews_get_no_event(code: str) -> None:
    assert occurrence(RS, code=code, allowed=True, patched=False, message="x") is None


def test_a_refusal_is_a_warning_carrying_the_message() -> None:
    message = "Pod web-7d9f-: pod annotation sidecar.mesh.io/log-level='loud' is invalid"
    found = occurrence(RS, code="refused", allowed=False, patched=False, message=message)
    assert found == Occurrence(RS, "InjectionRefused", "Warning", message)
    unavailable = occurrence(
        RS, code="namespace-unavailable", allowed=False, patched=False, message="cannot read"
    )
    assert unavailable is not None
    assert unavailable.reason == "InjectionRefused"


def test_no_owner_no_event() -> None:
    assert occurrence(None, code="refused", allowed=False, patched=False, message="x") is None


# --- the note ---------------------------------------------------------------------------


def test_notes_escape_what_a_terminal_acts_on_and_keep_one_line() -> None:
    assert note_text("bad \x1b[2J value\nnext\u202eline") == "bad \\x1b[2J value next\\u202eline"


def test_a_long_note_is_cut_to_the_apis_kibibyte_in_bytes_at_a_character_boundary() -> None:
    for text in ("x" * 5000, "é" * 5000, "€" * 5000, "a" + "😀" * 2000):
        note = note_text(text)
        assert len(note.encode()) <= MAX_NOTE_BYTES
        assert note.endswith("...")
        note.encode().decode()  # whole characters only
    assert note_text("y" * MAX_NOTE_BYTES) == "y" * MAX_NOTE_BYTES


def test_the_reporting_instance_is_the_pods_name_within_128_characters() -> None:
    assert instance_name("sidecar-injector-5d8f-abcde") == "sidecar-injector-5d8f-abcde"
    assert len(instance_name("p" * 300)) == 128
    assert instance_name("  ") == "sidecar-injector"
    assert "\x1b" not in instance_name("evil\x1b[0m")


# --- the Event --------------------------------------------------------------------------


def test_an_event_has_every_field_the_events_api_requires_within_its_limits() -> None:
    found = Occurrence(RS, "Injected", "Normal", "mesh-proxy and mesh-init injected: because")
    body = event_body(
        found,
        name=event_name(RS.name, 1_700_000_000_123_456_789),
        instance="sidecar-injector-abc",
        first_seen=1_700_000_000.5,
        count=1,
        last_seen=1_700_000_000.5,
    )
    assert body["apiVersion"] == "events.k8s.io/v1"
    assert body["kind"] == "Event"
    assert body["metadata"]["namespace"] == "shop" == body["regarding"]["namespace"]
    assert DNS_SUBDOMAIN.fullmatch(body["metadata"]["name"])
    assert body["metadata"]["name"].startswith("web-7d9f.")
    assert MICRO_TIME.fullmatch(body["eventTime"])
    assert QUALIFIED_NAME.fullmatch(body["reportingController"])
    assert body["reportingController"] == REPORTING_CONTROLLER
    assert body["reportingInstance"] == "sidecar-injector-abc"
    assert body["action"] == ACTION
    assert len(ACTION) <= 128
    assert body["reason"] == "Injected"
    assert body["type"] == "Normal"
    assert body["regarding"] == {
        "apiVersion": "apps/v1",
        "kind": "ReplicaSet",
        "name": "web-7d9f",
        "namespace": "shop",
        "uid": RS.uid,
    }
    assert "series" not in body  # a single occurrence has none


def test_repeats_are_a_series_of_at_least_two_with_the_last_time() -> None:
    found = Occurrence(RS, "InjectionRefused", "Warning", "no")
    body = event_body(found, name="n", instance="i", first_seen=10.0, count=7, last_seen=70.25)
    assert body["series"] == {"count": 7, "lastObservedTime": "1970-01-01T00:01:10.250000Z"}
    assert body["eventTime"] == micro_time(10.0) == "1970-01-01T00:00:10.000000Z"


def test_event_names_stay_valid_object_names_for_the_longest_owner_names() -> None:
    for owner in ("a" * 253, "a" * 235 + "-" + "b" * 17, "a" * 236 + ".b", "web"):
        name = event_name(owner, 2**63 - 1)
        assert len(name) <= 253
        assert DNS_SUBDOMAIN.fullmatch(name), name


# --- the token bucket -------------------------------------------------------------------


def test_the_bucket_starts_full_and_then_gives_tokens_at_its_rate() -> None:
    bucket = TokenBucket(rate=5.0, burst=3, now=100.0)
    assert [bucket.take(100.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take(100.0) == pytest.approx(0.2)  # one token in 1/5 s
    assert bucket.take(100.1) == pytest.approx(0.1)
    assert bucket.take(100.2) == 0.0
    assert bucket.take(100.2) == pytest.approx(0.2)


def test_the_bucket_saves_up_no_more_than_its_burst() -> None:
    bucket = TokenBucket(rate=5.0, burst=3, now=0.0)
    for _ in range(3):
        bucket.take(0.0)
    assert bucket.available(3600.0) == 3.0
    assert [bucket.take(3600.0) for _ in range(4)][-1] > 0


def test_a_clock_going_back_never_adds_tokens() -> None:
    bucket = TokenBucket(rate=1.0, burst=1, now=10.0)
    bucket.take(10.0)
    assert bucket.take(5.0) > 0
    assert bucket.available(10.0) == 0.0


@pytest.mark.parametrize(("rate", "burst"), [(0.0, 1), (-1.0, 1), (float("nan"), 1), (1.0, 0)])
def test_a_bucket_that_could_never_give_a_token_is_refused(rate: float, burst: int) -> None:
    with pytest.raises(ValueError, match="positive rate"):
        TokenBucket(rate=rate, burst=burst, now=0.0)
