"""What the revision tests share: dry-run pods, which revision injected them, installed mixes.

The revisions are ``harness.kube.revision_install.ChartRevision``s served by
local processes; a pod's injector is told by its status annotation (the
revision records itself) and by which process's ``/mutate`` counter moved.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import yaml

from harness.kube.control_plane import ControlPlane
from harness.kube.install import PROXY, Object, container_names, init_container_names
from harness.kube.revision_install import ChartRevision
from webhook.cluster import kube
from webhook.cluster.reader import Cluster
from webhook.manifests.config_file import parse_config
from webhook.policy.render import render_policy

# Long enough for informers on a loaded CI machine, short enough to fail fast.
EFFECT_TIMEOUT = 60.0
ENABLED = {"sidecar-injection": "enabled"}
DISABLED = {"sidecar-injection": "disabled"}
REV = "sidecar.mesh.io/rev"
INJECT = "sidecar.mesh.io/inject"


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def api(control_plane: ControlPlane) -> Cluster:
    """A bounded client of the control plane (for dry-run pods, many and quickly)."""
    configuration = kube.load_configuration(control_plane.kubeconfig)
    return Cluster(kube.Connection(configuration), timeout=30)


def injected_by(stored: Object) -> str | None:
    """The revision whose sidecar the stored pod carries (None: no sidecar)."""
    if PROXY not in container_names(stored) + init_container_names(stored):
        return None
    status = json.loads(stored["metadata"]["annotations"]["sidecar.mesh.io/status"])
    revision: str = status.get("revision", "default")
    return revision


@dataclass
class Namespaces:
    """Namespaces these tests created; deleted (without waiting) at the end."""

    control_plane: ControlPlane
    names: list[str] = field(default_factory=list)

    def create(self, prefix: str, labels: Mapping[str, str] | None = None) -> str:
        name = unique(prefix)
        self.control_plane.create_namespace(name, labels=dict(labels or {}))
        self.names.append(name)
        return name

    def delete_all(self) -> None:
        if self.names:
            self.control_plane.kubectl(
                "delete", "namespace", *self.names, "--wait=false", "--ignore-not-found",
                check=False,
            )  # fmt: skip


@dataclass
class Revisions:
    """The package's revisions, all served; which of them are installed is a test's choice.

    Installing a revision here applies its webhook configuration (as rendered,
    with ``tags``); uninstalling deletes it. The processes keep serving.
    """

    control_plane: ControlPlane
    by_name: dict[str, ChartRevision]

    def install(
        self, mix: Mapping[str, Sequence[str]], modes: Mapping[str, str] | None = None
    ) -> None:
        """Exactly the revisions of ``mix`` (name -> its tags) installed, each in its mode
        (``modes``: name -> ``webhook`` or ``policy``; webhook unless named)."""
        modes = modes or {}
        for name, revision in self.by_name.items():
            mode = modes.get(name, "webhook") if name in mix else None
            if mode != "webhook":
                self.control_plane.kubectl(
                    "delete", "mutatingwebhookconfiguration", revision.name, "--ignore-not-found"
                )
            if mode != "policy":
                self._delete_policies(name)
        for name, tags in mix.items():
            if modes.get(name, "webhook") == "policy":
                self.control_plane.kubectl(
                    "apply", "--server-side", "--force-conflicts", "--field-manager", "e2e",
                    "-f", "-", input=yaml.safe_dump_all(self._policies(name, tags)), timeout=120,
                )  # fmt: skip
            else:
                self.control_plane.kubectl(
                    "apply", "-f", "-", input=yaml.safe_dump(self._configuration(name, tags))
                )

    def _policies(self, name: str, tags: Sequence[str]) -> list[Object]:
        """The revision's policy mode, rendered from its config (its proxy version too)."""
        config = parse_config(self.by_name[name].config_file.read_text(encoding="utf-8"))
        return render_policy(config, revision=name, tags=tags)

    def _delete_policies(self, name: str) -> None:
        objects = self._policies(name, ())
        names = [f"{o['kind'].lower()}/{o['metadata']['name']}" for o in objects]
        self.control_plane.kubectl("delete", "--ignore-not-found", *names, timeout=120)

    def _configuration(self, name: str, tags: Sequence[str]) -> Object:
        (configuration,) = [
            o for o in self.by_name[name].objects if o["kind"] == "MutatingWebhookConfiguration"
        ]
        rendered: Object = json.loads(json.dumps(configuration))
        for hook in rendered["webhooks"]:
            for key in ("namespaceSelector", "objectSelector"):
                for expression in hook[key]["matchExpressions"]:
                    if expression["key"] == REV and expression["operator"] == "In":
                        expression["values"] = [name, *tags]
        return rendered

    def mutate_calls(self) -> dict[str, float]:
        """Each revision's process's answered ``/mutate`` requests."""
        return {name: r.metrics().mutate_calls() for name, r in self.by_name.items()}
