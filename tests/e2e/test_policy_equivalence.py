"""Policy mode stores the same pods as webhook mode, on a real kube-apiserver.

For each golden input (tests/golden/inputs), every pod in it (a workload's
template becomes a pod) is created by server-side dry run twice:

* policy mode: in a namespace with the input's labels and annotations, where
  ``sidecar-injector policy``'s MutatingAdmissionPolicy and
  ValidatingAdmissionPolicy (default config) are bound;
* webhook mode, equivalently: the pod as the API server hands it to a webhook
  (a dry run in a namespace no policy binds), injected by the engine with the
  same namespace, and that patched pod dry-run created there.

The stored pods must be equal except the status annotation's digest (policy
mode: a digest of the policy), names the server generates, and the random
suffix of the service-account token volume; refusals must both be refusals
naming the same key. Settings the slice does not read per pod yet must be
refused by the policy, naming the key ("not supported in policy mode yet"):
never a silently different pod.
"""

from __future__ import annotations

import copy
import json
import re
import shlex
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.cluster import ControlPlane
from webhook.contract import constants
from webhook.contract.namespaces import NamespaceInfo
from webhook.engine import InjectionRefused, inject
from webhook.engine.config import InjectorConfig
from webhook.manifests.patched import patched
from webhook.policy.render import render_policy

pytestmark = pytest.mark.cluster

GOLDEN = Path(__file__).resolve().parents[1] / "golden"
CONFIG = InjectorConfig()
WORKLOADS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "CronJob"}
# Inputs that are not pods the API server could be asked to create.
NOT_PODS = {
    "refuse-malformed-yaml",
    "refuse-missing-kind",
    "refuse-workload-kind-in-wrong-group",
    "refuse-namespace-mismatch",
    "refuse-no-containers",
}
# Settings the policy does not read per pod yet (docs: DESIGN, "What remains").
PINNED = ("include-outbound-cidrs", "exclude-outbound-cidrs", "xds-address")

Object = dict[str, Any]


@dataclass
class Case:
    name: str
    namespace: str
    labels: dict[str, str]
    annotations: dict[str, str]
    pods: list[Object] = field(default_factory=list)


def _pairs(values: list[str]) -> dict[str, str]:
    return dict(value.split("=", 1) for value in values)


def _golden_namespaces() -> dict[str, Object]:
    listed = yaml.safe_load((GOLDEN / "namespaces.yaml").read_text())
    return {item["metadata"]["name"]: item["metadata"] for item in listed["items"]}


def _pod_of(obj: Object, index: int) -> Object | None:
    kind = obj.get("kind")
    if kind == "Pod":
        pod = copy.deepcopy(obj)
    elif kind in WORKLOADS:
        template = (
            obj["spec"]["template"]
            if kind != "CronJob"
            else (obj["spec"]["jobTemplate"]["spec"]["template"])
        )
        pod = {"apiVersion": "v1", "kind": "Pod", **copy.deepcopy(template)}
        pod["metadata"] = dict(pod.get("metadata") or {})
        pod["metadata"]["name"] = f"{obj['metadata']['name']}-pod"
    elif kind == "List":
        return None
    else:
        return None
    pod.setdefault("metadata", {})
    if pod["metadata"] is None:
        pod["metadata"] = {}
    if not pod["metadata"].get("name") and not pod["metadata"].get("generateName"):
        pod["metadata"]["name"] = f"pod-{index}"
    pod["metadata"].pop("namespace", None)
    return pod


def golden_cases() -> Iterator[Case]:
    namespaces = _golden_namespaces()
    for path in sorted((GOLDEN / "inputs").glob("*.yaml")):
        if path.stem in NOT_PODS:
            continue
        text = path.read_text()
        args = shlex.split(text.splitlines()[0].removeprefix("# args:"))
        options: dict[str, list[str]] = {"--namespace": [], "--label": [], "--annotation": []}
        files = False
        for flag, value in zip(args[::2], args[1::2], strict=False):
            if flag == "--namespaces-file":
                files = True
            else:
                options[flag].append(value)
        namespace = (options["--namespace"] or ["default"])[0]
        meta = namespaces.get(namespace, {}) if files else {}
        labels = {**(meta.get("labels") or {}), **_pairs(options["--label"])}
        annotations = {**(meta.get("annotations") or {}), **_pairs(options["--annotation"])}
        labels.pop("kubernetes.io/metadata.name", None)
        case = Case(path.stem, namespace, labels, annotations)
        objects: list[Object] = []
        for doc in yaml.safe_load_all(text):
            if isinstance(doc, dict) and doc.get("kind") == "List":
                objects += doc["items"]
            elif isinstance(doc, dict):
                objects.append(doc)
        case.pods = [p for i, o in enumerate(objects) if (p := _pod_of(o, i)) is not None]
        if case.pods:
            yield case


# --- the API server ---------------------------------------------------------------------


def dry_run(control_plane: ControlPlane, namespace: str, pod: Object) -> Object | str:
    """The pod as the API server would store it, or the refusal's message."""
    result = control_plane.kubectl(
        "-n",
        namespace,
        "create",
        "--dry-run=server",
        "-o",
        "json",
        "-f",
        "-",
        input=json.dumps(pod),
        check=False,
    )
    if result.returncode != 0:
        return result.stderr.strip()
    stored: Object = json.loads(result.stdout)
    return stored


def apply_namespace(
    control_plane: ControlPlane, name: str, labels: dict[str, str], annotations: dict[str, str]
) -> None:
    manifest = {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": name, "labels": labels, "annotations": annotations},
    }
    control_plane.kubectl("apply", "-f", "-", input=json.dumps(manifest))
    control_plane.wait_for(
        lambda: (
            control_plane.kubectl(
                "-n", name, "get", "serviceaccount", "default", check=False
            ).returncode
            == 0
        ),
        what=f"the default ServiceAccount in {name}",
    )


@pytest.fixture(scope="module")
def policy(control_plane: ControlPlane) -> Iterator[list[Object]]:
    objects = render_policy(CONFIG)
    control_plane.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(objects))
    probe = f"policy-probe-{uuid.uuid4().hex[:6]}"
    apply_namespace(control_plane, probe, {"sidecar-injection": "enabled"}, {})
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "probe"},
        "spec": {"containers": [{"name": "app", "image": "registry.invalid/app:1"}]},
    }

    def injected() -> bool:
        stored = dry_run(control_plane, probe, pod)
        return isinstance(stored, dict) and constants.STATUS_ANNOTATION in (
            stored["metadata"].get("annotations") or {}
        )

    control_plane.wait_for(injected, what="the policy to inject", timeout=60)
    yield objects
    for obj in objects:
        control_plane.kubectl("delete", obj["kind"], obj["metadata"]["name"], check=False)
    control_plane.kubectl("delete", "namespace", probe, "--wait=false", check=False)


# --- comparing -----------------------------------------------------------------------------

_TOKEN_VOLUME = re.compile(r"kube-api-access-[a-z0-9]{5}")
_SERVER_SET = ("uid", "resourceVersion", "creationTimestamp", "managedFields", "namespace")


def normalised(pod: Object) -> Object:
    """What must be equal: the pod without what the server makes up per request."""
    pod = json.loads(_TOKEN_VOLUME.sub("kube-api-access-x", json.dumps(pod)))
    meta = pod["metadata"]
    for key in _SERVER_SET:
        meta.pop(key, None)
    if meta.get("generateName"):
        meta.pop("name", None)
    pod.pop("status", None)
    annotations = meta.get("annotations") or {}
    if constants.STATUS_ANNOTATION in annotations:
        status = json.loads(annotations[constants.STATUS_ANNOTATION])
        status.pop("digest", None)
        annotations[constants.STATUS_ANNOTATION] = status
    return pod


def webhook_mode(
    control_plane: ControlPlane, case: Case, plain_namespace: str, pod: Object
) -> Object | str:
    """What the webhook makes of ``pod`` in the case's namespace, stored by the API server."""
    seen = dry_run(control_plane, plain_namespace, pod)
    if isinstance(seen, str):
        return seen
    for key in _SERVER_SET:
        seen["metadata"].pop(key, None)
    seen.pop("status", None)
    if pod["metadata"].get("generateName"):
        seen["metadata"].pop("name", None)
    namespace = NamespaceInfo(case.namespace, case.labels, case.annotations)
    try:
        result = inject(seen, namespace=namespace, config=CONFIG)
    except InjectionRefused as err:
        return f"refused: {err}"
    return dry_run(control_plane, plain_namespace, patched(result))


def _names_pinned(case: Case, pod: Object) -> list[str]:
    layers = [case.annotations, (pod["metadata"].get("annotations") or {})]
    return [name for name in PINNED for layer in layers if constants.PREFIX + name in layer]


CASES = list(golden_cases())


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_policy_mode_stores_the_pod_webhook_mode_stores(
    control_plane: ControlPlane, policy: list[Object], case: Case
) -> None:
    suffix = uuid.uuid4().hex[:5]
    if case.namespace in CONFIG.excluded_namespaces:
        meshed = case.namespace  # exists already, and no binding selects it
    else:
        meshed = f"pm-{suffix}"
        apply_namespace(control_plane, meshed, case.labels, case.annotations)
    plain = f"pw-{suffix}"
    apply_namespace(control_plane, plain, {constants.NAMESPACE_INJECTION_LABEL: "disabled"}, {})
    try:
        for pod in case.pods:
            by_policy = dry_run(control_plane, meshed, pod)
            pinned = _names_pinned(case, pod)
            if pinned:
                # Not read per pod by this slice: refused, naming the key, never different.
                assert isinstance(by_policy, str), f"{case.name}: injected despite {pinned}"
                assert "not supported in policy mode yet" in by_policy
                assert any(name in by_policy for name in pinned), by_policy
                continue
            by_webhook = webhook_mode(control_plane, case, plain, pod)
            if isinstance(by_webhook, str) or isinstance(by_policy, str):
                assert isinstance(by_webhook, str), f"policy refused, webhook did not: {by_policy}"
                assert isinstance(by_policy, str), f"webhook refused, policy did not: {by_webhook}"
                _same_refusal(by_webhook, by_policy)
                continue
            assert normalised(by_policy) == normalised(by_webhook)
    finally:
        names = [plain] + ([meshed] if meshed.startswith("pm-") else [])
        control_plane.kubectl("delete", "namespace", *names, "--wait=false", check=False)


def _same_refusal(by_webhook: str, by_policy: str) -> None:
    """Both name the same setting (and where it was set), or the same cause.

    One difference is the API server's order: PodSecurity validates before any
    ValidatingAdmissionPolicy, so a pod that breaks the namespace's level by
    itself is refused by PodSecurity for its own containers. The policy left
    it uninjected, so the refusal is about the pod alone, never about mesh-init.
    """
    if "violates PodSecurity" in by_policy:
        assert "Pod Security" in by_webhook, (by_webhook, by_policy)
        assert constants.INIT_CONTAINER not in by_policy, by_policy
        return
    keys = set(re.findall(r"sidecar\.mesh\.io/[a-z-]+", by_webhook))
    assert keys <= set(re.findall(r"sidecar\.mesh\.io/[a-z-]+", by_policy)), (by_webhook, by_policy)
    for phrase in (
        "pod annotation",
        "namespace label",
        "namespace annotation",
        "Pod Security",
        "which the injector reserves",
    ):
        if phrase in by_webhook:
            assert phrase in by_policy, (by_webhook, by_policy)


def test_a_pod_that_passes_pod_security_alone_is_refused_by_the_policy_naming_the_mesh(
    control_plane: ControlPlane, policy: list[Object]
) -> None:
    name = f"pm-{uuid.uuid4().hex[:5]}"
    labels = {
        constants.NAMESPACE_INJECTION_LABEL: "enabled",
        "pod-security.kubernetes.io/enforce": "restricted",
    }
    apply_namespace(control_plane, name, labels, {})
    restricted = {
        "runAsNonRoot": True,
        "runAsUser": 1000,
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "web"},
        "spec": {
            "containers": [
                {"name": "app", "image": "registry.invalid/app:1", "securityContext": restricted}
            ]
        },
    }
    try:
        refused = dry_run(control_plane, name, pod)
        assert isinstance(refused, str)
        # The ValidatingAdmissionPolicy's answer (422), not PodSecurity's (403).
        assert "is invalid" in refused  # kubectl's words for a 422
        assert "ValidatingAdmissionPolicy" in refused
        assert f"namespace {name} enforces Pod Security level 'restricted'" in refused
        assert "NET_ADMIN" in refused
        assert "sidecar.mesh.io/inject=false" in refused
    finally:
        control_plane.kubectl("delete", "namespace", name, "--wait=false", check=False)
