"""Injection as users see it: selectors, opt-in and opt-out, dry runs, refusals, native mode.

Everything below the HTTP edge is tested elsewhere with imitations of the
apiserver; these ask the real kube-apiserver. The install they share is in
``conftest.py``; whether the webhook was *called* is read from its ``/metrics``.
"""

from __future__ import annotations

import json

import pytest
import yaml

from harness.kube.control_plane import ControlPlane, KubectlError
from harness.kube.install import (
    INIT,
    NAMESPACE,
    NAMESPACE_WEBHOOK,
    PROXY,
    InstalledWebhook,
    Object,
    container_names,
    create,
    get_pod,
    init_container_names,
    is_injected,
    pod_manifest,
    wait_until_injecting,
)
from tests.e2e.webhook.shared import EFFECT_TIMEOUT, ENABLED, Namespaces, proxy_of, unique

pytestmark = pytest.mark.cluster


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
        create(control_plane, "kube-system", _restricted_pod(unique("opt-in"), labels=opt_in)),
        create(control_plane, NAMESPACE, _restricted_pod(unique("opt-in"), labels=opt_in)),
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
        stored.append(create(control_plane, "kube-system", _restricted_pod(unique("enabled"))))
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
    assert proxy_of(first)["resources"]["requests"]["cpu"] == "100m"  # the install's config

    control_plane.kubectl("label", "namespace", namespace, "sidecar.mesh.io/proxy-cpu-request=250m")
    seen: list[str] = []

    def next_pod_has_new_request() -> bool:
        pod = create(control_plane, namespace, pod_manifest(f"after-{len(seen)}"))
        seen.append(proxy_of(pod)["resources"]["requests"]["cpu"])
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
        control_plane.kubectl("-n", meshed, "create", "-f", "-", input=json.dumps(pod))

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
    assert proxy_of(stored)["restartPolicy"] == "Always"
