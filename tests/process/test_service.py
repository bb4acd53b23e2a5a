"""The HTTPS service as kube-apiserver and curl users meet it: one real ``serve`` process.

Everything goes over verified TLS to a process started from the console
script; nothing inside the server is mocked or patched.
"""

from __future__ import annotations

import copy
import socket
import ssl
from collections.abc import Iterable
from typing import Any

import jsonpatch
import orjson
import pytest
import yaml

from harness.server import Server, WebhookClient
from harness.tls_client import client_context, connect
from harness.validation import validate_injected
from tests.builders import UID, pod, replicaset_pod, review
from tests.process.calls import decoded_patch, mutate, preview

MAX_BODY = 7 * 1024 * 1024


def assert_still_serving(client: WebhookClient) -> None:
    answer = mutate(client, review(uid="still-serving"))
    assert answer["response"]["uid"] == "still-serving"
    assert answer["response"]["allowed"] is True


# --- /mutate ------------------------------------------------------------------------------


@pytest.mark.parametrize("api_version", ["admission.k8s.io/v1", "admission.k8s.io/v1beta1"])
def test_a_pod_create_is_answered_with_a_patch_that_applies_to_a_valid_pod(
    client: WebhookClient, api_version: str
) -> None:
    obj = replicaset_pod()
    answer = mutate(client, review(obj, api_version=api_version, uid=f"uid-{api_version}"))
    assert answer["apiVersion"] == api_version
    assert answer["kind"] == "AdmissionReview"
    response = answer["response"]
    assert response["uid"] == f"uid-{api_version}"
    assert response["allowed"] is True
    assert response["patchType"] == "JSONPatch"
    patched = jsonpatch.apply_patch(copy.deepcopy(obj), decoded_patch(answer))
    assert [c["name"] for c in patched["spec"]["initContainers"]] == ["mesh-init", "mesh-proxy"]
    patched["metadata"]["name"] = "web-x7k2p"  # what the apiserver makes of generateName
    validate_injected(patched)


def test_a_pod_in_a_namespace_without_the_label_is_allowed_unchanged(client: WebhookClient) -> None:
    response = mutate(client, review(namespace="legacy"))["response"]
    assert response["allowed"] is True
    assert "patch" not in response


def test_a_refused_pod_is_an_answer_not_an_http_error(client: WebhookClient) -> None:
    obj = pod(annotations={"sidecar.mesh.io/proxy-memory-limit": "a lot"})
    response = mutate(client, review(obj))["response"]
    assert response["allowed"] is False
    assert response["status"]["code"] == 400
    assert "proxy-memory-limit" in response["status"]["message"]


# A status annotation (listing an init container) on pods whose lists are not lists.
CLIENT_SHAPED = [
    pytest.param({"initContainers": 7}, "spec.initContainers is not a list", id="initContainers: 7"),
    pytest.param({"containers": 1}, "spec.containers is missing or empty", id="containers: 1"),
    pytest.param({"initContainers": [{"name": [1]}]}, "spec.initContainers[0] has no name", id="a list as a name"),
]  # fmt: skip


def client_shaped(spec: dict[str, Any]) -> dict[str, Any]:
    obj = pod(annotations={"sidecar.mesh.io/status": '{"version":"0","initContainers":["x"]}'})
    obj["spec"].update(spec)
    return obj


@pytest.mark.parametrize(("spec", "message"), CLIENT_SHAPED)
def test_a_client_shaped_pod_with_a_status_annotation_is_refused_with_400_by_mutate_and_preview(
    client: WebhookClient, spec: dict[str, Any], message: str
) -> None:
    obj = client_shaped(spec)
    response = mutate(client, review(obj))["response"]
    assert response["allowed"] is False
    assert response["status"]["code"] == 400
    assert response["status"]["message"] == f"Pod web: {message}"
    previewed = preview(client, orjson.dumps(obj), "application/json", namespace="demo")
    assert previewed.status_code == 400
    assert previewed.json()["error"] == f"Pod web: {message}"


def test_a_yaml_key_that_is_not_a_string_is_a_400_naming_where_it_is(
    client: WebhookClient,
) -> None:
    body = "kind: Pod\napiVersion: v1\nmetadata: {name: web}\nspec:\n  nodeSelector: {1: 2}\n"
    response = preview(client, body, "application/yaml", namespace="demo")
    assert response.status_code == 400
    assert response.json()["error"] == (
        "request body: line 5 column 18: a mapping key must be a string, not a number (1): quote it"
    )


def test_an_update_is_allowed_without_a_patch(client: WebhookClient) -> None:
    response = mutate(client, review(operation="UPDATE"))["response"]
    assert response == {"uid": review()["request"]["uid"], "allowed": True}


def test_json_with_a_utf8_charset_is_json(client: WebhookClient) -> None:
    mutate(client, review(), content_type="application/json; charset=utf-8")


def test_each_admission_is_one_json_log_line_without_the_pods_secrets(
    server: Server, client: WebhookClient
) -> None:
    obj = pod(name="logged-pod")
    obj["spec"]["containers"][0]["env"] = [{"name": "TOKEN", "value": "s3cr3t-value"}]
    mutate(client, review(obj, uid="log-uid-1"))
    entry = orjson.loads(server.wait_for_log('"uid":"log-uid-1"'))
    assert len([line for line in server.log_lines() if "log-uid-1" in line]) == 1
    assert entry["logger"] == "webhook.admission"
    assert entry["namespace"] == "demo"
    assert entry["name"] == "logged-pod"
    assert entry["code"] == "namespace-enabled"
    assert "sidecar-injection=enabled" in entry["reason"]
    assert entry["duration_ms"] >= 0
    assert "s3cr3t-value" not in server.log()


# --- bad input over the wire --------------------------------------------------------------

GOOD = orjson.dumps(review())
BAD_MUTATE = [
    pytest.param(b"", "application/json", 400, "empty", id="empty body"),
    pytest.param(GOOD, "text/plain", 415, "Content-Type", id="text/plain"),
    pytest.param(GOOD, None, 415, "Content-Type", id="no Content-Type"),
    pytest.param(GOOD, "application/yaml", 415, "Content-Type", id="yaml"),
    pytest.param(GOOD, "application/json; charset=latin-1", 415, "charset", id="latin-1"),
    pytest.param(b"{not json", "application/json", 400, "not valid JSON", id="invalid JSON"),
    pytest.param(b'{"kind": "\xc3\x28"}', "application/json", 400, "UTF-8", id="invalid UTF-8"),
    pytest.param(b"[1, 2]", "application/json", 400, "JSON object", id="an array"),
    pytest.param(
        orjson.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}),
        "application/json",
        400,
        "no request",
        id="no request",
    ),
    pytest.param(
        GOOD.replace(f'"uid":"{UID}",'.encode(), b""),
        "application/json",
        400,
        "uid",
        id="no uid",
    ),
    pytest.param(orjson.dumps(pod()), "application/json", 400, "AdmissionReview", id="a bare Pod"),
    pytest.param(
        b"[" * 100_000 + b"]" * 100_000, "application/json", 400, "deeply", id="100k nesting"
    ),
]


@pytest.mark.parametrize(("body", "content_type", "status", "message"), BAD_MUTATE)
def test_bad_input_gets_its_documented_answer_and_the_server_keeps_serving(
    client: WebhookClient, body: bytes, content_type: str | None, status: int, message: str
) -> None:
    response = client.post("/mutate", body, content_type=content_type)
    assert response.status_code == status
    assert response.headers["content-type"] == "application/json"
    assert message in response.json()["error"]
    assert_still_serving(client)


def raw_request(server: Server, head: str, parts: Iterable[bytes] = ()) -> tuple[int, bytes]:
    """Send a request by hand (for framing httpx will not produce); (status, body)."""
    with connect(server.port, server.ca_file, timeout=30) as sock:
        sock.sendall(head.encode("ascii"))
        for part in parts:
            sock.sendall(part)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    status_line, _, rest = data.partition(b"\r\n")
    return int(status_line.split()[1]), rest.partition(b"\r\n\r\n")[2]


def test_a_body_declared_over_the_cap_is_refused_before_it_is_sent(
    server: Server, client: WebhookClient
) -> None:
    head = (
        "POST /mutate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {MAX_BODY + 1}\r\n\r\n"
    )
    status, body = raw_request(server, head)  # not one byte of the body follows
    assert status == 413
    assert b"larger than" in body
    assert_still_serving(client)


@pytest.mark.parametrize("path", ["/mutate", "/preview"])
def test_a_chunked_body_over_the_cap_is_refused_while_streaming(
    server: Server, client: WebhookClient, path: str
) -> None:
    piece = b" " * 65536
    count = MAX_BODY // len(piece) + 1  # one chunk past the cap, then we stop sending
    chunk = f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
    head = (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        "Transfer-Encoding: chunked\r\n\r\n"
    )
    status, _ = raw_request(server, head, [chunk] * count)
    assert status == 413
    assert_still_serving(client)


def test_a_body_just_under_the_cap_is_read_in_full(client: WebhookClient) -> None:
    doc = review(uid="big")
    doc["request"]["object"]["metadata"]["annotations"] = {"filler": "x" * (MAX_BODY - 2000)}
    response = client.post("/mutate", orjson.dumps(doc))
    assert response.status_code == 200
    assert response.json()["response"]["uid"] == "big"


def test_plain_http_on_the_tls_port_gets_no_http_answer(
    server: Server, client: WebhookClient
) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        try:
            reply = sock.recv(1024)
        except ConnectionResetError:
            reply = b""
    assert not reply.startswith(b"HTTP/")
    assert_still_serving(client)


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1 is deprecated:DeprecationWarning")
def test_a_tls_1_1_client_is_refused(server: Server, client: WebhookClient) -> None:
    old = client_context(
        server.ca_file,
        minimum=ssl.TLSVersion.TLSv1_1,
        maximum=ssl.TLSVersion.TLSv1_1,
        ciphers="DEFAULT:@SECLEVEL=0",
    )
    with pytest.raises(ssl.SSLError):
        connect(server.port, server.ca_file, context=old).close()
    assert_still_serving(client)


# --- /preview -----------------------------------------------------------------------------

POD_YAML = """\
apiVersion: v1
kind: Pod
metadata:
  name: web
spec:
  containers:
  - name: app
    image: nginx:1.27
"""
DEPLOYMENT_YAML = """\
apiVersion: apps/v1
kind: Deployment
metadata: {name: shop}
spec:
  selector: {matchLabels: {app: shop}}
  template:
    metadata: {labels: {app: shop}}
    spec:
      containers: [{name: shop, image: shop:1}]
"""


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        pytest.param(POD_YAML, "application/yaml", id="Pod YAML"),
        pytest.param(POD_YAML, "application/x-yaml", id="x-yaml"),
        pytest.param(POD_YAML, "text/yaml", id="text/yaml"),
        pytest.param(POD_YAML, None, id="no Content-Type"),
        pytest.param(POD_YAML, "text/plain", id="text/plain"),
        pytest.param(POD_YAML, "application/x-www-form-urlencoded", id="curl's default"),
        pytest.param(orjson.dumps(pod()), "application/json", id="Pod JSON"),
        pytest.param(orjson.dumps(pod()), None, id="JSON sniffed"),
        pytest.param(orjson.dumps(review(namespace="demo")), "application/json", id="review"),
    ],
)
def test_preview_takes_a_pod_in_every_form(
    client: WebhookClient, body: str | bytes, content_type: str | None
) -> None:
    response = preview(client, body, content_type, namespace="demo")
    assert response.status_code == 200, response.text
    summary = response.json()
    assert summary["injected"] is True
    assert "sidecar-injection=enabled" in summary["reason"]
    spec = summary["object"]["spec"]
    assert [c["name"] for c in spec["initContainers"]] == ["mesh-init", "mesh-proxy"]
    assert summary["patch"][0]["op"] == "add"
    assert summary["warnings"] == []


def test_preview_of_a_review_uses_the_reviews_namespace(client: WebhookClient) -> None:
    summary = preview(client, orjson.dumps(review(namespace="legacy")), "application/json").json()
    assert summary["injected"] is False
    assert "namespace legacy" in summary["reason"]


def test_preview_of_several_objects_is_an_array_in_input_order(client: WebhookClient) -> None:
    multi = (
        POD_YAML
        + "---\n"
        + DEPLOYMENT_YAML
        + "---\napiVersion: v1\nkind: Service\nmetadata: {name: s}\n"
    )
    summaries = preview(client, multi, "application/yaml", namespace="demo").json()
    assert [s["injected"] for s in summaries] == [True, True, False]
    assert summaries[1]["patch"][0]["path"].startswith("/spec/template/spec/")
    as_list = {"apiVersion": "v1", "kind": "List", "items": [pod("a"), pod("b")]}
    assert (
        len(preview(client, orjson.dumps(as_list), "application/json", namespace="demo").json())
        == 2
    )


def test_preview_settings_say_where_each_value_came_from(client: WebhookClient) -> None:
    summary = preview(
        client,
        POD_YAML,
        "application/yaml",
        namespace="tuned",
        label=["sidecar.mesh.io/proxy-cpu-limit=1"],
        annotation=["sidecar.mesh.io/log-level=error"],
    ).json()
    settings = summary["settings"]
    assert settings["sidecar.mesh.io/proxy-cpu-request"] == {
        "value": "200m",
        "source": "namespace label",
    }
    assert settings["sidecar.mesh.io/proxy-cpu-limit"] == {
        "value": "1",
        "source": "namespace label",
    }
    assert settings["sidecar.mesh.io/log-level"] == {
        "value": "error",
        "source": "namespace annotation",
    }
    assert settings["sidecar.mesh.io/native-sidecar"]["source"] == "built-in default"


def test_preview_labels_override_the_namespace_source(client: WebhookClient) -> None:
    off = preview(client, POD_YAML, None, namespace="demo", label="sidecar-injection=disabled")
    assert off.json()["injected"] is False
    on = preview(client, POD_YAML, None, namespace="legacy", label="sidecar-injection=enabled")
    assert on.json()["injected"] is True


def test_preview_outputs_yaml_patch_and_diff(client: WebhookClient) -> None:
    as_yaml = preview(client, POD_YAML, None, namespace="demo", output="yaml")
    assert as_yaml.headers["content-type"] == "application/yaml"
    obj = yaml.safe_load(as_yaml.text)
    assert [c["name"] for c in obj["spec"]["initContainers"]] == ["mesh-init", "mesh-proxy"]

    as_patch = preview(client, POD_YAML, None, namespace="demo", output="patch").json()
    assert jsonpatch.apply_patch(yaml.safe_load(POD_YAML), as_patch) == obj

    as_diff = preview(client, POD_YAML, None, namespace="demo", output="diff")
    assert as_diff.text.startswith("--- Pod web (as given)\n+++ Pod web (injected)\n")
    assert "+  - name: mesh-proxy\n" in as_diff.text


def test_preview_gives_the_same_patch_as_mutate(client: WebhookClient) -> None:
    obj = pod(annotations={"sidecar.mesh.io/native-sidecar": "true"})
    from_mutate = decoded_patch(mutate(client, review(obj)))
    from_preview = preview(
        client, orjson.dumps(obj), "application/json", namespace="demo", output="patch"
    )
    assert from_preview.json() == from_mutate


@pytest.mark.parametrize(
    ("body", "content_type", "params", "status", "message"),
    [
        pytest.param(POD_YAML, None, {"output": "xml"}, 400, "output 'xml'", id="unknown output"),
        pytest.param(POD_YAML, None, {"labels": "a=b"}, 400, "unknown query parameter", id="typo"),
        pytest.param(POD_YAML, None, {"label": "novalue"}, 400, "KEY=VALUE", id="bad label"),
        pytest.param(POD_YAML, "application/json", {}, 400, "not valid JSON", id="YAML as JSON"),
        pytest.param(POD_YAML, "application/xml", {}, 415, "JSON or YAML", id="xml"),
        pytest.param("", None, {}, 400, "no objects", id="empty"),
        pytest.param("a: &x [1]\nb: *x\n", None, {}, 400, "aliases", id="YAML alias"),
        pytest.param("key: [unclosed", None, {}, 400, "line 2 column 1", id="broken YAML"),
        pytest.param(
            POD_YAML.replace("name: app", "name: mesh-init"),
            None,
            {"namespace": "demo"},
            400,
            "mesh-init",
            id="refused pod",
        ),
        pytest.param(
            POD_YAML.replace("name: web", "name: web\n  namespace: shop"),
            None,
            {"namespace": "demo"},
            400,
            "does not match",
            id="namespace mismatch",
        ),
        pytest.param(
            "a:\n" + "".join("  " * i + "- \n" for i in range(1, 400)),
            None,
            {},
            400,
            "",
            id="deep YAML",
        ),
        pytest.param(
            b'{"apiVersion":"v1","kind":"Pod","metadata":{"name":"d"},"spec":{"containers":[{"name":"a","image":"i","args":'
            + b"[" * 1000
            + b"]" * 1000
            + b"}]}}",
            "application/json",
            {"namespace": "demo"},
            400,
            "nested too deeply",
            id="1000-deep JSON in a pod",
        ),
        pytest.param(
            POD_YAML + "x: " + "[" * 300 + "]" * 300 + "\n",
            None,
            {"namespace": "demo", "output": "json"},
            400,
            "nested too deeply",
            id="YAML too deep for JSON output",
        ),
        pytest.param(
            POD_YAML + "x: 1" + "0" * 30 + "\n",
            None,
            {"namespace": "demo", "output": "json"},
            400,
            "is out of range (Kubernetes numbers are 64-bit)",
            id="number over 64 bits",
        ),
        pytest.param(
            b'{"apiVersion":"v1","kind":"Pod","metadata":{"name":"d"},"spec":{"priority":'
            + b"1" * 30
            + b',"containers":[{"name":"a","image":"i"}]}}',
            "application/json",
            {"namespace": "demo"},
            400,
            "number 111111111111111111111111111111 is out of range",
            id="number over 64 bits, JSON declared",
        ),
        pytest.param(
            POD_YAML + "x: !!binary aGk=\n",
            None,
            {"namespace": "demo", "output": "json"},
            400,
            "the output cannot be written as JSON",
            id="binary in JSON output",
        ),
    ],
)
def test_preview_errors_are_400_or_415_with_a_message(
    client: WebhookClient,
    body: str | bytes,
    content_type: str | None,
    params: dict[str, str],
    status: int,
    message: str,
) -> None:
    response = preview(client, body, content_type, **params)
    assert response.status_code == status, response.text
    if status != 200:
        assert message in response.json()["error"]
    assert_still_serving(client)


# --- probes and metrics -------------------------------------------------------------------


def test_healthz_and_readyz_answer_ok(client: WebhookClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready"}


def test_metrics_count_requests_decisions_and_latency(client: WebhookClient) -> None:
    mutate(client, review(uid="m1"))
    mutate(client, review(uid="m2", namespace="legacy"))
    client.post("/mutate", b"", content_type="application/json")
    text = client.get("/metrics").text
    samples = {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line and not line.startswith("#")
    }
    assert samples['sidecar_injector_requests_total{endpoint="mutate",outcome="ok"}'] >= 2
    assert samples['sidecar_injector_requests_total{endpoint="mutate",outcome="bad_request"}'] >= 1
    assert samples['sidecar_injector_decisions_total{code="namespace-enabled"}'] >= 1
    assert samples['sidecar_injector_decisions_total{code="not-enabled"}'] >= 1
    assert (
        'sidecar_injector_request_duration_seconds_bucket{endpoint="mutate",le="0.0005"}' in samples
    )
    assert samples['sidecar_injector_request_duration_seconds_count{endpoint="mutate"}'] >= 3


def test_there_are_no_documentation_routes(client: WebhookClient) -> None:
    for path in ("/docs", "/openapi.json", "/redoc"):
        assert client.get(path).status_code == 404


# --- fuzzing ------------------------------------------------------------------------------


# --- golden inputs: the CLI, /preview and /mutate agree -----------------------------------
