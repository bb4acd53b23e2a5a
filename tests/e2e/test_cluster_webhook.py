"""The installed webhook against a real kube-apiserver and kube-controller-manager.

Everything below the HTTP edge is tested elsewhere with imitations of the
apiserver. These tests ask the real one: does it call us when (and only when)
the install's selectors say so, accept our patch and the pod it produces
under its own validation, run controllers' pods through us, show users our
refusal text, cope with another mutating webhook, and refuse pods as
``failurePolicy: Fail`` promises when we are down.

Set-up (:mod:`harness.kube.install`): ``sidecar-injector certs`` and
``scripts/render_install.py`` into a temporary directory, ``kubectl apply`` of
the whole rendered install (the Deployment too: its pods are admitted but stay
Pending, as nothing runs them), and a local ``sidecar-injector serve`` behind
the install's Service via an EndpointSlice to 127.0.0.1. Whether the webhook
was *called* is read from its ``/metrics``; tests run in file order and the
one that stops the process is last.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import shlex
import socket
import tempfile
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from harness.kube.control_plane import ControlPlane, KubectlError
from harness.kube.install import (
    INIT,
    NAMESPACE,
    NAMESPACE_WEBHOOK,
    PROXY,
    SERVICE,
    InstalledWebhook,
    Object,
    container_names,
    create,
    get_pod,
    init_container_names,
    installed_webhook,
    is_injected,
    pod_manifest,
    wait_until_injecting,
)
from harness.server import running_server
from tests.builders import GOLDEN
from tests.e2e.other_webhook import ADDED_CONTAINER, ContainerAddingWebhook

pytestmark = pytest.mark.cluster

ENABLED = {"sidecar-injection": "enabled"}
# Long enough for informers on a loaded CI machine, short enough to fail fast.
EFFECT_TIMEOUT = 30.0


def _unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


@dataclass
class Namespaces:
    """Namespaces this module created; deleted (without waiting) at the end."""

    control_plane: ControlPlane
    names: list[str] = field(default_factory=list)

    def create(self, prefix: str, *, labels: dict[str, str] | None = None) -> str:
        name = _unique(prefix)
        self.control_plane.create_namespace(name, labels=labels)
        self.names.append(name)
        return name

    def delete_all(self) -> None:
        if self.names:
            self.control_plane.kubectl(
                "delete",
                "namespace",
                *self.names,
                "--wait=false",
                "--ignore-not-found",
                check=False,
            )


@pytest.fixture(scope="module")
def webhook(control_plane: ControlPlane) -> Iterator[InstalledWebhook]:
    """The rendered install, applied, served by a local process; removed afterwards."""
    with installed_webhook(control_plane) as install:
        yield install


@pytest.fixture(scope="module")
def namespaces(control_plane: ControlPlane) -> Iterator[Namespaces]:
    made = Namespaces(control_plane)
    try:
        yield made
    finally:
        made.delete_all()


@pytest.fixture(scope="module")
def meshed(control_plane: ControlPlane, webhook: InstalledWebhook, namespaces: Namespaces) -> str:
    """A namespace labelled ``sidecar-injection=enabled`` where injection is live."""
    name = namespaces.create("meshed", labels=ENABLED)
    wait_until_injecting(control_plane, name, timeout=EFFECT_TIMEOUT)
    return name


def _proxy(pod: Object) -> Object:
    for container in pod["spec"].get("containers", []) + pod["spec"].get("initContainers", []):
        if container["name"] == PROXY:
            found: Object = container
            return found
    raise AssertionError(f"no {PROXY} in {container_names(pod)} / {init_container_names(pod)}")


# --- injection as users see it --------------------------------------------------------


def test_a_pod_created_in_an_enabled_namespace_is_stored_with_the_proxy_and_init_container(
    control_plane: ControlPlane, meshed: str
) -> None:
    create(control_plane, meshed, pod_manifest("web"))
    stored = get_pod(control_plane, meshed, "web")

    # Native sidecar, the default: the proxy is an init container after mesh-init.
    assert container_names(stored) == ["app"]
    assert init_container_names(stored) == [INIT, PROXY]
    status = json.loads(stored["metadata"]["annotations"]["sidecar.mesh.io/status"])
    assert status["containers"] == []
    assert status["initContainers"] == [INIT, PROXY]
    assert stored["metadata"]["annotations"]["kubectl.kubernetes.io/default-container"] == "app"
    assert stored["status"]["phase"] == "Pending"


def test_a_deployments_pods_made_by_the_controller_manager_are_all_injected(
    control_plane: ControlPlane, meshed: str
) -> None:
    labels = {"app": "shop"}
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "shop"},
        "spec": {
            "replicas": 3,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{"name": "shop", "image": "registry.invalid/shop:1"}]},
            },
        },
    }
    create(control_plane, meshed, deployment)

    def pods() -> list[Object]:
        listed = control_plane.kubectl("-n", meshed, "get", "pods", "-l", "app=shop", "-o", "json")
        items: list[Object] = json.loads(listed.stdout)["items"]
        return items

    control_plane.wait_for(lambda: len(pods()) == 3, what="three pods of the Deployment")
    replicasets = json.loads(
        control_plane.kubectl("-n", meshed, "get", "replicasets", "-o", "json").stdout
    )["items"]
    (replicaset,) = [rs for rs in replicasets if rs["metadata"]["name"].startswith("shop-")]
    assert replicaset["metadata"]["ownerReferences"][0]["kind"] == "Deployment"
    for pod in pods():
        owner = pod["metadata"]["ownerReferences"][0]
        assert (owner["kind"], owner["name"]) == ("ReplicaSet", replicaset["metadata"]["name"])
        assert pod["metadata"]["generateName"] == f"{replicaset['metadata']['name']}-"
        assert container_names(pod) == ["shop"]
        assert init_container_names(pod) == [INIT, PROXY]
        assert pod["status"]["phase"] == "Pending"


def test_a_pod_in_an_unlabelled_namespace_is_not_injected_unless_it_opts_in_with_a_label(
    control_plane: ControlPlane, webhook: InstalledWebhook, namespaces: Namespaces, meshed: str
) -> None:
    plain = namespaces.create("plain")

    before = webhook.metrics()
    ignored = create(control_plane, plain, pod_manifest("ignored"))
    assert container_names(ignored) == ["app"]
    assert init_container_names(ignored) == []
    # Neither webhook's selector matches, so the apiserver does not even ask.
    assert webhook.metrics().mutate_calls() == before.mutate_calls()

    opted_in = create(
        control_plane, plain, pod_manifest("opted-in", labels={"sidecar.mesh.io/inject": "true"})
    )
    assert container_names(opted_in) == ["app"]
    assert init_container_names(opted_in) == [INIT, PROXY]
    assert webhook.metrics().decided("pod-opted-in") == before.decided("pod-opted-in") + 1


def test_a_pod_labelled_inject_false_in_an_enabled_namespace_never_reaches_the_webhook(
    control_plane: ControlPlane, webhook: InstalledWebhook, meshed: str
) -> None:
    before = webhook.metrics()
    pod = create(
        control_plane, meshed, pod_manifest("opted-out", labels={"sidecar.mesh.io/inject": "false"})
    )
    after = webhook.metrics()

    assert container_names(pod) == ["app"]
    assert init_container_names(pod) == []
    assert after.mutate_calls() == before.mutate_calls()


def _restricted_pod(name: str, *, labels: dict[str, str] | None = None) -> Object:
    """A pod that the ``restricted`` Pod Security level (on mesh-system) admits."""
    pod = pod_manifest(name, labels=labels)
    pod["spec"]["securityContext"] = {
        "runAsNonRoot": True,
        "runAsUser": 65532,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    pod["spec"]["containers"][0]["securityContext"] = {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
    }
    return pod


def test_pods_in_kube_system_and_mesh_system_never_reach_the_webhook_even_when_they_opt_in(
    control_plane: ControlPlane, webhook: InstalledWebhook, namespaces: Namespaces, meshed: str
) -> None:
    opt_in = {"sidecar.mesh.io/inject": "true"}
    before = webhook.metrics()
    stored = [
        create(control_plane, "kube-system", _restricted_pod(_unique("opt-in"), labels=opt_in)),
        create(control_plane, NAMESPACE, _restricted_pod(_unique("opt-in"), labels=opt_in)),
    ]

    # The namespace webhook's own exclusion: label kube-system as enabled. To
    # know the apiserver has seen that label before the pod arrives, label a
    # fresh namespace afterwards and wait for injection there (namespace
    # events reach the apiserver's informer in order).
    control_plane.kubectl("label", "namespace", "kube-system", "sidecar-injection=enabled")
    try:
        barrier = namespaces.create("barrier")
        control_plane.kubectl("label", "namespace", barrier, "sidecar-injection=enabled")
        wait_until_injecting(control_plane, barrier, timeout=EFFECT_TIMEOUT)
        calls_before_pod = webhook.metrics().mutate_calls()
        stored.append(create(control_plane, "kube-system", _restricted_pod(_unique("enabled"))))
        calls_after_pod = webhook.metrics().mutate_calls()
    finally:
        control_plane.kubectl("label", "namespace", "kube-system", "sidecar-injection-")

    for pod in stored:
        assert not is_injected(pod), pod["metadata"]["name"]
    assert calls_after_pod == calls_before_pod
    # Between the snapshots only the barrier's canaries were admitted.
    assert webhook.metrics().decided("excluded-namespace") == before.decided("excluded-namespace")
    # mesh-system's own Deployment got its pods (Pending) without the webhook.
    control_plane.wait_for(
        lambda: bool(
            control_plane.kubectl(
                "-n",
                NAMESPACE,
                "get",
                "pods",
                "-l",
                "app.kubernetes.io/name=sidecar-injector",
                "-o",
                "name",
            ).stdout.strip()
        ),
        what="the install's own Deployment pods in mesh-system",
    )


def test_a_namespace_setting_label_change_applies_to_the_next_pod_without_a_restart(
    control_plane: ControlPlane, webhook: InstalledWebhook, namespaces: Namespaces
) -> None:
    namespace = namespaces.create("tuning", labels=ENABLED)
    wait_until_injecting(control_plane, namespace, timeout=EFFECT_TIMEOUT)
    pid = webhook.server.proc.pid
    first = create(control_plane, namespace, pod_manifest("before"))
    assert _proxy(first)["resources"]["requests"]["cpu"] == "100m"  # the install's config

    control_plane.kubectl("label", "namespace", namespace, "sidecar.mesh.io/proxy-cpu-request=250m")
    seen: list[str] = []

    def next_pod_has_new_request() -> bool:
        pod = create(control_plane, namespace, pod_manifest(f"after-{len(seen)}"))
        seen.append(_proxy(pod)["resources"]["requests"]["cpu"])
        return seen[-1] == "250m"

    control_plane.wait_for(
        next_pod_has_new_request, what="the new cpu request", timeout=EFFECT_TIMEOUT, interval=0.3
    )
    assert webhook.server.proc.pid == pid
    assert webhook.server.proc.poll() is None
    assert set(seen[:-1]) <= {"100m"}, seen


def test_a_server_side_dry_run_shows_the_injected_pod_and_stores_nothing(
    control_plane: ControlPlane, meshed: str
) -> None:
    done = control_plane.kubectl(
        "-n",
        meshed,
        "create",
        "--dry-run=server",
        "-o",
        "yaml",
        "-f",
        "-",
        input=json.dumps(pod_manifest("preview")),
    )
    previewed = yaml.safe_load(done.stdout)

    assert container_names(previewed) == ["app"]
    assert init_container_names(previewed) == [INIT, PROXY]
    missing = control_plane.kubectl("-n", meshed, "get", "pod", "preview", check=False)
    assert missing.returncode != 0
    assert "NotFound" in missing.stderr


def test_an_invalid_setting_annotation_fails_kubectl_create_with_our_message(
    control_plane: ControlPlane, meshed: str
) -> None:
    pod = pod_manifest("lots", annotations={"sidecar.mesh.io/proxy-cpu-request": "lots"})
    with pytest.raises(KubectlError) as refused:
        create(control_plane, meshed, pod)

    stderr = refused.value.stderr
    assert f'admission webhook "{NAMESPACE_WEBHOOK}" denied the request' in stderr
    assert (
        "pod annotation sidecar.mesh.io/proxy-cpu-request='lots' is invalid: "
        "'lots' is not a Kubernetes quantity (e.g. 100m, 128Mi)"
    ) in stderr
    assert control_plane.kubectl("-n", meshed, "get", "pod", "lots", check=False).returncode != 0


def test_native_sidecar_mode_passes_the_apiservers_own_pod_validation(
    control_plane: ControlPlane, meshed: str
) -> None:
    pod = create(
        control_plane,
        meshed,
        pod_manifest("native", annotations={"sidecar.mesh.io/native-sidecar": "true"}),
    )
    stored = get_pod(control_plane, meshed, pod["metadata"]["name"])

    assert container_names(stored) == ["app"]
    assert PROXY in init_container_names(stored)
    assert INIT in init_container_names(stored)
    assert _proxy(stored)["restartPolicy"] == "Always"


# --- the engine's golden inputs, through the apiserver -------------------------------------

# Inputs the offline CLI injects but the cluster, by design, does not.
CLUSTER_DIFFERS = {
    # Webhook selectors see labels only; an opt-in annotation in a namespace
    # that is not enabled never reaches the webhook (see mutatingwebhook.yaml).
    "pod-opt-in-annotation": "opt-in by annotation is invisible to objectSelector",
}
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
        except KubectlError as error:
            self.refused(case, where, pod, error.stderr)
            return
        self.checked += 1
        want_injected = is_injected(expected_template) and case.stem not in CLUSTER_DIFFERS
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


# --- other webhooks, and our absence --------------------------------------------------------


def test_a_later_webhook_adding_a_container_leaves_exactly_one_injection(
    control_plane: ControlPlane,
    webhook: InstalledWebhook,
    namespaces: Namespaces,
) -> None:
    namespace = namespaces.create("layered", labels=ENABLED)
    configuration = f"zz-audit-{namespace}"
    with (
        tempfile.TemporaryDirectory(prefix="sidecar-injector-e2e-audit-") as certs,
        ContainerAddingWebhook(Path(certs), service_host=f"audit.{namespace}.svc") as other,
    ):
        control_plane.route_service_to_loopback(namespace, "audit", port=other.port)
        control_plane.kubectl(
            "apply",
            "-f",
            "-",
            input=json.dumps(
                other.configuration(name=configuration, namespace=namespace, service="audit")
            ),
        )
        try:
            # Canaries until both webhooks are live, then one pod to count calls on.
            control_plane.wait_for(
                lambda: (
                    ADDED_CONTAINER
                    in container_names(create(control_plane, namespace, pod_manifest(_unique("c"))))
                ),
                what="the second webhook",
                timeout=EFFECT_TIMEOUT,
            )
            wait_until_injecting(control_plane, namespace, timeout=EFFECT_TIMEOUT)
            before = webhook.metrics()
            create(control_plane, namespace, pod_manifest("layered"))
            after = webhook.metrics()
        finally:
            control_plane.kubectl(
                "delete", "mutatingwebhookconfiguration", configuration, "--ignore-not-found"
            )
    stored = get_pod(control_plane, namespace, "layered")

    names = container_names(stored)
    assert (names + init_container_names(stored)).count(PROXY) == 1
    assert names.count(ADDED_CONTAINER) == 1
    assert init_container_names(stored).count(INIT) == 1
    assert "app" in names
    # Called once for that pod (reinvocationPolicy Never): the other
    # webhook's later change and the token mounts do not bring it back.
    assert after.mutate_calls() - before.mutate_calls() == 1
    assert after.decided("already-injected") == before.decided("already-injected")


# --- never unmeshed by accident ----------------------------------------------------------


def _deployment(name: str, namespace: str) -> Object:
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{"name": "app", "image": "registry.invalid/app:1"}]},
            },
        },
    }


def _pods(control_plane: ControlPlane, namespace: str) -> list[Object]:
    listed = control_plane.kubectl("-n", namespace, "get", "pods", "-o", "json")
    items: list[Object] = json.loads(listed.stdout)["items"]
    return items


def test_a_label_set_in_the_same_second_as_a_deployment_is_honoured_20_times_out_of_20(
    control_plane: ControlPlane, webhook: InstalledWebhook, namespaces: Namespaces, meshed: str
) -> None:
    """Label a namespace and create a Deployment in one ``kubectl apply``, twenty times.

    The apiserver calls the webhook once its own informer sees the label;
    the webhook's watch may be a moment behind and still say "not opted
    in". Before skipping, the webhook reads the namespace from the API
    server, so every pod is injected whichever watch wins the race.
    """
    names = [namespaces.create("race") for _ in range(20)]
    recheck = 'sidecar_injector_namespace_fetches_total{reason="recheck",result="found"}'
    rechecks_before = webhook.server.metrics().get(recheck, 0.0)
    for name in names:
        labelled = {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": name, "labels": ENABLED},
        }
        control_plane.kubectl(
            "apply", "-f", "-", input=yaml.safe_dump_all([labelled, _deployment("app", name)])
        )
    control_plane.wait_for(
        lambda: all(_pods(control_plane, name) for name in names),
        what="a pod from every Deployment",
        timeout=EFFECT_TIMEOUT * 2,
    )
    unmeshed = [
        f"{name}/{pod['metadata']['name']}"
        for name in names
        for pod in _pods(control_plane, name)
        if not is_injected(pod)
    ]
    rechecks = webhook.server.metrics().get(recheck, 0.0) - rechecks_before
    # How the race went this time, for whoever reads a failure: pods our
    # cache would have skipped had it not read the namespace again.
    assert unmeshed == [], f"unmeshed: {unmeshed}; rechecks that found the namespace: {rechecks}"


class ClosableProxy:
    """A TCP relay to the apiserver that can be cut and restored on the same port.

    The webhook's namespace source reaches the API server only through it:
    closing it breaks the open watch and refuses new connections, as a
    network partition or a dead API server would.
    """

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = 0
        self._listener: socket.socket | None = None
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()

    def start(self) -> ClosableProxy:
        listener = socket.create_server(("127.0.0.1", self.port))  # SO_REUSEADDR: same port again
        self.port = listener.getsockname()[1]
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()
        return self

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            except OSError:
                client.close()
                continue
            with self._lock:
                self._open.update((client, upstream))
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        for sock in (source, sink):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        """Refuse new connections and break every open one."""
        if self._listener is not None:
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)
            self._listener.close()
            self._listener = None
        with self._lock:
            for sock in self._open:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            self._open.clear()


def _kubeconfig_via(control_plane: ControlPlane, port: int, path: Path) -> Path:
    config = yaml.safe_load(control_plane.kubeconfig.read_text())
    for cluster in config["clusters"]:
        cluster["cluster"]["server"] = f"https://127.0.0.1:{port}"
    path.write_text(yaml.safe_dump(config))
    return path


def test_with_the_namespace_source_cut_off_a_pod_is_refused_with_our_message_then_admitted(
    control_plane: ControlPlane, webhook: InstalledWebhook, namespaces: Namespaces, meshed: str
) -> None:
    """Fail closed: a namespace the webhook cannot read is not a namespace without labels.

    The install's Service is pointed at a second ``serve`` whose only way to
    the API server is a relay the test cuts. A namespace created meanwhile
    is unknown to it, so its pod is refused, with a message naming the
    namespace; once the relay is back the same pod is admitted, injected.
    """
    upstream = int(control_plane.server.rsplit(":", 1)[1])
    proxy = ClosableProxy(upstream).start()
    webhook.stop_process()
    try:
        with tempfile.TemporaryDirectory(prefix="sidecar-injector-e2e-cut-") as scratch:
            kubeconfig = _kubeconfig_via(control_plane, proxy.port, Path(scratch) / "kubeconfig")
            with running_server(
                Path(scratch) / "serve",
                cert_dir=webhook.certs,
                args=["--config", str(webhook.config_file), "--kubeconfig", str(kubeconfig)],
            ) as server:
                control_plane.route_service_to_loopback(
                    NAMESPACE, SERVICE, port=server.port, port_name=webhook.port_name
                )
                wait_until_injecting(control_plane, meshed, timeout=EFFECT_TIMEOUT)

                proxy.cut()
                cut_off = namespaces.create("cut-off", labels=ENABLED)
                with pytest.raises(KubectlError) as refused:
                    create(control_plane, cut_off, pod_manifest("while-cut"))
                message = refused.value.stderr
                assert f'admission webhook "{NAMESPACE_WEBHOOK}" denied the request' in message
                assert f"namespace {cut_off} could not be read" in message
                assert "refusing the pod rather than admitting it without its proxy" in message
                # Namespaces it already knew are still served from its cache.
                assert is_injected(create(control_plane, meshed, pod_manifest("cached-ok")))

                proxy.start()  # same port
                admitted: list[Object] = []

                def admitted_after_recovery() -> bool:
                    try:
                        admitted.append(create(control_plane, cut_off, pod_manifest("while-cut")))
                    except KubectlError:
                        return False
                    return True

                control_plane.wait_for(
                    admitted_after_recovery, what="admission after recovery", timeout=EFFECT_TIMEOUT
                )
                assert is_injected(admitted[-1])
                unavailable = server.metrics()[
                    'sidecar_injector_decisions_total{code="namespace-unavailable"}'
                ]
                assert unavailable >= 1
    finally:
        proxy.cut()
        webhook.start_process()
        wait_until_injecting(control_plane, meshed, timeout=EFFECT_TIMEOUT)


def test_a_pod_in_a_restricted_pod_security_namespace_gets_our_message_on_kubectl_apply(
    control_plane: ControlPlane, namespaces: Namespaces, meshed: str
) -> None:
    """Without our refusal PodSecurity rejects the injected pod, never mentioning the mesh."""
    restricted = namespaces.create(
        "restricted", labels={**ENABLED, "pod-security.kubernetes.io/enforce": "restricted"}
    )
    done = control_plane.kubectl(
        "-n", restricted, "apply", "-f", "-", input=json.dumps(pod_manifest("psa")), check=False
    )
    assert done.returncode != 0
    assert f'admission webhook "{NAMESPACE_WEBHOOK}" denied the request' in done.stderr
    assert restricted in done.stderr
    assert "restricted" in done.stderr
    assert "NET_ADMIN" in done.stderr


def test_with_the_webhook_process_stopped_enabled_namespaces_refuse_pods_and_others_do_not(
    control_plane: ControlPlane, webhook: InstalledWebhook, namespaces: Namespaces, meshed: str
) -> None:
    """Runs last: the process stays stopped (the module's teardown removes the install)."""
    plain = namespaces.create("unaffected")
    webhook.stop_process()

    with pytest.raises(KubectlError) as refused:
        create(control_plane, meshed, pod_manifest("while-down"))
    message = refused.value.stderr
    # What a user sees: the webhook's name, the Service URL the install
    # configures (with its timeoutSeconds), and why the call failed.
    assert "Internal error occurred" in message
    assert f'failed calling webhook "{NAMESPACE_WEBHOOK}"' in message
    assert f'Post "https://{SERVICE}.{NAMESPACE}.svc:443/mutate?timeout=5s"' in message
    assert "connection refused" in message

    elsewhere = create(control_plane, plain, pod_manifest("elsewhere"))
    assert container_names(elsewhere) == ["app"]
    # The objectSelector keeps opted-out pods away from the webhook, so they
    # can still be created in an enabled namespace while it is down.
    opted_out = create(
        control_plane,
        meshed,
        pod_manifest("opted-out-while-down", labels={"sidecar.mesh.io/inject": "false"}),
    )
    assert container_names(opted_out) == ["app"]
