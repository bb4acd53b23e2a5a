"""webhook.admission without any server: envelope checks, answers, and the patch they carry."""

from __future__ import annotations

import base64
import copy
from types import MappingProxyType
from typing import Any

import jsonpatch
import orjson
import pytest

from tests.support.validation import validate_injected
from webhook import admission
from webhook.admission import BadRequest
from webhook.config import InjectorConfig
from webhook.preview import AssumedNamespace

CONFIG = InjectorConfig()
ENABLED = AssumedNamespace("demo", MappingProxyType({"sidecar-injection": "enabled"}))
UNLABELLED = AssumedNamespace("legacy")


def pod(**extra: Any) -> dict[str, Any]:
    """A pod as the apiserver sends it for a ReplicaSet: generateName, no namespace."""
    body: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"generateName": "web-7d9f-", "labels": {"app": "web"}},
        "spec": {"containers": [{"name": "app", "image": "nginx:1.27"}]},
    }
    body.update(extra)
    return body


def review_doc(
    obj: Any = None,
    *,
    api_version: str = "admission.k8s.io/v1",
    operation: str = "CREATE",
    kind: dict[str, str] | None = None,
    resource: dict[str, str] | None = None,
    sub_resource: str | None = None,
    dry_run: bool = False,
    uid: str = "705ab4f5-6393-11e8-b7cc-42010a800002",
) -> dict[str, Any]:
    request: dict[str, Any] = {
        "uid": uid,
        "kind": kind or {"group": "", "version": "v1", "kind": "Pod"},
        "resource": resource or {"group": "", "version": "v1", "resource": "pods"},
        "namespace": "demo",
        "operation": operation,
        "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
        "object": pod() if obj is None else obj,
        "dryRun": dry_run,
    }
    if sub_resource is not None:
        request["subResource"] = sub_resource
    return {"apiVersion": api_version, "kind": "AdmissionReview", "request": request}


def answer(doc: dict[str, Any], namespace: Any = ENABLED, **kwargs: Any) -> admission.Reviewed:
    decoded = admission.decode(orjson.dumps(doc))
    return admission.review(decoded, namespace=namespace, config=CONFIG, **kwargs)


def patch_of(response: Any) -> list[dict[str, Any]]:
    ops: list[dict[str, Any]] = orjson.loads(base64.b64decode(response["patch"]))
    return ops


# --- the envelope -------------------------------------------------------------------------

GOOD = orjson.dumps(review_doc())


def _replace(path: str, value: Any) -> bytes:
    doc = review_doc()
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
    doc = admission.decode(_replace("request.object", None))
    with pytest.raises(BadRequest, match=r"request\.object is missing"):
        admission.review(doc, namespace=ENABLED, config=CONFIG)


# --- answers ------------------------------------------------------------------------------


@pytest.mark.parametrize("api_version", ["admission.k8s.io/v1", "admission.k8s.io/v1beta1"])
def test_the_answer_echoes_api_version_kind_and_uid(api_version: str) -> None:
    reviewed = answer(review_doc(api_version=api_version, uid="abc-123"))
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
        pytest.param({"sub_resource": "binding"}, "not-a-pod", id="pods/binding"),
        pytest.param({"sub_resource": "ephemeralcontainers"}, "not-a-pod", id="pods/ephemeral"),
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
    reviewed = answer(review_doc(**change), namespace=None)
    assert reviewed.response == {"uid": review_doc()["request"]["uid"], "allowed": True}
    assert reviewed.code == code
    assert not admission.is_pod_create(review_doc(**change)["request"])


def test_a_pod_in_an_unlabelled_namespace_is_allowed_unchanged_with_the_reason() -> None:
    reviewed = answer(review_doc(), namespace=UNLABELLED)
    assert reviewed.response["allowed"] is True
    assert "patch" not in reviewed.response
    assert reviewed.code == "not-enabled"
    assert "not labelled" in reviewed.reason


def test_a_dry_run_gets_exactly_the_same_answer() -> None:
    real = answer(review_doc())
    dry = answer(review_doc(dry_run=True))
    assert dry.review == real.review


def test_the_patch_applies_and_gives_a_schema_valid_pod() -> None:
    obj = pod()
    reviewed = answer(review_doc(obj))
    patched = jsonpatch.apply_patch(copy.deepcopy(obj), patch_of(reviewed.response))
    names = [c["name"] for c in patched["spec"]["containers"]]
    assert names == ["app"]
    assert [c["name"] for c in patched["spec"]["initContainers"]] == ["mesh-init", "mesh-proxy"]
    assert all(op["op"] == "add" for op in patch_of(reviewed.response))
    # kubernetes-validate wants a name; the apiserver derives it from generateName.
    validate_injected({**patched, "metadata": {**patched["metadata"], "name": "web-7d9f-x1"}})


def test_the_patch_is_the_engines_patch_for_that_namespace() -> None:
    from webhook.engine import inject

    obj = pod()
    expected = inject(obj, namespace=ENABLED, config=CONFIG).patch
    assert patch_of(answer(review_doc(obj)).response) == list(expected)


def test_a_refused_pod_is_denied_with_a_bad_request_status_naming_the_problem() -> None:
    obj = pod()
    obj["spec"]["containers"].append({"name": "mesh-proxy", "image": "envoy"})
    reviewed = answer(review_doc(obj))
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
    obj = pod()
    obj["metadata"]["annotations"] = {"sidecar.mesh.io/proxy-cpu-request": "lots"}
    message = answer(review_doc(obj)).response["status"]["message"]
    assert "proxy-cpu-request" in message
    assert "lots" in message
    assert "pod annotation" in message


def test_warnings_from_the_caller_and_the_engine_are_both_returned() -> None:
    obj = pod()
    obj["metadata"]["annotations"] = {"sidecar.mesh.io/inject": "maybe"}
    reviewed = answer(review_doc(obj), warnings=["namespace demo could not be read"])
    warnings = reviewed.response["warnings"]
    assert warnings[0] == "namespace demo could not be read"
    assert any("maybe" in w for w in warnings[1:])


def test_the_pods_namespace_comes_from_the_request_not_the_pod() -> None:
    request = review_doc()["request"]
    assert admission.target_namespace(request) == "demo"
    assert admission.pod_name(request) == "web-7d9f-"
    del request["namespace"]
    assert admission.target_namespace(request) == "default"


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


def test_admission_is_framework_free_and_only_the_app_imports_fastapi() -> None:
    import ast
    import subprocess
    import sys
    from pathlib import Path

    code = (
        "import sys, webhook.admission, webhook.wire\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in {'fastapi', 'starlette', 'uvicorn'}))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert loaded == "[]"
    package = Path(admission.__file__).parent
    importers = set()
    for path in package.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [alias.name for alias in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            if any(name.split(".")[0] == "fastapi" for name in names):
                importers.add(path.relative_to(package).as_posix())
    assert importers == {"app.py"}
