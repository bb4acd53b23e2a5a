"""The engine's golden inputs through the real apiserver: stored as the offline CLI injects them.

Everything below the HTTP edge is tested elsewhere with imitations of the
apiserver; these ask the real kube-apiserver. The install they share is in
``conftest.py``; whether the webhook was *called* is read from its ``/metrics``.
"""

from __future__ import annotations

import itertools
import json
import shlex
from dataclasses import dataclass, field
from typing import Any

import pytest
import yaml

from harness.kube.admin_api import ApiRefused
from harness.kube.control_plane import ControlPlane
from harness.kube.install import (
    INIT,
    PROXY,
    InstalledWebhook,
    Object,
    create,
    is_injected,
)
from tests.builders import GOLDEN
from tests.e2e.webhook.shared import Namespaces

pytestmark = pytest.mark.cluster


# --- the engine's golden inputs, through the apiserver -------------------------------------

# Inputs that exercise the engine with something the apiserver itself
# refuses, webhook or not; the test proves that (same error without us).
INVALID_AS_OBJECTS = {
    # JSON-pointer escaping of "~" and a second "/"; not a valid annotation
    # key. Every injection still escapes "/" in sidecar.mesh.io~1status.
    "pod-annotation-keys-escaping": "annotation key example.com/path~with/slashes",
}
_TEMPLATE_PATHS = {
    "Deployment": ("spec", "template"),
    "StatefulSet": ("spec", "template"),
    "DaemonSet": ("spec", "template"),
    "ReplicaSet": ("spec", "template"),
    "Job": ("spec", "template"),
    "CronJob": ("spec", "jobTemplate", "spec", "template"),
}


def _documents(text: str) -> list[Object]:
    """Objects of a manifest, Lists flattened (as the CLI reads them)."""
    objects: list[Object] = []
    for document in yaml.safe_load_all(text):
        if not document:
            continue
        if document.get("kind") == "List":
            objects.extend(document.get("items") or [])
        else:
            objects.append(document)
    return objects


def _pod_template(obj: Object) -> Object | None:
    if obj.get("kind") == "Pod":
        return obj
    path = _TEMPLATE_PATHS.get(obj.get("kind", ""))
    if path is None:
        return None
    node: Any = obj
    for key in path:
        node = node[key]
    template: Object = node
    return template


@dataclass
class GoldenCase:
    """One golden input, mapped onto a namespace of its own in the cluster."""

    stem: str
    source_namespace: str
    labels: dict[str, str]
    annotations: dict[str, str]
    inputs: list[Object]
    expected: list[Object]

    @property
    def cluster_namespace(self) -> str:
        return f"golden-{self.stem}"[:63]


def _golden_namespaces() -> dict[str, Object]:
    return {
        o["metadata"]["name"]: o["metadata"]
        for o in _documents((GOLDEN / "namespaces.yaml").read_text(encoding="utf-8"))
    }


def _golden_cases() -> list[GoldenCase]:
    """Every golden input the engine injects (not refuse-*/skip-*) that holds a pod.

    The golden's ``# args`` become the namespace: the namespaces file's labels
    and annotations for ``--namespace`` (or the object's own namespace), then
    ``--label``/``--annotation`` on top, exactly the precedence the CLI uses.
    """
    known = _golden_namespaces()
    cases = []
    for path in sorted((GOLDEN / "inputs").glob("*.yaml")):
        stem = path.stem
        if stem.startswith(("refuse-", "skip-")):
            continue
        text = path.read_text(encoding="utf-8")
        args = shlex.split(text.splitlines()[0].removeprefix("# args:"))
        namespace: str | None = None
        labels: dict[str, str] = {}
        annotations: dict[str, str] = {}
        for flag, value in itertools.pairwise(args):
            if flag == "--namespace":
                namespace = value
            elif flag in {"--label", "--annotation"}:
                key, _, item = value.partition("=")
                (labels if flag == "--label" else annotations)[key] = item
        inputs = _documents(text)
        owners = {o.get("metadata", {}).get("namespace") or namespace for o in inputs}
        if not any(_pod_template(o) for o in inputs):
            continue  # e.g. pass-through-kinds: nothing for a webhook to see
        assert len(owners) == 1, (stem, owners)
        source = owners.pop()
        assert source is not None, stem
        meta = known.get(source, {})
        ns_labels = {**(meta.get("labels") or {}), **labels}
        ns_labels.pop("kubernetes.io/metadata.name", None)
        ns_annotations = {**(meta.get("annotations") or {}), **annotations}
        expected = _documents((GOLDEN / "expected" / f"{stem}.yaml").read_text(encoding="utf-8"))
        assert len(expected) == len(inputs), stem
        cases.append(GoldenCase(stem, source, ns_labels, ns_annotations, inputs, expected))
    return cases


def _as_pod(obj: Object, template: Object, *, fallback_name: str) -> Object:
    """A Pod for ``obj``: itself, or its pod template as the controller would make it."""
    metadata = dict(template.get("metadata") or {})
    metadata.pop("namespace", None)
    spec = dict(template["spec"])
    if obj.get("kind") != "Pod":
        metadata["name"] = f"{obj['metadata']['name']}-pod"
    elif not metadata.get("name") and not metadata.get("generateName"):
        metadata["name"] = fallback_name
    if obj.get("kind") == "StatefulSet":
        # The StatefulSet controller turns each volumeClaimTemplate into a
        # PVC volume of the pod; the template alone mounts volumes it lacks.
        claims = [
            {
                "name": claim["metadata"]["name"],
                "persistentVolumeClaim": {
                    "claimName": f"{claim['metadata']['name']}-{obj['metadata']['name']}-0"
                },
            }
            for claim in obj["spec"].get("volumeClaimTemplates") or []
        ]
        spec["volumes"] = [*(spec.get("volumes") or []), *claims]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec}


def _reason(stderr: str) -> str:
    """The apiserver's validation message, without the object name kubectl may vary."""
    return stderr.strip().split(" is invalid: ", 1)[-1]


def _refusal_without_webhook(
    control_plane: ControlPlane, namespace: str, obj: Object
) -> str | None:
    """The apiserver's refusal of ``obj`` with no webhook involved, or None if it accepts it.

    A server-side dry run of the object as given. Only pods are sent to the
    webhook (its rules), and a pod is labelled ``sidecar.mesh.io/inject=false``
    so the install's objectSelector keeps our webhook out of it.
    """
    bare = json.loads(json.dumps(obj))
    bare.setdefault("metadata", {}).pop("namespace", None)
    if bare.get("kind") == "Pod":
        bare["metadata"].setdefault("labels", {})["sidecar.mesh.io/inject"] = "false"
    done = control_plane.kubectl(
        "-n",
        namespace,
        "create",
        "--dry-run=server",
        "-f",
        "-",
        input=json.dumps(bare),
        check=False,
    )
    return None if done.returncode == 0 else _reason(done.stderr)


def _by_name(containers: list[Object] | None) -> dict[str, Object]:
    return {c["name"]: c for c in containers or []}


@dataclass
class _GoldenRun:
    """Results of putting golden inputs through the cluster, collected for one assertion."""

    control_plane: ControlPlane
    failures: list[str] = field(default_factory=list)
    invalid_inputs: set[str] = field(default_factory=set)
    checked: int = 0

    def create_namespaces(self, cases: list[GoldenCase]) -> None:
        """All cases' namespaces in one apply, then one wait for their ServiceAccounts."""
        documents = [
            {
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": {
                    "name": case.cluster_namespace,
                    "labels": case.labels,
                    "annotations": case.annotations,
                },
            }
            for case in cases
        ]
        self.control_plane.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(documents))
        wanted = {case.cluster_namespace for case in cases}

        def service_accounts_exist() -> bool:
            listed = self.control_plane.kubectl(
                "get",
                "serviceaccounts",
                "-A",
                "--field-selector=metadata.name=default",
                "-o",
                "json",
            )
            have = {sa["metadata"]["namespace"] for sa in json.loads(listed.stdout)["items"]}
            return wanted <= have

        self.control_plane.wait_for(service_accounts_exist, what="default ServiceAccounts")

    def refused(self, case: GoldenCase, where: str, obj: Object, stderr: str) -> None:
        """Record a refusal: the input's own fault if the apiserver refuses it without us."""
        own = _refusal_without_webhook(self.control_plane, case.cluster_namespace, obj)
        if own is not None and own == _reason(stderr):
            self.invalid_inputs.add(case.stem)
        else:
            self.failures.append(f"{where}: refused: {stderr.strip()}")

    def dry_run_cli_output(
        self, case: GoldenCase, where: str, given: Object, expected: Object
    ) -> None:
        """The offline CLI's injected workload must pass the apiserver's validation."""
        workload = dict(expected)
        workload["metadata"] = {k: v for k, v in expected["metadata"].items() if k != "namespace"}
        dry = self.control_plane.kubectl(
            "-n",
            case.cluster_namespace,
            "create",
            "--dry-run=server",
            "-f",
            "-",
            input=json.dumps(workload),
            check=False,
        )
        if dry.returncode != 0:
            self.refused(case, f"{where} (CLI output)", given, dry.stderr)

    def check(self, case: GoldenCase, index: int, given: Object, expected: Object) -> None:
        """Create the pod for one input object and compare it with the golden output."""
        template, expected_template = _pod_template(given), _pod_template(expected)
        if template is None:
            return
        assert expected_template is not None
        where = f"{case.stem}[{index}] {given.get('kind')}"
        if given.get("kind") != "Pod":
            self.dry_run_cli_output(case, where, given, expected)
        pod = _as_pod(given, template, fallback_name=case.stem)
        try:
            stored = create(self.control_plane, case.cluster_namespace, pod)
        except ApiRefused as error:
            self.refused(case, where, pod, error.message)
            return
        self.checked += 1
        want_injected = is_injected(expected_template)
        if is_injected(stored) != want_injected:
            self.failures.append(f"{where}: injected={is_injected(stored)}, want {want_injected}")
            return
        if not want_injected:
            return
        spec, want_spec = stored["spec"], expected_template["spec"]
        got = _by_name(spec.get("containers")) | _by_name(spec.get("initContainers"))
        want = _by_name(want_spec.get("containers")) | _by_name(want_spec.get("initContainers"))
        for name in (PROXY, INIT):
            for key in ("image", "command", "args", "restartPolicy"):
                if got[name].get(key) != want[name].get(key):
                    self.failures.append(f"{where}: {name}.{key} differs from the golden")


def test_every_injected_golden_input_is_admitted_and_stored_as_the_offline_cli_injects_it(
    control_plane: ControlPlane, webhook: InstalledWebhook, namespaces: Namespaces, meshed: str
) -> None:
    """The cluster path (apiserver -> /mutate) and the offline path agree, and both validate.

    Pods are created as they are; workloads as their pod template turned
    into a Pod (what the controller would create), and the CLI's injected
    workload itself is checked with ``--dry-run=server``. The stored pod
    must carry the same proxy and init container (image, command, args,
    restartPolicy) as the golden output.
    """
    cases = _golden_cases()
    assert len(cases) > 20
    run = _GoldenRun(control_plane)
    namespaces.names.extend(case.cluster_namespace for case in cases)
    run.create_namespaces(cases)
    for case in cases:
        for index, (given, expected) in enumerate(zip(case.inputs, case.expected, strict=True)):
            run.check(case, index, given, expected)

    assert not run.failures, "\n".join(run.failures)
    assert run.invalid_inputs == set(INVALID_AS_OBJECTS)
    assert run.checked >= len(cases) - len(INVALID_AS_OBJECTS)
