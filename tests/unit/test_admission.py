"""webhook.service.admission without any server: envelope checks, answers, and the patch they carry.

``admit`` is async (it may read a namespace from the API server); these tests
drive it with ``asyncio.run`` and an in-memory lookup that records what was
fetched, so the fail-closed and re-read rules are checked without a network.
"""

from __future__ import annotations

import asyncio
import base64
import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import jsonpatch
import orjson
import pytest

from harness.validation import validate_injected
from tests.builders import enabled_namespace, namespace, replicaset_pod, review, review_bytes
from webhook.cluster.namespaces_file import NamespaceInfo, NamespaceUnavailable
from webhook.engine import NamespaceLike
from webhook.engine.config import InjectorConfig
from webhook.service import admission
from webhook.service.admission import BadRequest

CONFIG = InjectorConfig()
ENABLED = enabled_namespace()
UNLABELLED = namespace()


@dataclass
class Lookup:
    """An ``admission.NamespaceLookup`` in memory: a cache, a source, and a record of fetches."""

    cache: Mapping[str, NamespaceLike] = field(default_factory=dict)
    source: Mapping[str, NamespaceLike] | None = field(default_factory=dict)
    fetched: list[tuple[str, str]] = field(default_factory=list)

    def cached(self, name: str) -> NamespaceLike | None:
        return self.cache.get(name)

    async def fetch(self, name: str, *, reason: str) -> NamespaceLike | None:
        self.fetched.append((name, reason))
        if self.source is None:
            raise NamespaceUnavailable("connection refused")
        return self.source.get(name)


def admit(body: bytes, lookup: Lookup) -> admission.Reviewed:
    return asyncio.run(admission.admit(body, namespaces=lookup, config=CONFIG))


def answer(doc: dict[str, Any], namespace: NamespaceLike = ENABLED) -> admission.Reviewed:
    """The answer with ``namespace`` cached (and the same in the source)."""
    known = {namespace.name: namespace}
    return admit(orjson.dumps(doc), Lookup(cache=known, source=known))


def patch_of(response: Any) -> list[dict[str, Any]]:
    ops: list[dict[str, Any]] = orjson.loads(base64.b64decode(response["patch"]))
    return ops


# --- the envelope -------------------------------------------------------------------------

GOOD = orjson.dumps(review())


def _replace(path: str, value: Any) -> bytes:
    doc = review()
    node = doc
    *parents, last = path.split(".")
    for key in parents:
        node = node[key]
    if value is _DELETE:
        del node[last]
    else:
        node[last] = value
    return orjson.dumps(doc)


_DELETE = object()

BAD_BODIES = [
    pytest.param(b"", "request body is empty", id="empty"),
    pytest.param(b" \n\t", "request body is empty", id="whitespace only"),
    pytest.param(b'{"apiVersion": "\xff"}', "not valid UTF-8 (byte 16)", id="invalid UTF-8"),
    pytest.param(b"\xed\xa0\x80", "not valid UTF-8", id="a lone surrogate"),
    pytest.param(b'{"apiVersion": ', "not valid JSON", id="truncated JSON"),
    pytest.param(GOOD + b"}", "not valid JSON", id="trailing garbage"),
    pytest.param(b"[" * 100_000 + b"]" * 100_000, "nested too deeply", id="100k nested arrays"),
    pytest.param(
        b'{"a":' * 2000 + b"1" + b"}" * 2000, "nested too deeply", id="2000 nested objects"
    ),
    pytest.param(b"[]", "must be a JSON object, not an array", id="an array"),
    pytest.param(b'"review"', "must be a JSON object, not a string", id="a string"),
    pytest.param(b"null", "must be a JSON object, not null", id="null"),
    pytest.param(_replace("apiVersion", "v1"), "got apiVersion 'v1'", id="wrong apiVersion"),
    pytest.param(_replace("apiVersion", _DELETE), "got apiVersion null", id="no apiVersion"),
    pytest.param(_replace("kind", "Pod"), "kind 'Pod'", id="wrong kind"),
    pytest.param(_replace("request", _DELETE), "has no request", id="no request"),
    pytest.param(_replace("request", []), "request must be an object", id="request an array"),
    pytest.param(_replace("request.uid", _DELETE), "request.uid is missing", id="no uid"),
    pytest.param(_replace("request.uid", ""), "request.uid is missing or empty", id="empty uid"),
    pytest.param(_replace("request.uid", 7), "request.uid is missing", id="numeric uid"),
    pytest.param(
        _replace("request.object", []), "request.object must not be an array", id="object array"
    ),
    pytest.param(
        _replace("request.kind", "Pod"), "request.kind must not be a string", id="kind string"
    ),
    pytest.param(
        _replace("request.namespace", 3), "request.namespace must not be", id="namespace number"
    ),
    pytest.param(
        _replace("request.dryRun", "yes"), "request.dryRun must not be", id="dryRun string"
    ),
]


@pytest.mark.parametrize(("body", "message"), BAD_BODIES)
def test_a_bad_envelope_is_a_bad_request_with_a_one_line_message(body: bytes, message: str) -> None:
    with pytest.raises(BadRequest) as caught:
        admission.decode(body)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_a_create_of_a_pod_without_its_object_is_a_bad_request() -> None:
    with pytest.raises(BadRequest, match=r"request\.object is missing"):
        admit(_replace("request.object", None), Lookup(cache={"demo": ENABLED}))


def test_a_uid_of_257_bytes_is_refused_without_being_repeated() -> None:
    uid = "\u00e9" * 128 + "x"  # 129 characters, 257 bytes in UTF-8
    with pytest.raises(BadRequest) as caught:
        admission.decode(_replace("request.uid", uid))
    assert str(caught.value) == "request.uid is longer than 256 bytes"
    assert admission.decode(_replace("request.uid", "x" * 256))["request"]["uid"] == "x" * 256


@pytest.mark.parametrize("namespace", ["Demo", "a" * 64, "x/y", "demo\n", "-a"])
def test_a_pod_in_a_namespace_that_cannot_exist_is_a_bad_request(namespace: str) -> None:
    lookup = Lookup()
    with pytest.raises(BadRequest, match="not a valid namespace name"):
        admit(_replace("request.namespace", namespace), lookup)
    assert lookup.fetched == []


def test_a_body_with_too_many_values_is_refused_before_it_is_parsed() -> None:
    body = b"[" + b"[]," * admission.MAX_JSON_VALUES + b"[]]"
    with pytest.raises(BadRequest, match="more than 131072 JSON values"):
        admission.decode(body)


# --- namespaces: from memory, from the API server, or not at all --------------------------


def test_a_cached_namespace_is_not_fetched() -> None:
    lookup = Lookup(cache={"demo": ENABLED})
    assert admit(GOOD, lookup).code == "namespace-enabled"
    assert lookup.fetched == []


def test_a_namespace_missing_from_the_cache_is_fetched_once() -> None:
    lookup = Lookup(source={"demo": ENABLED})
    reviewed = admit(GOOD, lookup)
    assert reviewed.code == "namespace-enabled"
    assert lookup.fetched == [("demo", "miss")]


def test_a_namespace_the_api_server_does_not_know_has_no_labels() -> None:
    lookup = Lookup(source={})
    assert admit(GOOD, lookup).code == "not-enabled"
    assert lookup.fetched == [("demo", "miss")]


def test_an_unreadable_namespace_refuses_the_pod_with_503_naming_it() -> None:
    """Fail closed: without the namespace's labels the pod could lose its proxy."""
    reviewed = admit(GOOD, Lookup(source=None))
    response = reviewed.response
    assert response["allowed"] is False
    assert "patch" not in response
    status = response["status"]
    assert status["code"] == 503
    assert status["reason"] == "ServiceUnavailable"
    assert "namespace demo could not be read" in status["message"]
    assert "connection refused" in status["message"]
    assert reviewed.code == "namespace-unavailable"


DISABLED = namespace("demo", {"sidecar-injection": "disabled"})
# Cached labels that skip the pod: not opted in, or switched from disabled a moment ago.
STALE = [pytest.param(UNLABELLED, id="unlabelled"), pytest.param(DISABLED, id="disabled")]


@pytest.mark.parametrize("cached", STALE)
def test_a_namespace_cached_as_not_opted_in_is_read_again_and_a_new_label_counts(
    cached: NamespaceInfo,
) -> None:
    """The apiserver called us, so it saw the label; our cache has not yet."""
    lookup = Lookup(cache={"demo": cached}, source={"demo": ENABLED})
    reviewed = admit(GOOD, lookup)
    assert lookup.fetched == [("demo", "recheck")]
    assert reviewed.code == "namespace-enabled"
    assert "patch" in reviewed.response


def test_a_recheck_that_confirms_the_cache_skips_the_replicaset_pod() -> None:
    lookup = Lookup(cache={"demo": UNLABELLED}, source={"demo": UNLABELLED})
    reviewed = admit(GOOD, lookup)
    assert lookup.fetched == [("demo", "recheck")]
    assert reviewed.code == "not-enabled"
    assert reviewed.response == {"uid": review()["request"]["uid"], "allowed": True}


@pytest.mark.parametrize("cached", STALE)
def test_a_recheck_that_cannot_reach_the_api_server_fails_closed_too(
    cached: NamespaceInfo,
) -> None:
    lookup = Lookup(cache={"demo": cached}, source=None)
    reviewed = admit(GOOD, lookup)
    assert reviewed.response["status"]["code"] == 503
    assert reviewed.code == "namespace-unavailable"


INJECTED_STATUS = {
    "sidecar.mesh.io/status": '{"version":"0","initContainers":["mesh-init","mesh-proxy"]}'
}
# Pods no namespace label could get injected, each with the code it gets.
LABEL_FREE = [
    pytest.param("demo", replicaset_pod(spec={"hostNetwork": True}), "host-network", id="host network"),
    pytest.param("demo", replicaset_pod(spec={"os": {"name": "windows"}}), "windows-pod", id="windows"),
    pytest.param("demo", replicaset_pod(annotations={"kubernetes.io/config.mirror": "x"}), "mirror-pod", id="mirror"),
    pytest.param("kube-system", replicaset_pod(), "excluded-namespace", id="excluded namespace"),
    pytest.param("demo", replicaset_pod(annotations=INJECTED_STATUS, spec={"initContainers": [{"name": "mesh-init"}, {"name": "mesh-proxy"}]}), "already-injected", id="already injected"),
    pytest.param("demo", replicaset_pod(annotations={"sidecar.mesh.io/inject": "false"}), "pod-opted-out", id="opted out"),
]  # fmt: skip


@pytest.mark.parametrize(("namespace", "obj", "code"), LABEL_FREE)
def test_a_skip_no_label_can_change_is_final_cached_or_not_and_needs_no_read(
    namespace: str, obj: dict[str, Any], code: str
) -> None:
    # Cached as enabled: no recheck. Not cached, the API server down: still answered.
    for cache in ({namespace: NamespaceInfo(namespace, MappingProxyType(ENABLED.labels))}, {}):
        lookup = Lookup(cache=cache, source=None)
        reviewed = admit(review_bytes(obj, namespace=namespace), lookup)
        assert lookup.fetched == []
        assert reviewed.code == code
        assert reviewed.response == {"uid": review()["request"]["uid"], "allowed": True}


@pytest.mark.parametrize(
    "obj",
    [
        pytest.param(replicaset_pod(), id="plain pod"),
        pytest.param(replicaset_pod(annotations={"sidecar.mesh.io/inject": "true"}), id="opted in"),
        pytest.param(
            replicaset_pod(annotations={"sidecar.mesh.io/proxy-cpu-limit": "lots"}),
            id="bad setting",
        ),
    ],
)
def test_with_the_api_server_down_a_pod_whose_labels_matter_is_refused_with_503(
    obj: dict[str, Any],
) -> None:
    # Opted in: settings and Pod Security come from the labels. A bad setting:
    # a disabled namespace would skip the pod rather than refuse it.
    lookup = Lookup(source=None)
    reviewed = admit(review_bytes(obj, namespace="demo"), lookup)
    assert lookup.fetched == [("demo", "miss")]
    assert reviewed.response["status"]["code"] == 503
    assert reviewed.code == "namespace-unavailable"


def test_a_pod_that_opts_in_itself_needs_no_recheck() -> None:
    obj = replicaset_pod()
    obj["metadata"]["labels"]["sidecar.mesh.io/inject"] = "true"
    lookup = Lookup(cache={"demo": UNLABELLED}, source=None)
    assert admit(orjson.dumps(review(obj)), lookup).code == "pod-opted-in"
    assert lookup.fetched == []


def test_anything_but_a_pod_create_never_looks_a_namespace_up() -> None:
    lookup = Lookup(source=None)
    assert admit(orjson.dumps(review(operation="UPDATE")), lookup).code == "not-create"
    assert lookup.fetched == []


# --- answers ------------------------------------------------------------------------------


@pytest.mark.parametrize("api_version", ["admission.k8s.io/v1", "admission.k8s.io/v1beta1"])
def test_the_answer_echoes_api_version_kind_and_uid(api_version: str) -> None:
    reviewed = answer(review(api_version=api_version, uid="abc-123"))
    assert reviewed.review["apiVersion"] == api_version
    assert reviewed.review["kind"] == "AdmissionReview"
    assert reviewed.response["uid"] == "abc-123"
    assert reviewed.response["allowed"] is True
    assert reviewed.response["patchType"] == "JSONPatch"
    assert reviewed.code == "namespace-enabled"


@pytest.mark.parametrize(
    ("change", "code"),
    [
        pytest.param({"operation": "UPDATE"}, "not-create", id="UPDATE"),
        pytest.param({"operation": "DELETE", "obj": {}}, "not-create", id="DELETE"),
        pytest.param({"operation": "CONNECT"}, "not-create", id="CONNECT"),
        pytest.param(
            {
                "kind": {"group": "apps", "version": "v1", "kind": "Deployment"},
                "resource": {"group": "apps", "version": "v1", "resource": "deployments"},
            },
            "not-a-pod",
            id="a Deployment",
        ),
        pytest.param({"subResource": "binding"}, "not-a-pod", id="pods/binding"),
        pytest.param({"subResource": "ephemeralcontainers"}, "not-a-pod", id="pods/ephemeral"),
        pytest.param(
            {"kind": {"group": "example.com", "version": "v1", "kind": "Pod"}},
            "not-a-pod",
            id="a Pod of another API group",
        ),
    ],
)
def test_anything_but_a_pod_create_is_allowed_without_a_patch(
    change: dict[str, Any], code: str
) -> None:
    lookup = Lookup()
    reviewed = admit(orjson.dumps(review(**change)), lookup)
    assert reviewed.response == {"uid": review()["request"]["uid"], "allowed": True}
    assert reviewed.code == code
    assert lookup.fetched == []


def test_a_pod_in_an_unlabelled_namespace_is_allowed_unchanged_with_the_reason() -> None:
    reviewed = answer(review(), UNLABELLED)
    assert reviewed.response["allowed"] is True
    assert "patch" not in reviewed.response
    assert reviewed.code == "not-enabled"
    assert "not labelled" in reviewed.reason


def test_a_dry_run_gets_exactly_the_same_answer() -> None:
    real = answer(review())
    dry = answer(review(dryRun=True))
    assert dry.review == real.review


def test_the_patch_applies_and_gives_a_schema_valid_replicaset_pod() -> None:
    obj = replicaset_pod()
    reviewed = answer(review(obj))
    patched = jsonpatch.apply_patch(copy.deepcopy(obj), patch_of(reviewed.response))
    names = [c["name"] for c in patched["spec"]["containers"]]
    assert names == ["app"]
    assert [c["name"] for c in patched["spec"]["initContainers"]] == ["mesh-init", "mesh-proxy"]
    assert all(op["op"] == "add" for op in patch_of(reviewed.response))
    # kubernetes-validate wants a name; the apiserver derives it from generateName.
    validate_injected({**patched, "metadata": {**patched["metadata"], "name": "web-7d9f-x1"}})


def test_the_patch_is_the_engines_patch_for_that_namespace() -> None:
    from webhook.engine import inject

    obj = replicaset_pod()
    expected = inject(obj, namespace=ENABLED, config=CONFIG).patch
    assert patch_of(answer(review(obj)).response) == list(expected)


def test_a_refused_pod_is_denied_with_a_bad_request_status_naming_the_problem() -> None:
    obj = replicaset_pod()
    obj["spec"]["containers"].append({"name": "mesh-proxy", "image": "envoy"})
    reviewed = answer(review(obj))
    response = reviewed.response
    assert response["allowed"] is False
    assert "patch" not in response
    status = response["status"]
    assert status["code"] == 400
    assert status["reason"] == "BadRequest"
    assert status["status"] == "Failure"
    assert "mesh-proxy" in status["message"]
    assert reviewed.code == "refused"


def test_an_invalid_setting_is_refused_with_the_key_its_source_and_value() -> None:
    obj = replicaset_pod()
    obj["metadata"]["annotations"] = {"sidecar.mesh.io/proxy-cpu-request": "lots"}
    message = answer(review(obj)).response["status"]["message"]
    assert "proxy-cpu-request" in message
    assert "lots" in message
    assert "pod annotation" in message


def test_the_engines_warnings_are_returned() -> None:
    obj = replicaset_pod()
    obj["metadata"]["annotations"] = {"sidecar.mesh.io/inject": "maybe"}
    warnings = answer(review(obj)).response["warnings"]
    assert any("maybe" in w for w in warnings)


def test_the_pods_namespace_comes_from_the_request_then_the_pod_then_default() -> None:
    reviewed = answer(review())
    assert (reviewed.request.namespace, reviewed.request.name) == ("demo", "web-7d9f-")
    obj = replicaset_pod()
    obj["metadata"]["namespace"] = "shop"
    doc = review(obj)
    del doc["request"]["namespace"]
    lookup = Lookup(source={})
    assert admit(orjson.dumps(doc), lookup).request.namespace == "shop"
    del doc["request"]["object"]["metadata"]["namespace"]
    assert admit(orjson.dumps(doc), lookup).request.namespace == "default"
    assert lookup.fetched == [("shop", "miss"), ("default", "miss")]


def test_a_logged_pod_name_is_cut_to_kubernetes_length() -> None:
    obj = replicaset_pod()
    obj["metadata"]["generateName"] = "x" * 10_000
    assert len(answer(review(obj)).request.name) == 253


def test_the_response_constructors_have_the_wire_shape() -> None:
    assert admission.allowed("u") == {"uid": "u", "allowed": True}
    assert admission.denied("u", "no", warnings=["w"]) == {
        "uid": "u",
        "allowed": False,
        "status": {"status": "Failure", "code": 400, "reason": "BadRequest", "message": "no"},
        "warnings": ["w"],
    }
    ops = [{"op": "add", "path": "/metadata/labels", "value": {"a": "b"}}]
    done = admission.patched("u", ops)
    assert done["patchType"] == "JSONPatch"
    assert orjson.loads(base64.b64decode(done["patch"])) == ops


def test_what_a_log_line_says_about_a_request_stays_short_whatever_it_carries() -> None:
    doc = review(operation="X" * 100_000)
    doc["request"]["namespace"] = "n" * 100_000
    reviewed = admit(orjson.dumps(doc), Lookup())
    assert len(reviewed.request.operation) <= 16
    assert len(reviewed.request.namespace) <= 63
    assert len(reviewed.reason) < 100
