"""``check`` and ``uninject`` in policy mode, against a real kube-apiserver.

The policy install is manifests/policy applied as it is (server-side apply):
no Deployment, Service, certificate or webhook configuration. ``check``
recognises the mode (the webhook checks skipped, the policies compared with
this build's rendering, a dry-run pod injected), tells a pod the installed
policy injected from one an earlier policy injected, and fails on a policy
edited by hand. ``uninject`` takes a policy-injected pod, as the API server
stored it, back to the pod as written.
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

from harness.kube.control_plane import ControlPlane
from harness.server import CLI
from tests.e2e.check.shared import CheckRun, run_check
from tests.e2e.policy_api import Api
from tests.e2e.policy_modes import normalised, pod_with, wait_until
from webhook.contract import constants
from webhook.manifests.config_file import load_config
from webhook.policy.render import render_policy

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parents[2]
POLICY_YAML = ROOT / "manifests" / "policy" / "policy.yaml"
CONFIG = ROOT / "manifests" / "base" / "injector-config.yaml"
Object = dict[str, Any]


def apply(control_plane: ControlPlane, objects: list[Object]) -> None:
    control_plane.kubectl(
        "apply", "--server-side", "--force-conflicts", "-f", "-",
        input=yaml.safe_dump_all(objects),
    )  # fmt: skip


@pytest.fixture(scope="module")
def policy_install(control_plane: ControlPlane) -> Iterator[str]:
    """manifests/policy applied, and an opted-in namespace where it injects."""
    objects = list(yaml.safe_load_all(POLICY_YAML.read_text(encoding="utf-8")))
    apply(control_plane, objects)
    namespace = f"pc-{uuid.uuid4().hex[:6]}"
    control_plane.create_namespace(namespace, labels={"sidecar-injection": "enabled"})
    api = Api(control_plane)

    def serving() -> bool:
        status, pod = api.dry_run_pod(namespace, pod_with(name="probe"))
        bad = pod_with(name="probe", annotations={constants.PREFIX + "log-level": "probe"})
        refused = api.dry_run_pod(namespace, bad)[0] >= 400
        return (
            status < 300
            and constants.STATUS_ANNOTATION in pod["metadata"].get("annotations", {})
            and refused
        )

    wait_until(serving, what="both policies to be served")
    try:
        yield namespace
    finally:
        api.close()
        control_plane.kubectl("delete", "namespace", namespace, "--wait=false", check=False)
        control_plane.kubectl("delete", "-f", str(POLICY_YAML), "--ignore-not-found", check=False)


def test_check_recognises_policy_mode(control_plane: ControlPlane, policy_install: str) -> None:
    found: CheckRun = run_check(control_plane)
    statuses = found.statuses()
    assert statuses["webhook-configuration"] == "skip", found
    assert statuses["admission-policies"] == "pass", found
    assert statuses["injector-config"] == "pass", found
    assert statuses["excluded-namespaces"] == "pass", found
    assert statuses["dry-run-injection"] == "pass", found
    assert statuses["outdated-sidecars"] == "pass", found
    for webhook_only in ("service-endpoints", "ca-bundle", "certificate-expiry", "replicas"):
        assert statuses[webhook_only] == "skip", found
    assert found.returncode == 0, found


def test_check_finds_the_pods_an_earlier_policy_injected(
    control_plane: ControlPlane, policy_install: str
) -> None:
    api = Api(control_plane)
    try:
        status, stored = api.call(
            "POST", f"/api/v1/namespaces/{policy_install}/pods", pod_with(name="early")
        )
        assert status == 201, stored
        assert (
            run_check(control_plane, "--namespace", policy_install).status("outdated-sidecars")
            == "pass"
        )
        # Another config (a new proxy version): the policy changes, the pod does not.
        config = load_config(CONFIG)
        newer = render_policy(
            type(config)(**{**_fields(config), "proxy": _with_version(config.proxy, "v1.41.0")})
        )
        apply(control_plane, newer)
        digest = newer[0]["metadata"]["annotations"][constants.PREFIX + "policy-digest"]

        def served() -> bool:
            _, pod = api.dry_run_pod(policy_install, pod_with(name="probe"))
            return digest in pod["metadata"].get("annotations", {}).get(
                constants.STATUS_ANNOTATION, ""
            )

        wait_until(served, what="the new policy to inject")
        found = run_check(control_plane, "--namespace", policy_install)
        outdated = found.check("outdated-sidecars")
        assert outdated["status"] == "warn", found
        assert "early" in json.dumps(outdated["data"]), found
        assert found.status("admission-policies") == "pass", found
    finally:
        api.call("DELETE", f"/api/v1/namespaces/{policy_install}/pods/early")
        apply(control_plane, list(yaml.safe_load_all(POLICY_YAML.read_text(encoding="utf-8"))))
        api.close()


def _fields(obj: Any) -> dict[str, Any]:
    return {name: getattr(obj, name) for name in obj.__dataclass_fields__}


def _with_version(proxy: Any, version: str) -> Any:
    return type(proxy)(**{**_fields(proxy), "version": version})


def test_check_fails_on_a_policy_edited_by_hand(
    control_plane: ControlPlane, policy_install: str
) -> None:
    control_plane.kubectl(
        "patch", "validatingadmissionpolicybinding", "sidecar-injector-namespace", "--type=json",
        "-p", json.dumps([{"op": "replace", "path": "/spec/validationActions", "value": ["Warn"]}]),
    )  # fmt: skip
    try:
        found = run_check(control_plane, "--namespace", policy_install)
        policies = found.check("admission-policies")
        assert policies["status"] == "fail", found
        assert "validationActions" in policies["message"], found
        assert found.returncode != 0
    finally:
        # Applying again would merge the lists (the patch's manager owns "Warn").
        control_plane.kubectl(
            "delete", "validatingadmissionpolicybinding", "sidecar-injector-namespace"
        )
        apply(control_plane, list(yaml.safe_load_all(POLICY_YAML.read_text(encoding="utf-8"))))


def test_uninject_takes_a_policy_injected_pod_back_to_the_pod_as_written(
    control_plane: ControlPlane, policy_install: str
) -> None:
    api = Api(control_plane)
    plain = f"pp-{uuid.uuid4().hex[:6]}"
    control_plane.create_namespace(plain, labels={"sidecar-injection": "disabled"})
    try:
        written = pod_with(name="web", annotations={constants.PREFIX + "log-level": "info"})
        written["spec"]["initContainers"] = [{"name": "setup", "image": "registry.invalid/i:1"}]
        status, injected = api.dry_run_pod(policy_install, written)
        assert status == 201, injected
        assert constants.STATUS_ANNOTATION in injected["metadata"]["annotations"]
        done = subprocess.run(
            [CLI, "uninject", "-f", "-", "-o", "json"],
            input=json.dumps(injected),
            capture_output=True,
            text=True,
            check=True,
        )
        taken_out = json.loads(done.stdout)
        status, as_written = api.dry_run_pod(plain, written)
        assert status == 201, as_written
        assert normalised(taken_out) == normalised(as_written)
    finally:
        api.close()
        control_plane.kubectl("delete", "namespace", plain, "--wait=false", check=False)
