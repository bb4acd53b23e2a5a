"""``check``'s parts that need no cluster: selectors, endpoints, the config's volume, output, hints.

The checks themselves run against the real install on kube-apiserver
(``tests/e2e/check/``) and each alone in ``test_install_checks.py``
and ``test_namespace_checks.py``; here are the rules they apply, table by
table. The bounds that keep a hostile or huge API server from hanging or
exhausting ``check`` are in ``test_bounds.py``.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from webhook.ops.check import (
    Context,
    Endpoint,
    Result,
    probe_pod,
    render_json,
    render_text,
    selector_matches,
)
from webhook.ops.check.context import ServiceRef, WebhookConfiguration
from webhook.ops.check.discover_install import config_volume, endpoints_on
from webhook.ops.check.install_checks import bundle_hint, renew_hint

# --- label selectors ----------------------------------------------------------------

KUBE_SYSTEM = {"kubernetes.io/metadata.name": "kube-system"}
ENABLED_SHOP = {"kubernetes.io/metadata.name": "shop", "sidecar-injection": "enabled"}
EXCLUDE_BY_NAME = {
    "key": "kubernetes.io/metadata.name",
    "operator": "NotIn",
    "values": ["kube-system", "mesh-system"],
}


@pytest.mark.parametrize(
    ("selector", "labels", "selected"),
    [
        (None, KUBE_SYSTEM, True),
        ({}, KUBE_SYSTEM, True),
        ({"matchLabels": {"sidecar-injection": "enabled"}}, ENABLED_SHOP, True),
        ({"matchLabels": {"sidecar-injection": "enabled"}}, KUBE_SYSTEM, False),
        ({"matchExpressions": [EXCLUDE_BY_NAME]}, KUBE_SYSTEM, False),
        ({"matchExpressions": [EXCLUDE_BY_NAME]}, ENABLED_SHOP, True),
        # NotIn holds for a missing key: the install's object webhook relies on it.
        (
            {
                "matchExpressions": [
                    {"key": "sidecar-injection", "operator": "NotIn", "values": ["enabled"]}
                ]
            },
            KUBE_SYSTEM,
            True,
        ),
        (
            {"matchExpressions": [{"key": "sidecar-injection", "operator": "Exists"}]},
            KUBE_SYSTEM,
            False,
        ),
        (
            {"matchExpressions": [{"key": "sidecar-injection", "operator": "DoesNotExist"}]},
            KUBE_SYSTEM,
            True,
        ),
        (
            {"matchExpressions": [{"key": "x", "operator": "In", "values": ["a"]}]},
            {"x": "b"},
            False,
        ),
        (
            {"matchExpressions": [{"key": "x", "operator": "Gt", "values": ["1"]}]},
            {"x": "2"},
            False,
        ),
        # Both parts must hold.
        (
            {
                "matchLabels": {"sidecar-injection": "enabled"},
                "matchExpressions": [EXCLUDE_BY_NAME],
            },
            {**KUBE_SYSTEM, "sidecar-injection": "enabled"},
            False,
        ),
    ],
)
def test_label_selectors_are_evaluated_as_the_api_server_does(
    selector: dict[str, Any] | None, labels: dict[str, str], selected: bool
) -> None:
    assert selector_matches(selector, labels) is selected


# --- endpoints and the injector's config ---------------------------------------------


def test_ready_endpoints_are_read_from_every_slice_on_the_webhooks_port() -> None:
    slices = [
        {
            "ports": [{"name": "https", "port": 8443}, {"name": "metrics", "port": 9090}],
            "endpoints": [
                {"addresses": ["10.0.0.1"], "conditions": {"ready": True}},
                {
                    "addresses": ["10.0.0.2"],
                    "conditions": {"ready": False},
                    "targetRef": {"kind": "Pod", "name": "injector-b"},
                },
                # No condition at all counts as ready.
                {"addresses": ["10.0.0.3"], "targetRef": {"kind": "Pod", "name": "injector-c"}},
                {"addresses": []},
            ],
        },
        {"ports": [{"name": "other", "port": 1}], "endpoints": [{"addresses": ["10.9.9.9"]}]},
        {"ports": [{"name": "https", "port": 8443}], "endpoints": [{"addresses": ["10.0.0.1"]}]},
    ]
    ready, unready = endpoints_on(slices, "https")
    assert ready == [Endpoint("10.0.0.1", 8443, None), Endpoint("10.0.0.3", 8443, "injector-c")]
    assert unready == [Endpoint("10.0.0.2", 8443, "injector-b")]
    assert str(Endpoint("fd00::1", 8443, "p")) == "[fd00::1]:8443 (pod p)"


def _deployment(
    args: list[str], mounts: list[dict[str, Any]], volumes: list[dict[str, Any]]
) -> Any:
    return {
        "spec": {
            "template": {
                "spec": {
                    "containers": [{"name": "injector", "args": args, "volumeMounts": mounts}],
                    "volumes": volumes,
                }
            }
        }
    }


def test_the_config_is_found_where_the_deployment_mounts_what_it_passes_as_config() -> None:
    mounts = [
        {"name": "tls", "mountPath": "/etc/sidecar-injector/tls"},
        {"name": "config", "mountPath": "/etc/sidecar-injector/config/"},
    ]
    volumes = [
        {"name": "tls", "secret": {"secretName": "t"}},
        {"name": "config", "configMap": {"name": "injector-config-abc"}},
    ]
    path = "/etc/sidecar-injector/config/config.yaml"
    assert config_volume(_deployment([f"--config={path}"], mounts, volumes)) == (
        "injector-config-abc",
        "config.yaml",
    )
    assert config_volume(_deployment(["--config", path], mounts, volumes)) == (
        "injector-config-abc",
        "config.yaml",
    )
    # An items mapping renames the key's file.
    renamed = [
        {
            "name": "config",
            "configMap": {"name": "c", "items": [{"key": "k", "path": "config.yaml"}]},
        }
    ]
    assert config_volume(_deployment([f"--config={path}"], mounts, renamed)) == ("c", "k")
    assert config_volume(_deployment([], mounts, volumes)) is None
    assert config_volume(_deployment(["--config=/elsewhere/c.yaml"], mounts, volumes)) is None


def test_the_dry_run_pod_passes_pod_security_restricted_on_its_own() -> None:
    pod = probe_pod({"a": "b"})
    spec = pod["spec"]
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (container,) = spec["containers"]
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert pod["metadata"]["generateName"] == "sidecar-injector-check-"
    assert "name" not in pod["metadata"]


# --- output -------------------------------------------------------------------------


RESULTS = [
    Result("kubernetes-api", "pass", "answers"),
    Result("replicas", "warn", "1 ready replica", "scale it", ("detail one",)),
    Result("ca-bundle", "fail", "does not verify", "make manifests"),
    Result("outdated-sidecars", "skip", "nothing"),
]


def test_text_output_is_one_line_per_check_with_hints_and_details_under_it() -> None:
    text = render_text(RESULTS, host="https://api:6443")
    lines = text.splitlines()
    assert lines[0] == "sidecar-injector check of https://api:6443"
    assert lines[2].startswith("PASS  kubernetes-api ")
    assert lines[3].startswith("WARN  replicas ")
    assert lines[4].strip() == "hint: scale it"
    assert lines[5].strip() == "- detail one"
    assert lines[6].startswith("FAIL  ca-bundle ")
    assert lines[-1] == "1 passed, 1 warning, 1 failed, 1 skipped"


def test_json_output_is_for_scripts() -> None:
    document = json.loads(render_json(RESULTS, host="h"))
    assert document["ok"] is False
    assert document["summary"] == {"pass": 1, "warn": 1, "fail": 1, "skip": 1}
    assert [c["name"] for c in document["checks"]] == [r.name for r in RESULTS]
    assert document["checks"][1] == {
        "name": "replicas",
        "status": "warn",
        "message": "1 ready replica",
        "hint": "scale it",
        "details": ["detail one"],
        "data": {},
    }
    assert json.loads(render_json(RESULTS[:2], host="h"))["ok"] is True


# --- hints ---------------------------------------------------------------------------


def test_hints_follow_the_install_flavour() -> None:
    service = ServiceRef("mesh-system", "sidecar-injector")
    static = Context(webhook=WebhookConfiguration(exists=True, service=service))
    assert "make manifests && make deploy" in bundle_hint(static)
    assert "certs --renew" in renew_hint(static, ca=False)
    managed = Context(
        webhook=WebhookConfiguration(
            exists=True, service=service, cert_manager="mesh-system/sidecar-injector-serving"
        )
    )
    assert "cainjector fills caBundle from mesh-system/sidecar-injector-serving" in (
        bundle_hint(managed)
    )
    assert "cmctl renew -n mesh-system" in renew_hint(managed, ca=False)
    assert "trust both" in renew_hint(managed, ca=True)
