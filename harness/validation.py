"""What the apiserver would check of an injected object, short of running one.

Schema validation (kubernetes-validate, strict: unknown fields are errors)
plus the cross-field rules the schema cannot express but Pod validation
enforces: unique container names across containers and initContainers,
unique volume names, mounts that reference existing volumes, unique port
names of at most 15 characters, and restartPolicy only on init containers.
"""

from __future__ import annotations

import contextlib
from typing import Any

import kubernetes_validate

from webhook.engine.workloads import WORKLOADS, locate_pod

KUBERNETES_VERSION = "1.37.0"


class InvalidObjectError(AssertionError):
    """The object would be rejected by the apiserver."""


def validate_schema(obj: dict[str, Any]) -> None:
    """Strict OpenAPI validation for the object's kind and version."""
    try:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as err:
        path = "/".join(str(p) for p in err.path)
        raise InvalidObjectError(f"{obj.get('kind')}: {path}: {err.message}") from None


def pod_spec(obj: dict[str, Any]) -> dict[str, Any]:
    """The pod spec inside a workload (or the Pod's own)."""
    location = locate_pod(obj)
    assert location is not None, f"{obj.get('kind')} has no pod"
    node = obj
    for key in location.path:
        node = node[key]
    spec: dict[str, Any] = node["spec"]
    return spec


def validate_pod_rules(spec: dict[str, Any], *, claim_volumes: tuple[str, ...] = ()) -> None:
    """The cross-field checks of Pod validation that matter for injection.

    ``claim_volumes`` are the names a StatefulSet's volumeClaimTemplates add.
    """
    init = spec.get("initContainers") or []
    containers = spec.get("containers") or []
    names = [c["name"] for c in [*init, *containers]]
    if len(names) != len(set(names)):
        raise InvalidObjectError(f"duplicate container names: {names}")
    volumes = [v["name"] for v in spec.get("volumes") or []]
    if len(volumes) != len(set(volumes)):
        raise InvalidObjectError(f"duplicate volume names: {volumes}")
    for container in [*init, *containers]:
        for mount in container.get("volumeMounts") or []:
            if mount["name"] not in volumes and mount["name"] not in claim_volumes:
                raise InvalidObjectError(
                    f"{container['name']} mounts unknown volume {mount['name']}"
                )
        ports = [p["name"] for p in container.get("ports") or [] if "name" in p]
        if len(ports) != len(set(ports)) or any(len(p) > 15 for p in ports):
            raise InvalidObjectError(f"{container['name']} has bad port names {ports}")
    for container in containers:
        if "restartPolicy" in container:
            raise InvalidObjectError(f"app container {container['name']} has a restartPolicy")
    for container in init:
        if container.get("restartPolicy") not in (None, "Always"):
            raise InvalidObjectError(f"init container {container['name']} restartPolicy")


def validate_injected(obj: dict[str, Any]) -> None:
    """Schema plus Pod rules for a workload; schema only for other built-in kinds.

    Custom resources have no schema here and pass through the injector untouched.
    """
    if obj.get("kind") not in WORKLOADS:
        with contextlib.suppress(kubernetes_validate.SchemaNotFoundError):
            validate_schema(obj)
        return
    validate_schema(obj)
    claims = tuple(
        claim["metadata"]["name"] for claim in obj.get("spec", {}).get("volumeClaimTemplates") or []
    )
    validate_pod_rules(pod_spec(obj), claim_volumes=claims)
