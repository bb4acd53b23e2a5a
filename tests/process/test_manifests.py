"""The install manifests: they render, they are valid, and their parts agree.

Nothing here needs a cluster. Each object is rendered by the same
``kubectl kustomize`` that ``make manifests`` uses, checked against the
Kubernetes OpenAPI schema (strict: unknown fields fail), and then the pieces
that must agree with each other or with the server are cross-checked: the
Service and the Deployment, the ``serve`` flags and the mounts and probes, the
webhooks' selectors and the contract's decision order, the config and the
webhooks' exclusions, the Dockerfile's default args and the Deployment's.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from cryptography import x509

from tests.builders import REPO as ROOT
from tests.process.manifest_objects import MANIFESTS, Object
from tests.process.manifest_objects import all_of as _all
from tests.process.manifest_objects import injector_container as _container
from tests.process.manifest_objects import kustomize as _kustomize
from tests.process.manifest_objects import one as _one
from tests.process.manifest_objects import selects as _selects
from webhook import __version__
from webhook.manifests import revisions
from webhook.manifests.config_file import load_config, parse_config

OVERLAY = MANIFESTS / "cert-manager"
SCRIPT = ROOT / "scripts" / "render_install.py"
# The venv that runs the tests is the one `make manifests` should use in a clone.
VENV_BIN = Path(sys.executable).parent

# Oldest Kubernetes these manifests target (lifecycle.preStop.sleep needs
# 1.30, matchLabelKeys and unhealthyPodEvictionPolicy are on by default from
# 1.27/1.31) and the newest schema kubernetes-validate ships.
KUBERNETES_VERSIONS = ("1.33", kubernetes_validate.utils.latest_version())
EXCLUDED = {"kube-system", "kube-public", "kube-node-lease", "mesh-system"}
_EXCLUDED_ORDER = ["kube-system", "kube-public", "kube-node-lease", "mesh-system"]
BUILT_IN_GROUPS = (
    "v1",
    "apps/",
    "policy/",
    "rbac.authorization.k8s.io/",
    "admissionregistration",
    "networking.k8s.io/",
)


@pytest.fixture(scope="module")
def base() -> list[Object]:
    return _kustomize(MANIFESTS)


@pytest.fixture(scope="module")
def overlay() -> list[Object]:
    return _kustomize(OVERLAY)


def _flag(args: Sequence[str], name: str) -> str:
    """The value of ``--name`` in ``args``, written as ``--name=v`` or ``--name v``."""
    for i, arg in enumerate(args):
        if arg.startswith(f"{name}="):
            return arg.split("=", 1)[1]
        if arg == name and i + 1 < len(args):
            return args[i + 1]
    raise AssertionError(f"{name} not in {list(args)}")


def _webhooks(objects: Sequence[Object]) -> dict[str, Object]:
    config = _one(objects, "MutatingWebhookConfiguration")
    return {hook["name"]: hook for hook in config["webhooks"]}


# --- rendering and schema -------------------------------------------------------------


def test_kubectl_kustomize_renders_every_object_of_the_base(base: list[Object]) -> None:
    assert sorted(obj["kind"] for obj in base) == sorted(
        [
            "Namespace",
            "ServiceAccount",
            "ClusterRole",
            "ClusterRoleBinding",
            "ClusterRoleBinding",
            "ConfigMap",
            "Deployment",
            "Service",
            "NetworkPolicy",
            "PodDisruptionBudget",
            "MutatingWebhookConfiguration",
        ]
    )


def test_the_base_carries_no_secret_and_no_ca_bundle(base: list[Object]) -> None:
    assert not _all(base, "Secret")
    assert all("caBundle" not in hook["clientConfig"] for hook in _webhooks(base).values())


def test_the_cert_manager_overlay_renders_the_base_plus_issuers_and_certificates(
    base: list[Object], overlay: list[Object]
) -> None:
    kinds = sorted(obj["kind"] for obj in overlay)
    assert kinds == sorted([obj["kind"] for obj in base] + ["Issuer"] * 2 + ["Certificate"] * 2)


def test_every_namespaced_object_lives_in_mesh_system(overlay: list[Object]) -> None:
    cluster_scoped = {"Namespace", "ClusterRole", "ClusterRoleBinding"}
    cluster_scoped.add("MutatingWebhookConfiguration")
    for obj in overlay:
        if obj["kind"] not in cluster_scoped:
            assert obj["metadata"]["namespace"] == "mesh-system", obj["kind"]


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_built_in_object_is_schema_valid_in_strict_mode(
    version: str, base: list[Object], overlay: list[Object]
) -> None:
    built_ins = [o for o in base + overlay if o["apiVersion"].startswith(BUILT_IN_GROUPS)]
    assert len(built_ins) == 2 * len(base)
    for obj in built_ins:
        kubernetes_validate.validate(obj, version, strict=True)


def test_every_object_carries_the_common_labels(overlay: list[Object]) -> None:
    for obj in overlay:
        assert obj["metadata"]["labels"]["app.kubernetes.io/name"] == "sidecar-injector"
        assert obj["metadata"]["labels"]["app.kubernetes.io/part-of"] == "sidecar-injector"


def test_the_cert_manager_objects_chain_a_self_signed_ca_to_the_serving_certificate(
    overlay: list[Object],
) -> None:
    issuers = {o["metadata"]["name"]: o["spec"] for o in _all(overlay, "Issuer")}
    certificates = {o["metadata"]["name"]: o["spec"] for o in _all(overlay, "Certificate")}
    for obj in _all(overlay, "Issuer") + _all(overlay, "Certificate"):
        assert obj["apiVersion"] == "cert-manager.io/v1"

    ca = certificates["sidecar-injector-ca"]
    assert ca["isCA"] is True
    assert "selfSigned" in issuers[ca["issuerRef"]["name"]]
    assert ca["issuerRef"]["kind"] == "Issuer"

    serving = certificates["sidecar-injector-serving"]
    serving_issuer = issuers[serving["issuerRef"]["name"]]
    assert serving_issuer["ca"]["secretName"] == ca["secretName"]
    assert serving.get("isCA", False) is False
    assert "server auth" in serving["usages"]
    # A CA renewal must keep its key, or certificates it signed stop verifying
    # against the caBundle the apiserver holds (cert-manager 1.18+ rotates by default).
    assert ca["privateKey"]["rotationPolicy"] == "Never"


def test_the_serving_certificate_is_the_mounted_secret_and_names_the_service(
    overlay: list[Object],
) -> None:
    serving = next(
        o for o in _all(overlay, "Certificate") if o["metadata"]["name"].endswith("serving")
    )
    volumes = _one(overlay, "Deployment")["spec"]["template"]["spec"]["volumes"]
    secret_names = {v["secret"]["secretName"] for v in volumes if "secret" in v}
    assert serving["spec"]["secretName"] in secret_names
    service = _one(overlay, "Service")["metadata"]
    assert f"{service['name']}.{service['namespace']}.svc" in serving["spec"]["dnsNames"]


def test_the_overlay_asks_cainjector_for_the_ca_instead_of_a_static_bundle(
    overlay: list[Object],
) -> None:
    config = _one(overlay, "MutatingWebhookConfiguration")
    serving = next(
        o for o in _all(overlay, "Certificate") if o["metadata"]["name"].endswith("serving")
    )
    wanted = f"{serving['metadata']['namespace']}/{serving['metadata']['name']}"
    assert config["metadata"]["annotations"]["cert-manager.io/inject-ca-from"] == wanted
    assert all("caBundle" not in hook["clientConfig"] for hook in config["webhooks"])


# --- the Deployment, the Service and `serve` agree ------------------------------------


def test_the_service_selects_the_deployments_pods_and_reaches_the_port_serve_listens_on(
    base: list[Object],
) -> None:
    service = _one(base, "Service")
    deployment = _one(base, "Deployment")
    container = _container(base)
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert _selects({"matchLabels": service["spec"]["selector"]}, pod_labels)
    assert _selects(deployment["spec"]["selector"], pod_labels)

    (port,) = service["spec"]["ports"]
    assert port["port"] == 443
    assert port["name"] == "https"
    by_name = {p["name"]: p["containerPort"] for p in container["ports"]}
    target = by_name.get(port["targetPort"], port["targetPort"])
    assert target == int(_flag(container["args"], "--port")) == 8443


def test_serve_binds_every_interface_because_its_default_is_loopback(
    base: list[Object],
) -> None:
    assert _flag(_container(base)["args"], "--host") == "0.0.0.0"


def test_both_webhooks_call_mutate_on_the_service_at_port_443(base: list[Object]) -> None:
    service = _one(base, "Service")["metadata"]
    for hook in _webhooks(base).values():
        assert hook["clientConfig"]["service"] == {
            "name": service["name"],
            "namespace": service["namespace"],
            "path": "/mutate",
            "port": 443,
        }


def test_the_probes_use_https_on_readyz_and_healthz_at_the_serving_port(
    base: list[Object],
) -> None:
    container = _container(base)
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        get = container[probe]["httpGet"]
        assert get["scheme"] == "HTTPS"
        assert get["path"] == path
        assert get["port"] in ("https", 8443)


def test_the_tls_secret_is_mounted_whole_and_read_only_at_the_cert_dir(
    base: list[Object],
) -> None:
    container = _container(base)
    volumes = _one(base, "Deployment")["spec"]["template"]["spec"]["volumes"]
    tls = next(
        v for v in volumes if v.get("secret", {}).get("secretName") == "sidecar-injector-tls"
    )
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == tls["name"]]
    assert mount["mountPath"] == _flag(container["args"], "--cert-dir")
    assert mount["readOnly"] is True
    # subPath mounts never see Secret updates, which would defeat hot reload.
    assert "subPath" not in mount
    assert "items" not in tls["secret"]


def test_the_config_map_is_mounted_where_serve_reads_its_config_and_parses(
    base: list[Object],
) -> None:
    container = _container(base)
    config_path = Path(_flag(container["args"], "--config"))
    volumes = _one(base, "Deployment")["spec"]["template"]["spec"]["volumes"]
    (volume,) = [v for v in volumes if "configMap" in v]
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == volume["name"]]
    assert Path(mount["mountPath"]) == config_path.parent
    config_map = _one(base, "ConfigMap")
    # kustomize appends a content hash to the name and rewrites the reference.
    assert volume["configMap"]["name"] == config_map["metadata"]["name"]
    text = config_map["data"][config_path.name]
    config = parse_config(text, origin="manifests/base/injector-config.yaml")
    # The install runs the images of this version: a release bumps
    # webhook.__version__ and these tags together (the one other place).
    assert config.init.image == f"ghcr.io/sidecar-injector/mesh-init:{__version__}"
    assert config.init.image == load_config(None).init.image  # the built-in default
    assert _container(base)["image"] == f"ghcr.io/sidecar-injector/webhook:{__version__}"
    assert config.proxy.version == "v1.40.0"


def test_the_injector_config_excludes_the_same_namespaces_as_the_webhooks(
    base: list[Object],
) -> None:
    text = next(iter(_one(base, "ConfigMap")["data"].values()))
    configured = set(parse_config(text).excluded_namespaces)
    for hook in _webhooks(base).values():
        (names,) = [
            e["values"]
            for e in hook["namespaceSelector"]["matchExpressions"]
            if e["key"] == "kubernetes.io/metadata.name"
        ]
        assert set(names) == configured


def test_the_dockerfile_defaults_are_the_flags_the_deployment_passes(
    base: list[Object],
) -> None:
    dockerfile = (ROOT / "Dockerfile").read_text(encoding="utf-8").replace("\\\n", " ")
    entrypoint = re.search(r"^ENTRYPOINT (\[.*\])$", dockerfile, re.MULTILINE)
    cmd = re.search(r"^CMD (\[.*\])$", dockerfile, re.MULTILINE)
    user = re.search(r"^USER (\d+):(\d+)$", dockerfile, re.MULTILINE)
    assert entrypoint is not None
    assert cmd is not None
    assert user is not None
    assert json.loads(entrypoint[1]) == ["sidecar-injector", "serve"]
    assert json.loads(cmd[1]) == _container(base)["args"]
    pod_security = _one(base, "Deployment")["spec"]["template"]["spec"]["securityContext"]
    assert (int(user[1]), int(user[2])) == (pod_security["runAsUser"], pod_security["runAsGroup"])


# --- hardening and availability ------------------------------------------------------


def test_the_deployment_runs_hardened_under_the_restricted_pod_security_profile(
    base: list[Object],
) -> None:
    pod = _one(base, "Deployment")["spec"]["template"]["spec"]
    container = _container(base)
    security = container["securityContext"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] > 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert security["runAsNonRoot"] is True
    assert security["runAsUser"] > 0
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert not security.get("privileged", False)
    assert not pod.get("hostNetwork", False)
    # Only volume types the restricted profile allows.
    allowed = {"name", "secret", "configMap", "emptyDir", "projected", "downwardAPI"}
    assert all(set(volume) <= allowed for volume in pod["volumes"])
    namespace = _one(base, "Namespace")["metadata"]["labels"]
    assert namespace["pod-security.kubernetes.io/enforce"] == "restricted"


def test_the_deployment_mounts_the_token_it_needs_for_the_namespace_watch(
    base: list[Object],
) -> None:
    pod = _one(base, "Deployment")["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is True
    assert pod["serviceAccountName"] == _one(base, "ServiceAccount")["metadata"]["name"]


def test_the_injector_knows_its_pod_name_for_the_events_it_writes(base: list[Object]) -> None:
    env = {item["name"]: item for item in _container(base).get("env") or []}
    assert env["POD_NAME"] == {
        "name": "POD_NAME",
        "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}},
    }


def test_the_injectors_own_pods_and_namespace_opt_out_of_injection(base: list[Object]) -> None:
    labels = _one(base, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert labels["sidecar.mesh.io/inject"] == "false"
    namespace = _one(base, "Namespace")["metadata"]
    assert namespace["labels"]["sidecar-injection"] == "disabled"


def test_at_least_two_replicas_are_spread_across_nodes(base: list[Object]) -> None:
    deployment = _one(base, "Deployment")
    assert deployment["spec"]["replicas"] >= 2
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    pod = deployment["spec"]["template"]
    spreads = {c["topologyKey"]: c for c in pod["spec"]["topologySpreadConstraints"]}
    by_node = spreads["kubernetes.io/hostname"]
    assert by_node["maxSkew"] == 1
    assert _selects(by_node["labelSelector"], pod["metadata"]["labels"])


def test_the_pre_stop_sleep_ends_well_inside_the_grace_period(base: list[Object]) -> None:
    pod = _one(base, "Deployment")["spec"]["template"]["spec"]
    sleep = _container(base)["lifecycle"]["preStop"]["sleep"]["seconds"]
    timeout = max(hook["timeoutSeconds"] for hook in _webhooks(base).values())
    assert sleep > 0
    assert pod["terminationGracePeriodSeconds"] >= sleep + timeout


def test_resources_are_requested_without_a_cpu_limit(base: list[Object]) -> None:
    resources = _container(base)["resources"]
    assert {"cpu", "memory"} <= set(resources["requests"])
    assert "cpu" not in resources.get("limits", {})


def test_the_disruption_budget_keeps_one_replica_of_the_injector(base: list[Object]) -> None:
    pdb = _one(base, "PodDisruptionBudget")["spec"]
    deployment = _one(base, "Deployment")["spec"]
    assert pdb["minAvailable"] == 1
    assert pdb["minAvailable"] < deployment["replicas"]  # else drains could never evict
    assert _selects(pdb["selector"], deployment["template"]["metadata"]["labels"])


# --- the webhooks --------------------------------------------------------------------


def test_there_are_four_webhooks_with_fully_qualified_names(base: list[Object]) -> None:
    names = set(_webhooks(base))
    assert names == {
        "namespace.sidecar.mesh.io",
        "object.sidecar.mesh.io",
        "rev-pod.sidecar.mesh.io",
        "rev-namespace.sidecar.mesh.io",
    }
    assert all(len(name.split(".")) >= 3 for name in names)


def test_the_webhooks_are_the_default_revisions_disjoint_entries(base: list[Object]) -> None:
    """The selectors and matchConditions are what webhook.manifests.revisions makes of them,
    which the Helm chart renders too and whose disjointness tests/unit proves."""
    config = _one(base, "MutatingWebhookConfiguration")
    assert config["metadata"]["labels"]["sidecar.mesh.io/rev"] == "default"
    wanted = revisions.entries("default", [], sorted(EXCLUDED, key=_EXCLUDED_ORDER.index))
    hooks = config["webhooks"]
    assert [hook["name"] for hook in hooks] == [
        revisions.webhook_name(entry.entry, "default") for entry in wanted
    ]
    for hook, entry in zip(hooks, wanted, strict=True):
        assert hook["namespaceSelector"] == entry.namespace_selector, hook["name"]
        assert hook["objectSelector"] == entry.object_selector, hook["name"]
        assert hook["matchConditions"] == entry.conditions, hook["name"]


def test_both_webhooks_only_match_pod_creation(base: list[Object]) -> None:
    for hook in _webhooks(base).values():
        assert hook["rules"] == [
            {
                "operations": ["CREATE"],
                "apiGroups": [""],
                "apiVersions": ["v1"],
                "resources": ["pods"],
                "scope": "Namespaced",
            }
        ]


def test_both_webhooks_fail_closed_quickly_and_are_called_once_per_pod(base: list[Object]) -> None:
    for hook in _webhooks(base).values():
        assert hook["failurePolicy"] == "Fail"
        assert hook["timeoutSeconds"] <= 10
        # Events on the pod's owner are the one side effect, and none on a dry run.
        assert hook["sideEffects"] == "NoneOnDryRun"
        assert hook["matchPolicy"] == "Equivalent"
        assert hook["reinvocationPolicy"] == "Never"
        assert hook["admissionReviewVersions"] == ["v1", "v1beta1"]


def test_both_webhooks_exclude_the_system_namespaces_and_the_injectors_own(
    base: list[Object],
) -> None:
    own = _one(base, "Deployment")["metadata"]["namespace"]
    for name in EXCLUDED | {own}:
        labels = {"kubernetes.io/metadata.name": name, "sidecar-injection": "enabled"}
        for hook in _webhooks(base).values():
            assert not _selects(hook["namespaceSelector"], labels), (hook["name"], name)


def test_the_namespace_webhook_lets_pods_that_opt_out_skip_the_call(base: list[Object]) -> None:
    hook = _webhooks(base)["namespace.sidecar.mesh.io"]
    assert not _selects(hook["objectSelector"], {"sidecar.mesh.io/inject": "false"})
    assert _selects(hook["objectSelector"], {})
    assert _selects(hook["objectSelector"], {"sidecar.mesh.io/inject": "true"})


def _namespace_cases() -> Iterator[tuple[str | None, str | None, str | None, str | None]]:
    """(namespace sidecar-injection label, pod inject label, pod inject annotation,
    webhook expected to be called)."""
    for pod in (None, "true", "false"):
        for annotation in (None, "true", "false"):
            # The label wins when it says true or false (contract step 7).
            choice = pod if pod is not None else annotation
            yield None, pod, annotation, ("object.sidecar.mesh.io" if choice == "true" else None)
            yield (
                "enabled",
                pod,
                annotation,
                None if choice == "false" else "namespace.sidecar.mesh.io",
            )
            yield "disabled", pod, annotation, None
            # Any other value is no opinion: only the pod's own opt-in counts.
            yield "maybe", pod, annotation, ("object.sidecar.mesh.io" if choice == "true" else None)


@pytest.mark.parametrize(
    ("namespace_label", "pod_label", "pod_annotation", "expected"), list(_namespace_cases())
)
def test_exactly_the_webhook_the_contract_needs_is_called_for_each_opt_in_combination(
    base: list[Object],
    namespace_label: str | None,
    pod_label: str | None,
    pod_annotation: str | None,
    expected: str | None,
) -> None:
    namespace = {"kubernetes.io/metadata.name": "demo"}
    if namespace_label is not None:
        namespace["sidecar-injection"] = namespace_label
    labels = {"app": "web"}
    if pod_label is not None:
        labels["sidecar.mesh.io/inject"] = pod_label
    annotations = {} if pod_annotation is None else {"sidecar.mesh.io/inject": pod_annotation}
    pod = {"metadata": {"labels": labels, "annotations": annotations}, "spec": {}}
    # The selectors as the API server evaluates them; the matchConditions by
    # their Python twins (the test above holds the webhooks' CEL to them).
    called = [
        name
        for name, hook in _webhooks(base).items()
        if _selects(hook["namespaceSelector"], namespace)
        and _selects(hook["objectSelector"], labels)
        and revisions.pod_conditions_hold(pod, name.split(".")[0])
    ]
    assert called == ([expected] if expected else [])


# --- make manifests ------------------------------------------------------------------


def _certs(out: Path, *, namespace: str = "mesh-system") -> None:
    done = subprocess.run(
        [VENV_BIN / "sidecar-injector", "certs", "--out", str(out), "--namespace", namespace],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr


def _render(certs: Path, out: Path) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, str(SCRIPT), "--manifests", str(MANIFESTS)]
    command += ["--certs", str(certs), "--out", str(out)]
    return subprocess.run(command, capture_output=True, text=True, check=False)


def test_render_install_refuses_a_certificate_for_another_namespace(tmp_path: Path) -> None:
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl is not on PATH; render_install runs `kubectl kustomize`")
    _certs(tmp_path / "certs", namespace="elsewhere")
    out = tmp_path / "install.yaml"
    out.write_text("previous\n", encoding="utf-8")
    done = _render(tmp_path / "certs", out)
    assert done.returncode == 1
    assert "sidecar-injector.mesh-system.svc" in done.stderr
    # The previous file is left as it was, not truncated.
    assert out.read_text(encoding="utf-8") == "previous\n"


def test_make_manifests_in_a_fresh_clone_writes_an_install_with_secret_and_ca_bundle(
    tmp_path: Path,
) -> None:
    for tool in ("kubectl", "git", "make"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not on PATH; needed to run make manifests in a clone")
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(clone)], check=True)
    # `-o install` and BIN: use the venv running these tests instead of
    # building a new one in the clone (that is `make install`'s job, not ours).
    done = subprocess.run(
        [
            "make",
            "--no-print-directory",
            "-o",
            "install",
            "-o",
            ".venv/.installed",
            "manifests",
            f"BIN={VENV_BIN}",
        ],
        cwd=clone,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr

    certs = clone / "certs"
    ca_pem = (certs / "ca.crt").read_bytes()
    serving = x509.load_pem_x509_certificate((certs / "tls.crt").read_bytes())
    names = serving.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "sidecar-injector.mesh-system.svc" in names.get_values_for_type(x509.DNSName)

    install = clone / "manifests" / "install.yaml"
    assert install.stat().st_mode & 0o077 == 0  # it holds a private key
    objects = [obj for obj in yaml.safe_load_all(install.read_text(encoding="utf-8")) if obj]
    for hook in _webhooks(objects).values():
        assert base64.b64decode(hook["clientConfig"]["caBundle"]) == ca_pem

    secret = _one(objects, "Secret")
    assert secret["type"] == "kubernetes.io/tls"
    assert secret["metadata"] == {
        "name": "sidecar-injector-tls",
        "namespace": "mesh-system",
        "labels": _one(objects, "Deployment")["metadata"]["labels"],
    }
    for key in ("tls.crt", "tls.key", "ca.crt"):
        assert base64.b64decode(secret["data"][key]) == (certs / key).read_bytes()
    kubernetes_validate.validate(secret, KUBERNETES_VERSIONS[0], strict=True)
    # The Namespace comes first so that `kubectl apply -f` can create the Secret in it.
    kinds = [obj["kind"] for obj in objects]
    assert kinds.index("Namespace") < kinds.index("Secret")
