"""What the installed-webhook tests share: namespaces they make, and how long effects may take."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

from harness.kube.control_plane import ControlPlane
from harness.kube.install import (
    PROXY,
    Object,
    container_names,
    init_container_names,
)

ENABLED = {"sidecar-injection": "enabled"}
# Long enough for informers on a loaded CI machine, short enough to fail fast.
EFFECT_TIMEOUT = 30.0


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


@dataclass
class Namespaces:
    """Namespaces these tests created; deleted (without waiting) at the end."""

    control_plane: ControlPlane
    names: list[str] = field(default_factory=list)

    def create(self, prefix: str, *, labels: dict[str, str] | None = None) -> str:
        name = unique(prefix)
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


def proxy_of(pod: Object) -> Object:
    for container in pod["spec"].get("containers", []) + pod["spec"].get("initContainers", []):
        if container["name"] == PROXY:
            found: Object = container
            return found
    raise AssertionError(f"no {PROXY} in {container_names(pod)} / {init_container_names(pod)}")
