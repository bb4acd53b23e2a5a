"""Telling users why, against the real API server and controller-manager: Events and ``why``.

The install is applied as in ``tests/e2e/webhook/`` and served by a local
``serve``, which here authenticates as the install's own ServiceAccount (a
client certificate for ``system:serviceaccount:mesh-system:sidecar-injector``,
which RBAC treats as that account): what it may do is exactly what the
install's ClusterRole grants, so the RBAC the manifests ship is what is
tested. Its ``POD_NAME`` is set as the Deployment sets it.

Events are read back through the API (``events.k8s.io/v1``, which lists the
controllers' core events too), and ``kubectl describe`` is checked to show
them. ``why`` runs as users run it, the CLI with the admin kubeconfig.
Tests run in file order; the one that takes the Events RBAC away puts it
back.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from harness.kube.control_plane import ControlPlane
from harness.kube.install import (
    NAMESPACE,
    SERVICE,
    InstalledWebhook,
    Object,
    create,
    is_injected,
    wait_until_injecting,
)
from harness.server import CLI, Server, running_server
from harness.tls_client import https_get

pytestmark = pytest.mark.cluster

SERVICE_ACCOUNT = f"system:serviceaccount:{NAMESPACE}:{SERVICE}"
INSTANCE = "sidecar-injector-5d8f9c-e2e01"
REPORTER = "sidecar.mesh.io/injector"
ENABLED = {"sidecar-injection": "enabled"}
# Informers and the controller-manager on a loaded two-core machine.
EFFECT_TIMEOUT = 60.0
# 1,000 pods through the webhook, and the last series count (written at most
# every 10 s) after them.
BULK_TIMEOUT = 300.0
# Excluded by the serving process's config but not by the webhook configuration's
# selectors (the two drifted apart): one skip the webhook itself still decides,
# since matchConditions keep every skip the pod shows from reaching it.
EXCLUDED_BY_CONFIG = "events-config-excluded"


class ServiceAccountWebhook(InstalledWebhook):
    """The install served as its own ServiceAccount (module docstring)."""

    def start_process(self) -> Server:
        if self._server is not None:
            return self._server
        self._starts += 1
        config = yaml.safe_load(self.config_file.read_text(encoding="utf-8"))
        config["excludedNamespaces"] = [*config.get("excludedNamespaces", []), EXCLUDED_BY_CONFIG]
        self.config_file.write_text(yaml.safe_dump(config), encoding="utf-8")
        kubeconfig = self.control_plane.write_user_kubeconfig(
            self.workdir / "service-account.kubeconfig",
            SERVICE_ACCOUNT,
            "system:serviceaccounts",
            f"system:serviceaccounts:{NAMESPACE}",
        )
        self._server = self._server_stack.enter_context(
            running_server(
                self.workdir / f"serve-{self._starts}",
                cert_dir=self.certs,
                args=["--config", str(self.config_file), "--kubeconfig", str(kubeconfig)],
                env={"POD_NAME": INSTANCE},
            )
        )
        self.control_plane.route_service_to_loopback(
            NAMESPACE, SERVICE, port=self._server.port, port_name=self.port_name
        )
        return self._server


def _wait_until_the_install_namespace_is_gone(control_plane: ControlPlane) -> None:
    """Nothing can be created in mesh-system while it is terminating (returns at once when
    it does not exist). An install's close waits for it too, but gives up at its timeout
    without failing, so an earlier module's may still be going."""
    control_plane.kubectl(
        "wait", "--for=delete", f"namespace/{NAMESPACE}", "--timeout=120s",
        check=False, timeout=150,
    )  # fmt: skip


@pytest.fixture(scope="module")
def webhook(control_plane: ControlPlane) -> Iterator[ServiceAccountWebhook]:
    _wait_until_the_install_namespace_is_gone(control_plane)  # an earlier module's
    install = ServiceAccountWebhook(control_plane)
    try:
        install.start()
        yield install
    finally:
        try:
            # Deleted only now: deleting it while its Event series is still being
            # written would log a failed write, which the log's rate limit then
            # lets stand for the next failure a test waits to see.
            control_plane.kubectl(
                "delete", "namespace", EXCLUDED_BY_CONFIG, "--ignore-not-found", "--wait=false"
            )
            install.close()
        finally:
            _wait_until_the_install_namespace_is_gone(control_plane)


@pytest.fixture(scope="module")
def meshed(control_plane: ControlPlane, webhook: ServiceAccountWebhook) -> Iterator[str]:
    name = f"events-{uuid.uuid4().hex[:6]}"
    control_plane.create_namespace(name, labels=ENABLED)
    try:
        wait_until_injecting(control_plane, name, timeout=EFFECT_TIMEOUT)
        yield name
    finally:
        control_plane.kubectl("delete", "namespace", name, "--wait=false", check=False)


# --- helpers --------------------------------------------------------------------------------


def deployment(
    name: str, *, replicas: int = 2, annotations: dict[str, str] | None = None
) -> Object:
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels, "annotations": annotations or {}},
                "spec": {"containers": [{"name": "app", "image": "registry.invalid/app:1"}]},
            },
        },
    }


def replicaset_of(control_plane: ControlPlane, namespace: str, app: str) -> str:
    """The name of the Deployment's one ReplicaSet, once the controller made it."""
    names: list[str] = []

    def made() -> bool:
        listed = control_plane.kubectl(
            "-n", namespace, "get", "replicasets", "-l", f"app={app}", "-o", "json"
        )
        names[:] = [rs["metadata"]["name"] for rs in json.loads(listed.stdout)["items"]]
        return len(names) == 1

    control_plane.wait_for(made, what=f"the ReplicaSet of {app}", timeout=EFFECT_TIMEOUT)
    return names[0]


def events_about(
    control_plane: ControlPlane, namespace: str, kind: str, name: str, reason: str
) -> list[Object]:
    """Events (events.k8s.io/v1, the controllers' core events included) about one object."""
    listed = control_plane.admin_api().items(
        f"/apis/events.k8s.io/v1/namespaces/{namespace}/events"
    )
    return [
        event
        for event in listed
        if event.get("reason") == reason
        and (event.get("regarding") or {}).get("kind") == kind
        and (event.get("regarding") or {}).get("name") == name
    ]


def wait_for_event(
    control_plane: ControlPlane, namespace: str, kind: str, name: str, reason: str
) -> Object:
    found: list[Object] = []

    def there() -> bool:
        found[:] = events_about(control_plane, namespace, kind, name, reason)
        return bool(found)

    control_plane.wait_for(there, what=f"a {reason} Event on {kind} {name}", timeout=EFFECT_TIMEOUT)
    return found[0]


def occurrences(events: list[Object]) -> int:
    """How many times the Events say it happened: each one's series count, or 1."""
    return sum((event.get("series") or {}).get("count", 1) for event in events)


def why(control_plane: ControlPlane, namespace: str, target: str) -> dict[str, Any]:
    """``sidecar-injector why -o json`` as users run it."""
    done = subprocess.run(
        [CLI, "why", "-n", namespace, target, "--kubeconfig", str(control_plane.kubeconfig),
         "-o", "json"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    answer: dict[str, Any] = json.loads(done.stdout)
    return answer


def events_total(server: Server, outcome: str) -> float:
    """``sidecar_injector_events_total`` for ``outcome``, every reason together."""
    _, body, _ = https_get(server.port, server.ca_file, "/metrics", timeout=30)
    total = 0.0
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            if sample.name == "sidecar_injector_events_total" and (
                sample.labels.get("outcome") == outcome
            ):
                total += sample.value
    return total


# --- Events --------------------------------------------------------------------------------


def test_a_deployment_in_an_opted_in_namespace_gets_injected_on_its_replicaset(
    control_plane: ControlPlane, webhook: ServiceAccountWebhook, meshed: str
) -> None:
    create(control_plane, meshed, deployment("web"))
    replicaset = replicaset_of(control_plane, meshed, "web")

    event = wait_for_event(control_plane, meshed, "ReplicaSet", replicaset, "Injected")

    assert event["type"] == "Normal"
    assert event["reportingController"] == REPORTER
    assert event["reportingInstance"] == INSTANCE
    assert event["action"] == "InjectSidecar"
    assert event["regarding"]["apiVersion"] == "apps/v1"
    assert event["note"] == (
        f"mesh-proxy and mesh-init injected: namespace {meshed} is labelled"
        " sidecar-injection=enabled"
    )
    described = control_plane.kubectl("-n", meshed, "describe", "replicaset", replicaset).stdout
    assert "Injected" in described
    assert REPORTER in described

    answer = why(control_plane, meshed, "deploy/web")
    assert answer["injected"] is True
    assert answer["code"] == "namespace-enabled"
    assert answer["webhook"]["calledBy"] == ["namespace.sidecar.mesh.io"]
    assert answer["config"].startswith(f"ConfigMap {NAMESPACE}/sidecar-injector-config")
    assert answer["pods"]["examined"] == 2
    assert answer["pods"]["injected"] == 2
    assert answer["pods"]["outdated"] == 0
    assert answer["fix"] is None


def test_a_skip_that_reaches_the_webhook_gets_injection_skipped(
    control_plane: ControlPlane, webhook: ServiceAccountWebhook, meshed: str
) -> None:
    control_plane.create_namespace(EXCLUDED_BY_CONFIG, labels=ENABLED)
    create(control_plane, EXCLUDED_BY_CONFIG, deployment("legacy"))
    replicaset = replicaset_of(control_plane, EXCLUDED_BY_CONFIG, "legacy")

    event = wait_for_event(
        control_plane, EXCLUDED_BY_CONFIG, "ReplicaSet", replicaset, "InjectionSkipped"
    )

    assert event["type"] == "Normal"
    assert (
        event["note"] == f"not injected: namespace {EXCLUDED_BY_CONFIG} is excluded from injection"
    )


def test_a_skip_the_pod_shows_never_reaches_the_webhook_and_why_explains_it(
    control_plane: ControlPlane, webhook: ServiceAccountWebhook, meshed: str
) -> None:
    # An opt-out by annotation: the webhook configuration's matchConditions keep
    # the pod from the webhook, so no Event; why says what happened.
    opted_out = deployment("optout", annotations={"sidecar.mesh.io/inject": "false"})
    create(control_plane, meshed, opted_out)
    replicaset = replicaset_of(control_plane, meshed, "optout")

    def both_made() -> bool:
        listed = control_plane.kubectl(
            "-n", meshed, "get", "pods", "-l", "app=optout", "-o", "name"
        )
        return len(listed.stdout.split()) == 2

    control_plane.wait_for(
        both_made, what="the opted-out Deployment's pods", timeout=EFFECT_TIMEOUT
    )

    answer = why(control_plane, meshed, "deploy/optout")
    assert answer["injected"] is False
    assert answer["code"] == "pod-opted-out"
    assert answer["reason"] == "pod annotation sidecar.mesh.io/inject=false"
    assert answer["webhook"]["calledBy"] == []
    assert answer["pods"]["withoutSidecar"] == 2
    assert answer["fix"] is None  # nothing to restart: not injecting is what it asks for
    for reason in ("Injected", "InjectionSkipped", "InjectionRefused"):
        assert not events_about(control_plane, meshed, "ReplicaSet", replicaset, reason)


def test_a_bad_setting_gets_injection_refused_naming_the_key_next_to_the_controllers_own(
    control_plane: ControlPlane, webhook: ServiceAccountWebhook, meshed: str
) -> None:
    bad = deployment("broken", annotations={"sidecar.mesh.io/proxy-cpu-request": "lots"})
    create(control_plane, meshed, bad)
    replicaset = replicaset_of(control_plane, meshed, "broken")

    refused = wait_for_event(control_plane, meshed, "ReplicaSet", replicaset, "InjectionRefused")
    failed = wait_for_event(control_plane, meshed, "ReplicaSet", replicaset, "FailedCreate")

    assert refused["type"] == "Warning"
    assert "pod annotation sidecar.mesh.io/proxy-cpu-request='lots' is invalid" in refused["note"]
    assert "sidecar.mesh.io/proxy-cpu-request" in failed["note"]  # the controller's own
    answer = why(control_plane, meshed, "deployment/broken")
    assert answer["injected"] is False
    assert answer["code"] == "refused"
    assert "sidecar.mesh.io/proxy-cpu-request='lots'" in answer["reason"]
    assert answer["pods"]["examined"] == 0


def test_a_thousand_pods_of_one_replicaset_make_a_bounded_number_of_events(
    control_plane: ControlPlane, webhook: ServiceAccountWebhook, meshed: str
) -> None:
    labels = {"app": "bulk"}
    replicaset = {
        "apiVersion": "apps/v1",
        "kind": "ReplicaSet",
        "metadata": {"name": "bulk"},
        "spec": {
            "replicas": 1000,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{"name": "app", "image": "registry.invalid/app:1"}]},
            },
        },
    }
    create(control_plane, meshed, replicaset)

    def all_created() -> bool:
        listed = control_plane.admin_api().items(
            f"/api/v1/namespaces/{meshed}/pods", selector="app=bulk"
        )
        return len(listed) == 1000

    control_plane.wait_for(
        all_created, what="1,000 pods of the ReplicaSet", timeout=BULK_TIMEOUT, interval=2.0
    )

    def counted() -> bool:
        return (
            occurrences(events_about(control_plane, meshed, "ReplicaSet", "bulk", "Injected"))
            >= 1000
        )

    control_plane.wait_for(
        counted, what="the series to count 1,000 pods", timeout=BULK_TIMEOUT, interval=2.0
    )
    events = events_about(control_plane, meshed, "ReplicaSet", "bulk", "Injected")
    # One replica, one series; a new Event only after a failed write.
    assert 1 <= len(events) <= 3, [e["metadata"]["name"] for e in events]
    assert events[0]["series"]["count"] >= 2

    answer = why(control_plane, meshed, "rs/bulk")
    assert answer["injected"] is True
    assert answer["pods"]["examined"] == 500  # the bound on pods examined
    assert answer["pods"]["complete"] is False
    assert answer["pods"]["injected"] == 500


def test_outdated_sidecars_are_found_by_why_with_the_command_to_replace_them(
    control_plane: ControlPlane, webhook: ServiceAccountWebhook, meshed: str
) -> None:
    control_plane.kubectl("label", "namespace", meshed, "sidecar.mesh.io/log-level=debug")
    try:
        answer = why(control_plane, meshed, "deploy/web")
        assert answer["pods"]["outdated"] == 2
        assert answer["fix"] == f"kubectl rollout restart -n {meshed} deployment/web"
    finally:
        control_plane.kubectl("label", "namespace", meshed, "sidecar.mesh.io/log-level-")


def test_with_events_forbidden_admissions_are_unaffected_and_failures_counted(
    control_plane: ControlPlane, webhook: ServiceAccountWebhook, meshed: str
) -> None:
    role = yaml.safe_load(control_plane.kubectl("get", "clusterrole", SERVICE, "-o", "yaml").stdout)
    (events_rule,) = [r for r in role["rules"] if r["apiGroups"] == ["events.k8s.io"]]
    index = role["rules"].index(events_rule)
    failed_before = events_total(webhook.server, "failed")
    remove = [{"op": "remove", "path": f"/rules/{index}"}]
    control_plane.kubectl("patch", "clusterrole", SERVICE, "--type=json", "-p", json.dumps(remove))
    try:
        control_plane.wait_for(
            lambda: control_plane.kubectl(
                "auth", "can-i", "create", "events.events.k8s.io", "-n", meshed,
                f"--as={SERVICE_ACCOUNT}", check=False,
            ).stdout.strip() == "no",
            what="RBAC to forbid the injector's Events",
            timeout=EFFECT_TIMEOUT,
        )  # fmt: skip
        create(control_plane, meshed, deployment("after", replicas=3))

        def pods() -> list[Object]:
            listed = control_plane.kubectl(
                "-n", meshed, "get", "pods", "-l", "app=after", "-o", "json"
            )
            items: list[Object] = json.loads(listed.stdout)["items"]
            return items

        control_plane.wait_for(
            lambda: len(pods()) == 3, what="the three pods", timeout=EFFECT_TIMEOUT
        )
        assert all(is_injected(pod) for pod in pods())
        control_plane.wait_for(
            lambda: events_total(webhook.server, "failed") > failed_before,
            what="the refused Events to be counted",
            timeout=EFFECT_TIMEOUT,
        )
        webhook.server.wait_for_log(
            "could not create the Injected Event for ReplicaSet", timeout=30
        )
        replicaset = replicaset_of(control_plane, meshed, "after")
        assert events_about(control_plane, meshed, "ReplicaSet", replicaset, "Injected") == []
        assert why(control_plane, meshed, "deploy/after")["injected"] is True
    finally:
        restore = [{"op": "add", "path": "/rules/-", "value": events_rule}]
        control_plane.kubectl(
            "patch", "clusterrole", SERVICE, "--type=json", "-p", json.dumps(restore)
        )


def test_why_explains_a_running_pod_and_gives_one_line_errors(
    control_plane: ControlPlane, webhook: ServiceAccountWebhook, meshed: str
) -> None:
    listed = control_plane.kubectl("-n", meshed, "get", "pods", "-l", "app=web", "-o", "json")
    name = json.loads(listed.stdout)["items"][0]["metadata"]["name"]
    answer = why(control_plane, meshed, f"po/{name}")
    assert answer["injected"] is True
    assert answer["pods"]["injected"] == 1

    missing = subprocess.run(
        [CLI, "why", "-n", meshed, "sts/nothing", "--kubeconfig", str(control_plane.kubeconfig)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert missing.returncode == 1
    assert missing.stdout == ""
    assert missing.stderr == (
        f"sidecar-injector: error: statefulset nothing in namespace {meshed} not found\n"
    )

    # A user who may not read deployments gets the API server's refusal, in one line.
    nobody = control_plane.write_user_kubeconfig(
        Path(webhook.workdir) / "nobody.kubeconfig", "nobody"
    )
    denied = subprocess.run(
        [CLI, "why", "-n", meshed, "deploy/web", "--kubeconfig", str(nobody)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert denied.returncode == 1
    assert denied.stderr.startswith(
        f"sidecar-injector: error: no access to deployment web in namespace {meshed}: HTTP 403: "
    )
    assert denied.stderr.count("\n") == 1
