"""The locks and the container refusals through every path: ``/preview`` and ``/mutate``
(the in-process app), and the real ``inject`` command.

``/preview`` marks each locked setting ``"locked": true``; a refused pod is a
400 with the one-line message on every path, and ``inject`` prints it on stderr
with nothing on stdout.
"""

from __future__ import annotations

import base64
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient

from webhook.cluster.namespaces_file import NamespaceInfo, StaticNamespaces
from webhook.manifests.config_file import parse_config
from webhook.service.app import create_app

P = "sidecar.mesh.io/"
CONFIG_YAML = "lockedSettings: [xds-address, include-outbound-cidrs]\n"
CLI = str(Path(sys.executable).parent / "sidecar-injector")
XDS = {P + "xds-address": "xds.mesh-system:15010"}
ATTACKER = {P + "xds-address": "attacker.example.com:443"}
LOCK_MESSAGE = (
    "Pod web: pod annotation sidecar.mesh.io/xds-address='attacker.example.com:443' is refused:"
    " the injector config locks sidecar.mesh.io/xds-address (lockedSettings) to what the"
    " namespace and the config decide, here 'xds.mesh-system:15010' (namespace annotation);"
    " remove the annotation, or set it to that value"
)


def pod(annotations: dict[str, str] | None = None, **container: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "web", "annotations": annotations or {}},
        "spec": {"containers": [{"name": "app", "image": "nginx", **container}]},
    }


@pytest.fixture(scope="module")
def client() -> TestClient:
    source = StaticNamespaces(
        {"demo": NamespaceInfo("demo", {"sidecar-injection": "enabled"}, XDS)}
    )
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
    return orjson.dumps(
        {
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "u-1",
                "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "namespace": "demo",
                "operation": "CREATE",
                "object": obj,
            },
        }
    )


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


def run_inject(tmp_path: Path, obj: dict[str, Any]) -> subprocess.CompletedProcess[bytes]:
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG_YAML)
    return subprocess.run(
        [
            CLI,
            "inject",
            "-f",
            "-",
            "--config",
            str(config),
            "--label",
            "sidecar-injection=enabled",
            "--annotation",
            f"{P}xds-address=xds.mesh-system:15010",
        ],
        input=orjson.dumps(obj),
        capture_output=True,
        timeout=60,
        check=False,
    )


def test_inject_exits_non_zero_with_the_one_line_refusal_and_nothing_on_stdout(
    tmp_path: Path,
) -> None:
    refused = run_inject(tmp_path, pod(ATTACKER))
    assert refused.returncode != 0
    assert refused.stdout == b""
    assert refused.stderr.decode() == f"sidecar-injector: error: {LOCK_MESSAGE}\n"
    same = run_inject(tmp_path, pod(XDS))
    assert (same.returncode, same.stderr) == (0, b"")
    assert b"mesh-proxy" in same.stdout


def test_inject_refuses_a_config_with_an_unknown_locked_setting(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("lockedSettings: [inject]\n")
    refused = subprocess.run(
        [CLI, "inject", "-f", "-", "--config", str(config)],
        input=orjson.dumps(pod()),
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert refused.returncode != 0
    assert refused.stdout == b""
    assert refused.stderr.decode().count("\n") == 1
    assert (
        "lockedSettings: Value error, entry 1 'inject' is not a setting" in refused.stderr.decode()
    )
