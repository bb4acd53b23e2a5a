"""One object in, one injection result out: the engine's single entry point.

``/mutate``, ``/preview``, the CLI and the tests all call ``inject``. It is pure:
no network, filesystem or clock, and the input object is never modified.
Decide first, then build: a pod that is skipped costs a few dictionary
look-ups. The result is the patch; applying it, for those who want the
patched object (previews, the CLI, ``check``; ``/mutate`` never does), is
``webhook.manifests.patched``'s job, outside the engine.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from webhook import __version__
from webhook.contract import constants
from webhook.engine.bounded_cache import BoundedCache
from webhook.engine.config import InjectorConfig
from webhook.engine.decision import Decision, NamespaceLike, decide, pod_security_refusal
from webhook.engine.frozen import freeze
from webhook.engine.iptables import mesh_init_container
from webhook.engine.json_text import compact
from webhook.engine.patch import Additions, Op, build_patch, prior_shapes
from webhook.engine.proxy import mesh_proxy_container
from webhook.engine.refusals import container_refusal
from webhook.engine.settings import ProxySettings, SettingsError, resolve_settings
from webhook.engine.status import MAX_STATUS_CHARS, InjectionStatus, containers_digest
from webhook.engine.values import shorten
from webhook.engine.workloads import (
    ObjectError,
    PodLocation,
    check_injectable,
    describe,
    locate_pod,
    pod_parts,
)

PASS_THROUGH = Decision(False, "not-a-workload", "kind has no pod template")


class InjectionRefused(ValueError):
    """The object cannot be injected as it stands; the message says what and where.

    Raised for malformed objects, PodSecurity levels that forbid mesh-init,
    invalid or locked settings, and containers the injector may not mesh
    (reserved names and ports, the proxy's UID). The admission layer answers
    ``allowed: false`` with it, the CLI exits non-zero.
    """


@dataclass(frozen=True, slots=True)
class InjectionResult:
    """The decision, and when injecting, the patch to apply to ``source``.

    The containers in ``patch`` are shared by every result with the same
    settings and are read-only (``frozen``); ``webhook.manifests.patched``
    applies the patch to a copy of ``source`` for those who want the object.
    """

    decision: Decision
    location: PodLocation | None
    source: dict[str, Any]
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
    """Decide for ``obj`` in ``namespace`` and, if injecting, build patch and result.

    Only a pod that would be injected is refused, for the first of: the
    namespace's PodSecurity level, a malformed container list, an invalid
    setting, a locked setting the pod changes, then the containers
    (``refusals``: reserved names, reserved ports, the proxy's UID).
    docs/settings.md, "Refusals", gives the order to users.
    """
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
        # Invalid values first, then locked ones (LockedError is a SettingsError).
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
    refusal = container_refusal(
        spec,
        f"{location.dotted}.spec" if location.path else "spec",
        native_sidecar=settings.native_sidecar,
        uid=config.proxy.uid,
    )
    if refusal is not None:
        raise InjectionRefused(f"{describe(obj)}: {refusal}")

    pod = _walk(obj, location.path)
    additions = _additions(pod, annotations=annotations, settings=settings, config=config)
    if len(additions.annotations[constants.STATUS_ANNOTATION]) > MAX_STATUS_CHARS:
        # Only a replaced value can make it this long; decide could not read it back.
        prefix = f"{location.dotted}." if location.path else ""
        raise InjectionRefused(
            f"{describe(obj)}: {prefix}metadata.annotations[{constants.STATUS_ANNOTATION}] "
            f"does not describe this pod, and at {len(annotations[constants.STATUS_ANNOTATION])} "
            f"characters it is too long to keep for uninject; remove it"
        )
    patch = build_patch(location.path, pod, additions)
    return InjectionResult(
        decision,
        location,
        obj,
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


@dataclass(frozen=True, slots=True)
class Built:
    """The injected containers for one combination of settings, read-only, and their digest."""

    config: InjectorConfig  # what they were built with (the cache key holds only its id)
    init_containers: tuple[dict[str, Any], ...]
    containers: tuple[dict[str, Any], ...]
    init_names: tuple[str, ...]
    container_names: tuple[str, ...]
    digest: str
    size: int  # what the cache charges for it (see ENTRY_OVERHEAD)


# The cache holds one entry per distinct combination of settings in use
# (usually a handful); pod annotations can make more, and long port and CIDR
# lists make an entry larger (they go into the rules), so it is bounded in
# entries and in bytes, like the settings cache (webhook/engine/bounded_cache.py).
# An entry is charged its JSON length plus ENTRY_OVERHEAD, which covers the
# dicts, lists and small strings of the two containers beyond the JSON text
# (tests/unit/test_engine_cache.py holds the charge to what tracemalloc sees;
# docs/engine.md, "Caches").
CACHE_MAX_ENTRIES: Final = 1024
CACHE_MAX_BYTES: Final = 16 << 20
ENTRY_OVERHEAD: Final = 8 << 10


CACHE: Final[BoundedCache[tuple[ProxySettings, int], Built]] = BoundedCache(
    max_entries=CACHE_MAX_ENTRIES, max_bytes=CACHE_MAX_BYTES
)


def _built(settings: ProxySettings, config: InjectorConfig) -> Built:
    """The containers for these settings, from the cache or built (outside its lock) now.

    The config is keyed by identity: a process has one for its lifetime, and
    hashing the nested config would be most of a cache hit. The entry holds
    the config itself, so an id reused by another config after the first is
    gone cannot match.
    """
    key = (settings, id(config))
    found = CACHE.get(key)
    if found is None or found.config is not config:
        found = _build(settings, config)
        CACHE.put(key, found, size=found.size)
    return found


def _build(settings: ProxySettings, config: InjectorConfig) -> Built:
    """Render the two containers for these settings and lay them out for the mode.

    Rendering (the bootstrap and the rules) is most of the engine's work, and
    pods with the same settings get the very same containers, so this runs
    once per combination; the result is frozen because it is shared.
    """
    init = mesh_init_container(settings, config)
    proxy = mesh_proxy_container(settings, config)
    if settings.native_sidecar:
        # The proxy is an init container with restartPolicy Always; it and the
        # rules go first so the user's init containers already run in the mesh
        # (the reason to choose native mode), and Jobs can complete.
        init_containers, containers = [init, proxy], []
    else:
        init_containers, containers = [init], [proxy]
    digest = containers_digest(init_containers, containers)
    size = len(compact([*init_containers, *containers]).encode()) + ENTRY_OVERHEAD
    return Built(
        config,
        tuple(freeze(init_containers)),
        tuple(freeze(containers)),
        tuple(c["name"] for c in init_containers),
        tuple(c["name"] for c in containers),
        digest,
        size,
    )


def _additions(
    pod: dict[str, Any],
    *,
    annotations: dict[str, str],
    settings: ProxySettings,
    config: InjectorConfig,
) -> Additions:
    """Lay out the containers and annotations for the chosen mode, with the status."""
    built = _built(settings, config)
    none: tuple[dict[str, Any], ...] = ()
    if settings.native_sidecar:
        init_front, init_back = built.init_containers, none
        containers_front, containers_back = none, none
    else:
        # The user's init containers keep plain networking: rules come last.
        init_front, init_back = none, built.init_containers
        if settings.hold_application:
            containers_front, containers_back = built.containers, none
        else:
            containers_front, containers_back = none, built.containers

    added: dict[str, str] = {}
    if constants.DEFAULT_CONTAINER_ANNOTATION not in annotations:
        added[constants.DEFAULT_CONTAINER_ANNOTATION] = pod["spec"]["containers"][0]["name"]
    touched = ["initContainers"] + (["containers"] if built.containers else [])
    was_null, was_empty = prior_shapes(pod, touched)
    status = InjectionStatus(
        version=__version__,
        revision=config.revision,
        init_containers=built.init_names,
        containers=built.container_names,
        annotations=tuple(added),
        digest=built.digest,
        was_null=tuple(was_null),
        was_empty=tuple(was_empty),
        # A status the pod came with (copied, its containers missing: decide
        # injects again) is overwritten by the add; kept so uninject restores it.
        replaced=annotations.get(constants.STATUS_ANNOTATION),
    )
    return Additions(
        init_front=init_front,
        init_back=init_back,
        containers_front=containers_front,
        containers_back=containers_back,
        annotations={constants.STATUS_ANNOTATION: status.to_json(), **added},
    )
