"""The locks and the container refusals through ``/preview`` and ``/mutate`` (the in-process app).

``/preview`` marks each locked setting ``"locked": true``; a refused pod is a
400 with the one-line message on every path. The real ``inject`` command's
side is in ``tests/process/test_locks_paths.py``.
"""

from __future__ import annotations

import base64
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient

from tests import builders
from webhook.cluster.namespaces_file import StaticNamespaces
from webhook.manifests.config_file import parse_config
from webhook.service.app import create_app

P = "sidecar.mesh.io/"
CONFIG_YAML = "lockedSettings: [xds-address, include-outbound-cidrs]\n"
XDS = {P + "xds-address": "xds.mesh-system:15010"}
ATTACKER = {P + "xds-address": "attacker.example.com:443"}
LOCK_MESSAGE = (
    "Pod web: pod annotation sidecar.mesh.io/xds-address='attacker.example.com:443' is refused:"
    " the injector config locks sidecar.mesh.io/xds-address (lockedSettings) to what the"
    " namespace and the config decide, here 'xds.mesh-system:15010' (namespace annotation);"
    " remove the annotation, or set it to that value"
)


def pod(annotations: dict[str, str] | None = None, **container: Any) -> dict[str, Any]:
    """Pod ``web`` with these annotations, its one container ``app`` with these fields."""
    app = {"name": "app", "image": "nginx", **container}
    return builders.pod(containers=[app], annotations=annotations or {})


@pytest.fixture(scope="module")
def client() -> TestClient:
    source = StaticNamespaces({"demo": builders.namespace("demo", builders.ENABLED, XDS)})
    return TestClient(create_app(config=parse_config(CONFIG_YAML), namespaces=source))


def test_preview_marks_the_locked_settings_and_only_those(client: TestClient) -> None:
    answer = client.post("/preview", params={"namespace": "demo"}, content=orjson.dumps(pod(XDS)))
    assert answer.status_code == 200, answer.text
    settings = answer.json()["settings"]
    assert settings[P + "xds-address"] == {
        "value": "xds.mesh-system:15010",
        "source": "namespace annotation",
        "locked": True,
    }
    assert settings[P + "include-outbound-cidrs"] == {
        "value": "*",
        "source": "built-in default",
        "locked": True,
    }
    assert settings[P + "log-level"] == {"value": "warning", "source": "built-in default"}
    assert sorted(k for k, v in settings.items() if v.get("locked")) == [
        P + "include-outbound-cidrs",
        P + "xds-address",
    ]


def test_preview_refuses_a_pod_that_changes_a_locked_setting(client: TestClient) -> None:
    answer = client.post(
        "/preview", params={"namespace": "demo"}, content=orjson.dumps(pod(ATTACKER))
    )
    assert answer.status_code == 400
    assert answer.json() == {"error": LOCK_MESSAGE}


def review(obj: dict[str, Any]) -> bytes:
    return builders.review_bytes(obj, uid="u-1")


@pytest.mark.parametrize(
    ("obj", "message"),
    [
        (pod(ATTACKER), LOCK_MESSAGE),
        (
            pod(ports=[{"containerPort": 15090, "name": "http-envoy-prom"}]),
            "Pod web: spec.containers[0] ('app') declares containerPort 15090, which the proxy",
        ),
        (
            pod(securityContext={"runAsUser": 1337}),
            "Pod web: spec.containers[0] ('app') runs as UID 1337"
            " (spec.containers[0].securityContext.runAsUser), the proxy's UID",
        ),
    ],
    ids=["lock", "reserved port", "proxy uid"],
)
def test_mutate_refuses_with_code_400_and_the_message(
    client: TestClient, obj: dict[str, Any], message: str
) -> None:
    answer = client.post(
        "/mutate", content=review(obj), headers={"Content-Type": "application/json"}
    )
    assert answer.status_code == 200
    response = answer.json()["response"]
    assert (response["uid"], response["allowed"], response["status"]["code"]) == ("u-1", False, 400)
    assert response["status"]["message"].startswith(message)
    assert "patch" not in response


def test_mutate_injects_a_pod_that_repeats_the_locked_value(client: TestClient) -> None:
    answer = client.post(
        "/mutate", content=review(pod(XDS)), headers={"Content-Type": "application/json"}
    )
    response = answer.json()["response"]
    assert response["allowed"] is True
    patch = orjson.loads(base64.b64decode(response["patch"]))
    assert any(op["path"] == "/spec/initContainers" for op in patch)
