"""One object in, one injection result out: the engine's single entry point.

``/mutate``, ``/preview``, the CLI and the tests all call ``inject``. It is pure:
no network, filesystem or clock, and the input object is never modified (the
result shares unchanged parts with it). Decide first, then build: a pod that is
skipped costs a few dictionary look-ups.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import orjson

from webhook import __version__, constants
from webhook.config import InjectorConfig
from webhook.engine.decision import Decision, NamespaceLike, decide, pod_security_refusal
from webhook.engine.iptables import mesh_init_container
from webhook.engine.patch import Additions, Op, apply_additions, build_patch
from webhook.engine.proxy import mesh_proxy_container, proxy_volumes
from webhook.engine.workloads import (
    ObjectError,
    PodLocation,
    check_injectable,
    describe,
    locate_pod,
    pod_parts,
)
from webhook.settings import ProxySettings, SettingsError, resolve_settings
from webhook.values import shorten

PASS_THROUGH = Decision(False, "not-a-workload", "kind has no pod template")


class InjectionRefused(ValueError):
    """The object cannot be injected as it stands; the message says what and where.

    Raised for malformed objects, invalid settings and reserved names. The
    admission layer answers ``allowed: false`` with it, the CLI exits non-zero.
    """


@dataclass(frozen=True, slots=True)
class InjectionResult:
    """The decision, and when injecting, the patch and the patched object.

    Read-only: ``obj`` shares every unchanged part with the input, and the
    injected containers are shared by all results with the same settings.
    Copy before changing anything (``copy.deepcopy``; ``jsonpatch`` copies).
    """

    decision: Decision
    location: PodLocation | None
    obj: dict[str, Any]
    patch: tuple[Op, ...] = ()
    settings: ProxySettings | None = None
    warnings: tuple[str, ...] = ()

    @property
    def injected(self) -> bool:
        """True when a patch was produced."""
        return bool(self.patch)


def inject(
    obj: dict[str, Any], *, namespace: NamespaceLike, config: InjectorConfig
) -> InjectionResult:
    """Decide for ``obj`` in ``namespace`` and, if injecting, build patch and result."""
    try:
        location = locate_pod(obj)
        if location is None:
            return InjectionResult(PASS_THROUGH, None, obj)
        meta, spec = pod_parts(obj, location)
    except ObjectError as err:
        raise InjectionRefused(str(err)) from None

    decision = decide(meta, spec, namespace=namespace, config=config)
    warnings = _choice_warnings(meta)
    if not decision.inject:
        return InjectionResult(decision, location, obj, warnings=warnings)
    refusal = pod_security_refusal(namespace)
    if refusal is not None:
        raise InjectionRefused(f"{describe(obj)}: {refusal}")

    annotations: dict[str, str] = meta.get("annotations") or {}
    try:
        check_injectable(obj, location, spec)
        settings = resolve_settings(
            config,
            namespace_labels=namespace.labels,
            namespace_annotations=namespace.annotations,
            pod_annotations=annotations,
        )
    except ObjectError as err:
        raise InjectionRefused(str(err)) from None
    except SettingsError as err:
        raise InjectionRefused(f"{describe(obj)}: {err}") from None

    additions = _additions(
        obj,
        location=location,
        spec=spec,
        annotations=annotations,
        settings=settings,
        config=config,
    )
    pod = _walk(obj, location.path)
    patch = build_patch(location.path, pod, additions)
    result = apply_additions(obj, location.path, additions)
    return InjectionResult(
        decision,
        location,
        result,
        tuple(patch),
        settings,
        warnings + settings.warnings,
    )


def _walk(obj: dict[str, Any], path: tuple[str, ...]) -> dict[str, Any]:
    node = obj
    for key in path:
        node = node[key]
    return node


def _choice_warnings(meta: dict[str, Any]) -> tuple[str, ...]:
    """A pod ``inject`` value other than true/false is ignored; say so."""
    found = []
    for where in ("labels", "annotations"):
        value = (meta.get(where) or {}).get(constants.INJECT_KEY)
        if value is not None and value not in ("true", "false"):
            found.append(
                f"pod {where[:-1]} {constants.INJECT_KEY}={shorten(value)} is ignored "
                f"(expected true or false)"
            )
    return tuple(found)


@functools.lru_cache(maxsize=4096)
def _built(
    settings: ProxySettings, config: InjectorConfig
) -> tuple[dict[str, Any], dict[str, Any], tuple[dict[str, Any], ...]]:
    """The two containers and the volumes for these settings, built once per combination.

    Pods with the same settings get the very same dicts (shared, like every
    unchanged part of a result), so the bootstrap and the rules are rendered
    once rather than per admission.
    """
    return (
        mesh_init_container(settings, config),
        mesh_proxy_container(settings, config),
        tuple(proxy_volumes(settings, config)),
    )


def _additions(
    obj: dict[str, Any],
    *,
    location: PodLocation,
    spec: dict[str, Any],
    annotations: dict[str, str],
    settings: ProxySettings,
    config: InjectorConfig,
) -> Additions:
    """Lay out the two containers, volumes and annotations for the chosen mode."""
    init, proxy, volumes = _built(settings, config)
    taken = {volume["name"] for volume in spec.get("volumes") or ()}
    for volume in volumes:
        if volume["name"] in taken:
            prefix = f"{location.dotted}.spec" if location.path else "spec"
            raise InjectionRefused(
                f"{describe(obj)}: {prefix}.volumes has a volume named {volume['name']!r}, "
                f"which the injector reserves"
            )

    if settings.native_sidecar:
        # The proxy is an init container with restartPolicy Always; it and the
        # rules go first so the user's init containers already run in the mesh
        # (the reason to choose native mode), and Jobs can complete.
        init_front: tuple[dict[str, Any], ...] = (init, proxy)
        init_back: tuple[dict[str, Any], ...] = ()
        containers_front: tuple[dict[str, Any], ...] = ()
        containers_back: tuple[dict[str, Any], ...] = ()
        status = {"containers": [], "initContainers": [init["name"], proxy["name"]]}
    else:
        # The user's init containers keep plain networking: rules come last.
        init_front, init_back = (), (init,)
        if settings.hold_application:
            containers_front, containers_back = (proxy,), ()
        else:
            containers_front, containers_back = (), (proxy,)
        status = {"containers": [proxy["name"]], "initContainers": [init["name"]]}

    status_value = {
        **status,
        "volumes": [volume["name"] for volume in volumes],
        "version": __version__,
    }
    new_annotations = {
        constants.STATUS_ANNOTATION: orjson.dumps(status_value).decode(),
    }
    if constants.DEFAULT_CONTAINER_ANNOTATION not in annotations:
        new_annotations[constants.DEFAULT_CONTAINER_ANNOTATION] = spec["containers"][0]["name"]
    return Additions(
        init_front=init_front,
        init_back=init_back,
        containers_front=containers_front,
        containers_back=containers_back,
        volumes=volumes,
        annotations=new_annotations,
    )
