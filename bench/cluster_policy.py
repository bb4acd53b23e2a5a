"""Policy mode in the end-to-end section (``bench.cluster``): its install and its namespaces.

The policies are rendered from the install's own config (what
``manifests/policy`` holds) and bound only to namespaces labelled
``POLICY_LABEL=policy``; the webhook configuration is kept from those, so
each pod meets one injector. Two such namespaces: one opted in with the
default settings, one that also sets every key (``EVERY_KEY``, as namespace
annotations), like the webhook's ``bench-meshed-all``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import yaml

from bench import workload
from bench.cluster_load import ClusterBenchError
from harness.kube.control_plane import ControlPlane
from harness.kube.install import CONFIGURATION
from webhook.contract import constants
from webhook.manifests.config_file import load_config
from webhook.policy.render import render_policy

if TYPE_CHECKING:
    from bench.cluster import Api

POLICY_LABEL: Final = "bench.sidecar.mesh.io/mode"
POLICY_NS: Final = "bench-policy"
POLICY_ALL_NS: Final = "bench-policy-all"
P: Final = constants.PREFIX
# Every setting, with a value a real namespace might carry (valid, and not the default).
EVERY_KEY: Final = {
    P + "proxy-version": "v1.40.0",
    P + "proxy-cpu-request": "50m",
    P + "proxy-cpu-limit": "1",
    P + "proxy-memory-request": "64Mi",
    P + "proxy-memory-limit": "256Mi",
    P + "log-level": "info",
    P + "include-inbound-ports": "8080,9090",
    P + "exclude-inbound-ports": "9091",
    P + "exclude-outbound-ports": "5432,6379",
    P + "include-outbound-cidrs": "10.0.0.0/8,fd00::/8",
    P + "exclude-outbound-cidrs": "10.96.0.0/12",
    P + "native-sidecar": "true",
    P + "hold-application": "false",
    P + "xds-address": "xds.mesh-system.svc:15010",
}


def install(control_plane: ControlPlane, api: Api, config_file: Path) -> None:
    """Apply the policies, keep the webhooks away from their namespaces, wait until they inject."""
    objects = render_policy(load_config(config_file))
    for obj in objects:
        if obj["kind"].endswith("Binding"):
            obj["spec"]["matchResources"]["namespaceSelector"]["matchExpressions"].append(
                {"key": POLICY_LABEL, "operator": "In", "values": ["policy"]}
            )
    control_plane.kubectl("apply", "--server-side", "-f", "-", input=yaml.safe_dump_all(objects))
    status, found = api.call(
        "GET",
        f"/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/{CONFIGURATION}",
    )
    if status != 200:
        raise ClusterBenchError(f"reading the webhook configuration: {status}")
    hooks = json.loads(found)["webhooks"]
    patch = [
        {
            "op": "add",
            "path": f"/webhooks/{index}/namespaceSelector/matchExpressions/-",
            "value": {"key": POLICY_LABEL, "operator": "NotIn", "values": ["policy"]},
        }
        for index in range(len(hooks))
    ]
    control_plane.kubectl(
        "patch", "mutatingwebhookconfiguration", CONFIGURATION, "--type=json",
        "-p", json.dumps(patch),
    )  # fmt: skip
    enabled = {constants.NAMESPACE_INJECTION_LABEL: constants.ENABLED, POLICY_LABEL: "policy"}
    control_plane.create_namespace(POLICY_NS, labels=enabled)
    control_plane.create_namespace(POLICY_ALL_NS, labels=enabled)
    control_plane.kubectl(
        "annotate", "namespace", POLICY_ALL_NS, *(f"{k}={v}" for k, v in EVERY_KEY.items())
    )
    for namespace in (POLICY_NS, POLICY_ALL_NS):
        _wait_injecting(api, namespace)


def every_key_namespace(control_plane: ControlPlane, name: str) -> None:
    """The webhook's namespace with every key set (as the policy's ``bench-policy-all``)."""
    control_plane.create_namespace(
        name, labels={constants.NAMESPACE_INJECTION_LABEL: constants.ENABLED}
    )
    control_plane.kubectl(
        "annotate", "namespace", name, *(f"{k}={v}" for k, v in EVERY_KEY.items())
    )


def _wait_injecting(api: Api, namespace: str) -> None:
    body = json.dumps(workload.one_container_pod(name_prefix="canary-")).encode()
    deadline = time.monotonic() + 120
    while True:
        status, answer = api.call("POST", f"/api/v1/namespaces/{namespace}/pods?dryRun=All", body)
        if status == 201 and b"mesh-proxy" in answer:
            return
        if time.monotonic() > deadline:
            raise ClusterBenchError(f"the policy never injected in {namespace}: {answer[:300]!r}")
        time.sleep(0.2)


def cluster_cpu(case: dict[str, Any]) -> float:
    """The cluster's CPU per pod: kube-apiserver + etcd + the webhook (when there is one)."""
    cpu = case["cpu_ms_per_pod"]
    return float(sum(cpu.get(name, 0.0) for name in ("kube-apiserver", "etcd", "webhook")))
