"""Policy mode stores the same pods as webhook mode, on a real kube-apiserver: golden inputs.

For each golden input (tests/golden/inputs), every pod in it (a workload's
template becomes a pod) is created by server-side dry run in a namespace with
the input's labels and annotations where ``sidecar-injector policy``'s
objects (the install's config) are bound, and in webhook mode twice:

* through the installed webhook (``sidecar-injector serve`` behind the
  install's Service and MutatingWebhookConfiguration, as in
  test_cluster_webhook.py);
* simulated: the pod as the API server hands it to a webhook, the engine's
  patch applied, that pod dry-run created (what the bulk of the cases in
  test_policy_tables.py and test_policy_generated.py use).

The stored pods must be equal except the status annotation's digest (policy
mode: a digest of the policy), names the server generates, and the random
suffix of the service-account token volume; refusals must both be 4xx with
the same message (tests/e2e/policy_modes.py, ``assert_same``).
"""

from __future__ import annotations

import copy
import shlex
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.policy_modes import Case, Modes, modes, pod_with, real_webhook
from webhook.contract import constants
from webhook.engine.config import InjectorConfig

pytestmark = pytest.mark.cluster
__all__ = ["modes", "real_webhook"]  # fixtures

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

Object = dict[str, Any]


@dataclass
class Golden:
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


def golden_cases() -> Iterator[Golden]:
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
        case = Golden(path.stem, namespace, labels, annotations)
        objects: list[Object] = []
        for doc in yaml.safe_load_all(text):
            if isinstance(doc, dict) and doc.get("kind") == "List":
                objects += doc["items"]
            elif isinstance(doc, dict):
                objects.append(doc)
        case.pods = [p for i, o in enumerate(objects) if (p := _pod_of(o, i)) is not None]
        if case.pods:
            yield case


def cases() -> Iterator[Case]:
    excluded = set(InjectorConfig().excluded_namespaces)
    for golden in golden_cases():
        for index, pod in enumerate(golden.pods):
            yield Case(
                f"{golden.name}[{index}]",
                golden.labels,
                golden.annotations,
                pod,
                namespace=golden.namespace if golden.namespace in excluded else None,
            )


CASES = list(cases())


@pytest.mark.parametrize("case", CASES, ids=[case.what for case in CASES])
def test_policy_mode_stores_what_the_webhook_would(modes: Modes, case: Case) -> None:
    modes.check(case)


@pytest.mark.parametrize("case", CASES, ids=[case.what for case in CASES])
def test_policy_mode_stores_what_the_installed_webhook_stores(
    modes: Modes, real_webhook: object, case: Case
) -> None:
    # Every case, a pod that opts in by annotation alone in an unlabelled
    # namespace too: the install's object webhook sees it by its matchConditions.
    modes.check(case, real_webhook=True)


def test_a_pod_that_passes_pod_security_alone_is_refused_by_the_policy_naming_the_mesh(
    modes: Modes,
) -> None:
    labels = {
        constants.NAMESPACE_INJECTION_LABEL: "enabled",
        "pod-security.kubernetes.io/enforce": "restricted",
    }
    restricted = {
        "runAsNonRoot": True,
        "runAsUser": 1000,
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    pod = pod_with(name="web")
    pod["spec"]["containers"][0]["securityContext"] = restricted
    case = Case("restricted", labels, {}, pod)
    refused = modes.by_policy(case)
    assert refused.refused
    # The ValidatingAdmissionPolicy's answer (422), not PodSecurity's (403).
    assert refused.code == 422
    assert "ValidatingAdmissionPolicy" in refused.message
    name = modes.namespace(case, mode="policy")
    assert f"namespace {name} enforces Pod Security level 'restricted'" in refused.message
    assert "NET_ADMIN" in refused.message
    assert "sidecar.mesh.io/inject=false" in refused.message
    modes.check(case)
