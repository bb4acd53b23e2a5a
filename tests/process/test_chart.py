"""The Helm chart: with default values the objects of manifests/base; its values; revisions.

Rendered by ``helm template`` (the cached helm, ``make helm``), compared with
``kubectl kustomize manifests`` in a normal form (``chart_objects.normal``),
validated against the Kubernetes schema, and its webhooks held to the
entries ``webhook.manifests.revisions`` makes for every revision.
"""

from __future__ import annotations

import base64
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from tests.process.chart_objects import (
    CHART,
    is_hook,
    named,
    normal,
    run_template,
    template,
    yaml_of,
)
from tests.process.manifest_objects import MANIFESTS, kustomize
from webhook import __version__
from webhook.contract import constants
from webhook.manifests import revisions
from webhook.manifests.config_file import parse_config

EXCLUDED = list(constants.DEFAULT_EXCLUDED_NAMESPACES)


@pytest.fixture(scope="module")
def default() -> list[dict[str, object]]:
    return template()


def test_with_default_values_the_chart_renders_the_objects_of_manifests_base(
    default: list[dict[str, object]],
) -> None:
    chart, base = normal(default), normal(kustomize(MANIFESTS))
    assert sorted(chart) == sorted(base)
    for key, obj in base.items():
        assert chart[key] == obj, f"{key} differs:\n{yaml_of(chart[key])}\n---\n{yaml_of(obj)}"


def test_what_the_default_render_adds_is_the_certificates_hooks(
    default: list[dict[str, object]],
) -> None:
    hooks = [obj for obj in default if is_hook(obj)]
    assert sorted((o["kind"], o["metadata"]["name"]) for o in hooks) == sorted(  # type: ignore[index]
        [
            ("ServiceAccount", "sidecar-injector-certs"),
            ("Role", "sidecar-injector-certs"),
            ("RoleBinding", "sidecar-injector-certs"),
            ("ClusterRole", "sidecar-injector-certs"),
            ("ClusterRoleBinding", "sidecar-injector-certs"),
            ("Job", "sidecar-injector-certs"),
        ]
    )
    (job,) = [o for o in hooks if o["kind"] == "Job"]
    container = job["spec"]["template"]["spec"]["containers"][0]  # type: ignore[index]
    assert container["image"] == f"ghcr.io/sidecar-injector/webhook:{__version__}"
    assert container["command"] == ["sidecar-injector", "certs"]
    assert container["args"] == [
        "--secret=sidecar-injector-tls",
        "--ca-secret=sidecar-injector-ca",
        "--webhook-configuration=sidecar-injector",
        "--service=sidecar-injector",
        "--namespace=mesh-system",
        "--days=365",
    ]
    for hook in hooks:
        annotations = hook["metadata"]["annotations"]  # type: ignore[index]
        assert annotations["helm.sh/hook"] == "pre-install,pre-upgrade,post-install"
        assert "hook-succeeded" in annotations["helm.sh/hook-delete-policy"]


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["--set", "revision=canary", "--set", "autoscaling.enabled=true"],
        ["--set", "certificates.mode=cert-manager"],
    ],
    ids=["default", "canary-autoscaled", "cert-manager"],
)
def test_every_built_in_object_is_schema_valid_in_strict_mode(args: list[str]) -> None:
    for obj in template(*args):
        if "cert-manager.io" in str(obj["apiVersion"]):
            continue
        # Raises on the first error, naming the field.
        kubernetes_validate.validate(obj, kubernetes_validate.utils.latest_version(), strict=True)


def test_the_chart_versions_are_the_packages() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["version"] == __version__
    assert chart["appVersion"] == __version__


# --- revisions -------------------------------------------------------------------------


@pytest.mark.parametrize("revision", ["default", "canary", "v1-41-0"])
def test_each_revisions_webhooks_are_its_disjoint_entries(revision: str) -> None:
    objects = template("--set", f"revision={revision}")
    (configuration,) = named(objects, "MutatingWebhookConfiguration").values()
    assert configuration["metadata"]["name"] == revisions.object_name(revision)
    assert configuration["metadata"]["labels"]["sidecar.mesh.io/rev"] == revision
    wanted = revisions.entries(revision, [], EXCLUDED)
    hooks = configuration["webhooks"]
    assert [h["name"] for h in hooks] == [revisions.webhook_name(e.entry, revision) for e in wanted]
    for hook, entry in zip(hooks, wanted, strict=True):
        assert hook["namespaceSelector"] == entry.namespace_selector, hook["name"]
        assert hook["objectSelector"] == entry.object_selector, hook["name"]
        assert hook["matchConditions"] == entry.conditions, hook["name"]
        assert hook["clientConfig"]["service"]["name"] == revisions.object_name(revision)


def test_a_revision_is_a_complete_install_named_with_its_suffix() -> None:
    objects = template("--set", "revision=canary")
    names = {(o["kind"], o["metadata"]["name"]) for o in objects if not is_hook(o)}
    assert ("Namespace", "mesh-system") not in names  # the default revision's, kept
    for kind in ("Deployment", "Service", "ServiceAccount", "ClusterRole", "PodDisruptionBudget",
                 "NetworkPolicy", "MutatingWebhookConfiguration"):  # fmt: skip
        assert (kind, "sidecar-injector-canary") in names, kind
    assert ("ClusterRoleBinding", "sidecar-injector-auth-delegator-canary") in names
    (deployment,) = named(objects, "Deployment").values()
    selector = deployment["spec"]["selector"]["matchLabels"]
    # Its own pods only: the default revision selects app.kubernetes.io/name=sidecar-injector.
    assert selector == {"app.kubernetes.io/name": "sidecar-injector-canary"}
    template_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert template_labels["app.kubernetes.io/name"] == "sidecar-injector-canary"
    (service,) = named(objects, "Service").values()
    assert service["spec"]["selector"] == selector
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert volumes["tls"]["secret"]["secretName"] == "sidecar-injector-tls-canary"
    (config_map,) = named(objects, "ConfigMap").values()
    assert volumes["config"]["configMap"]["name"] == config_map["metadata"]["name"]
    assert config_map["metadata"]["name"].startswith("sidecar-injector-config-canary-")
    config = parse_config(config_map["data"]["config.yaml"])
    assert config.revision == "canary"


def test_a_config_change_renames_the_config_map_and_so_rolls_the_deployment() -> None:
    first = named(template(), "ConfigMap")
    second = named(template("--set", "config.proxy.version=v1.41.0"), "ConfigMap")
    assert set(first).isdisjoint(second)
    (text,) = (c["data"]["config.yaml"] for c in second.values())
    assert parse_config(text).proxy.version == "v1.41.0"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("Canary", 'revision "Canary" is not a revision name'),
        ("a" * 47, "at most 46 characters"),
        ("-x", "is not a revision name"),
    ],
)
def test_a_revision_that_cannot_name_objects_fails_the_render(value: str, message: str) -> None:
    done = run_template("--set", f"revision={value}")
    assert done.returncode != 0
    assert message in done.stderr


# --- values ------------------------------------------------------------------------------


def test_autoscaling_replaces_the_fixed_replica_count_with_a_hpa() -> None:
    objects = template("--set", "autoscaling.enabled=true", "--set", "autoscaling.maxReplicas=7")
    (deployment,) = named(objects, "Deployment").values()
    assert "replicas" not in deployment["spec"]
    (hpa,) = named(objects, "HorizontalPodAutoscaler").values()
    assert hpa["spec"]["scaleTargetRef"]["name"] == "sidecar-injector"
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 7)
    assert (
        named(template("--set", "replicas=3"), "Deployment")["sidecar-injector"]["spec"]["replicas"]
        == 3
    )


def test_failure_policy_timeouts_and_resources_reach_every_webhook_and_the_container() -> None:
    objects = template(
        "--set", "failurePolicy=Ignore", "--set", "timeoutSeconds=10",
        "--set", "resources.requests.cpu=250m",
    )  # fmt: skip
    (configuration,) = named(objects, "MutatingWebhookConfiguration").values()
    assert {h["failurePolicy"] for h in configuration["webhooks"]} == {"Ignore"}
    assert {h["timeoutSeconds"] for h in configuration["webhooks"]} == {10}
    (deployment,) = named(objects, "Deployment").values()
    resources = deployment["spec"]["template"]["spec"]["containers"][0]["resources"]
    assert resources["requests"]["cpu"] == "250m"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--set", "failurePolicy=Sometimes"],
            'failurePolicy "Sometimes" is neither Fail nor Ignore',
        ),
        (["--set", "timeoutSeconds=31"], "timeoutSeconds 31 is not 1 to 30"),
        (["--set", "mode=sidecar"], 'mode "sidecar" is neither webhook nor policy'),
        (["--set", "certificates.mode=manual"], 'certificates.mode "manual" is none of'),
        (["--set", "certificates.mode=provided"], "--set-file certificates.caBundle=ca.crt"),
    ],
)
def test_values_that_make_no_install_fail_the_render_saying_why(
    args: list[str], message: str
) -> None:
    done = run_template(*args)
    assert done.returncode != 0
    assert message in done.stderr


def test_one_image_setting_names_both_project_images() -> None:
    objects = template("--set", "imageRepository=registry.example.com/mesh")
    (deployment,) = named(objects, "Deployment").values()
    image = deployment["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image == f"registry.example.com/mesh/webhook:{__version__}"
    (config_map,) = named(objects, "ConfigMap").values()
    config = parse_config(config_map["data"]["config.yaml"])
    assert config.init.image == f"registry.example.com/mesh/mesh-init:{__version__}"
    (job,) = [o for o in objects if o["kind"] == "Job"]
    assert job["spec"]["template"]["spec"]["containers"][0]["image"] == image


def test_the_release_namespace_is_excluded_and_holds_every_object() -> None:
    objects = template(namespace="platform-mesh")
    for obj in objects:
        if obj["kind"] in ("Namespace", "ClusterRole", "ClusterRoleBinding",
                           "MutatingWebhookConfiguration"):  # fmt: skip
            continue
        assert obj["metadata"]["namespace"] == "platform-mesh", obj["kind"]
    (namespace,) = named(objects, "Namespace").values()
    assert namespace["metadata"]["name"] == "platform-mesh"
    (config_map,) = named(objects, "ConfigMap").values()
    config = parse_config(config_map["data"]["config.yaml"])
    assert "platform-mesh" in config.excluded_namespaces
    (configuration,) = named(objects, "MutatingWebhookConfiguration").values()
    for hook in configuration["webhooks"]:
        (names,) = [
            e["values"]
            for e in hook["namespaceSelector"]["matchExpressions"]
            if e["key"] == "kubernetes.io/metadata.name"
        ]
        assert names == list(config.excluded_namespaces)


def test_cert_manager_issues_the_certificates_and_injects_the_ca() -> None:
    objects = template("--set", "certificates.mode=cert-manager", "--set", "revision=canary")
    assert not [o for o in objects if is_hook(o)]
    certificates = named(objects, "Certificate")
    serving = certificates["sidecar-injector-serving-canary"]
    assert serving["spec"]["secretName"] == "sidecar-injector-tls-canary"
    assert "sidecar-injector-canary.mesh-system.svc" in serving["spec"]["dnsNames"]
    (configuration,) = named(objects, "MutatingWebhookConfiguration").values()
    assert configuration["metadata"]["annotations"] == {
        "cert-manager.io/inject-ca-from": "mesh-system/sidecar-injector-serving-canary"
    }


def test_provided_certificates_put_the_ca_in_every_ca_bundle(tmp_path: Path) -> None:
    ca = tmp_path / "ca.crt"
    ca.write_text("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    objects = template(
        "--set", "certificates.mode=provided", "--set-file", f"certificates.caBundle={ca}"
    )
    assert not [o for o in objects if is_hook(o)]
    (configuration,) = named(objects, "MutatingWebhookConfiguration").values()
    bundles = {h["clientConfig"]["caBundle"] for h in configuration["webhooks"]}
    assert bundles == {base64.b64encode(ca.read_bytes()).decode()}
