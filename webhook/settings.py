"""Per-pod proxy settings resolved from the namespace and the pod, with provenance.

Precedence, highest first: pod annotation > namespace annotation > namespace
label > injector config file > built-in default. Each effective value records
where it came from, so a refusal can say "pod annotation
sidecar.mesh.io/proxy-cpu-request='lots' ..." and a preview can show why a value
is what it is. Label values cannot hold commas, so list items in labels are
separated by ``_``; CIDR lists (which need ``/``) can only be annotations.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Final

from webhook import constants
from webhook.config import InjectorConfig
from webhook.quantity import QuantityError, check_quantity, parse_quantity
from webhook.values import (
    ALL,
    AllOr,
    CidrList,
    PortList,
    check_address,
    parse_bool,
    parse_cidrs,
    parse_image_tag,
    parse_log_level,
    parse_ports,
)


class Source(StrEnum):
    """Where an effective setting came from, lowest precedence first."""

    BUILT_IN = "built-in default"
    CONFIG = "injector config"
    NAMESPACE_LABEL = "namespace label"
    NAMESPACE_ANNOTATION = "namespace annotation"
    POD_ANNOTATION = "pod annotation"


class SettingsError(ValueError):
    """A setting has an invalid value; the pod is refused with this message."""

    def __init__(self, key: str, source: Source, raw: str, problem: str) -> None:
        self.key = key
        self.source = source
        self.raw = raw
        self.problem = problem
        super().__init__(f"{source} {key}={raw!r} is invalid: {problem}")


@dataclass(frozen=True, slots=True)
class Provenance:
    """An effective value as a string, and where it was set."""

    value: str
    source: Source


@dataclass(frozen=True, slots=True)
class ProxySettings:
    """The effective settings for one pod. Built only by ``resolve_settings``."""

    proxy_version: str
    proxy_cpu_request: str | None
    proxy_cpu_limit: str | None
    proxy_memory_request: str | None
    proxy_memory_limit: str | None
    log_level: str
    include_inbound_ports: PortList | AllOr
    exclude_inbound_ports: PortList
    exclude_outbound_ports: PortList
    include_outbound_cidrs: CidrList | AllOr
    exclude_outbound_cidrs: CidrList
    native_sidecar: bool
    hold_application: bool
    xds_address: str | None
    provenance: Mapping[str, Provenance] = field(compare=False)
    warnings: tuple[str, ...] = field(default=(), compare=False)


_Parser = Callable[[str, str], Any]  # (raw value, list separator) -> parsed value


def _optional_quantity(raw: str, _sep: str) -> str | None:
    if raw.strip() == "":
        return None  # an empty value unsets the resource (e.g. no memory limit)
    try:
        check_quantity(raw.strip())
    except QuantityError as err:
        raise ValueError(str(err)) from None
    return raw.strip()


def _optional_address(raw: str, _sep: str) -> str | None:
    return None if raw.strip() == "" else check_address(raw.strip())


@dataclass(frozen=True, slots=True)
class _Key:
    field: str
    parse: _Parser
    label_ok: bool = True


_KEYS: Final[dict[str, _Key]] = {
    "proxy-version": _Key("proxy_version", lambda raw, _s: parse_image_tag(raw.strip())),
    "proxy-cpu-request": _Key("proxy_cpu_request", _optional_quantity),
    "proxy-cpu-limit": _Key("proxy_cpu_limit", _optional_quantity),
    "proxy-memory-request": _Key("proxy_memory_request", _optional_quantity),
    "proxy-memory-limit": _Key("proxy_memory_limit", _optional_quantity),
    "log-level": _Key("log_level", lambda raw, _s: parse_log_level(raw)),
    "include-inbound-ports": _Key(
        "include_inbound_ports", lambda raw, s: parse_ports(raw, separator=s, allow_all=True)
    ),
    "exclude-inbound-ports": _Key(
        "exclude_inbound_ports", lambda raw, s: parse_ports(raw, separator=s, allow_all=False)
    ),
    "exclude-outbound-ports": _Key(
        "exclude_outbound_ports", lambda raw, s: parse_ports(raw, separator=s, allow_all=False)
    ),
    "include-outbound-cidrs": _Key(
        "include_outbound_cidrs",
        lambda raw, s: parse_cidrs(raw, separator=s, allow_all=True),
        label_ok=False,
    ),
    "exclude-outbound-cidrs": _Key(
        "exclude_outbound_cidrs",
        lambda raw, s: parse_cidrs(raw, separator=s, allow_all=False),
        label_ok=False,
    ),
    "native-sidecar": _Key("native_sidecar", lambda raw, _s: parse_bool(raw)),
    "hold-application": _Key("hold_application", lambda raw, _s: parse_bool(raw)),
    "xds-address": _Key("xds_address", _optional_address),
}

SETTING_KEYS: Final = tuple(constants.PREFIX + name for name in _KEYS)
# Keys under the prefix that are not settings but are still ours.
_OTHER_KEYS: Final = frozenset({constants.INJECT_KEY, constants.STATUS_ANNOTATION})


def _defaults(config: InjectorConfig) -> dict[str, tuple[Any, Source]]:
    """Config-derived values, each tagged as set by the config file or built in."""
    proxy = config.proxy
    resources = proxy.resources

    def source(model: Any, name: str, parents: tuple[Any, ...] = ()) -> Source:
        chain = (config, *parents, model)
        names = ["proxy", *(["resources"] if parents else [])]
        set_along = all(n in m.model_fields_set for m, n in zip(chain, names, strict=False))
        return Source.CONFIG if set_along and name in model.model_fields_set else Source.BUILT_IN

    return {
        "proxy-version": (proxy.version, source(proxy, "version")),
        "proxy-cpu-request": (resources.cpu_request, source(resources, "cpu_request", (proxy,))),
        "proxy-cpu-limit": (resources.cpu_limit, source(resources, "cpu_limit", (proxy,))),
        "proxy-memory-request": (
            resources.memory_request,
            source(resources, "memory_request", (proxy,)),
        ),
        "proxy-memory-limit": (
            resources.memory_limit,
            source(resources, "memory_limit", (proxy,)),
        ),
        "log-level": (proxy.log_level, source(proxy, "log_level")),
        "include-inbound-ports": (ALL, Source.BUILT_IN),
        "exclude-inbound-ports": ((), Source.BUILT_IN),
        "exclude-outbound-ports": ((), Source.BUILT_IN),
        "include-outbound-cidrs": (ALL, Source.BUILT_IN),
        "exclude-outbound-cidrs": ((), Source.BUILT_IN),
        "native-sidecar": (True, Source.BUILT_IN),
        "hold-application": (False, Source.BUILT_IN),
        "xds-address": (proxy.xds_address, source(proxy, "xds_address")),
    }


def _display(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return ",".join(str(item) for item in value)
    return str(value)


def _unknown_keys(where: Source, values: Mapping[str, str]) -> list[str]:
    return [
        f"{where} {key} is not a known setting and is ignored"
        for key in values
        if key.startswith(constants.PREFIX)
        and key[len(constants.PREFIX) :] not in _KEYS
        and key not in _OTHER_KEYS
    ]


_RANK: Final = tuple(Source)


def _request_over_limit(
    resource: str, request: str, limit: str, provenance: Mapping[str, Provenance]
) -> SettingsError:
    """Blame whichever of the pair was set closer to the pod: that is the one to fix."""
    request_key = f"{constants.PREFIX}proxy-{resource}-request"
    limit_key = f"{constants.PREFIX}proxy-{resource}-limit"
    request_source = provenance[request_key].source
    limit_source = provenance[limit_key].source
    if _RANK.index(limit_source) > _RANK.index(request_source):
        return SettingsError(
            limit_key, limit_source, limit, f"it is below proxy-{resource}-request {request}"
        )
    return SettingsError(
        request_key, request_source, request, f"it exceeds proxy-{resource}-limit {limit}"
    )


def _ours(values: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    """The items under our prefix: all that resolution reads, and a hashable cache key."""
    return tuple(item for item in values.items() if item[0].startswith(constants.PREFIX))


def resolve_settings(
    config: InjectorConfig,
    *,
    namespace_labels: Mapping[str, str],
    namespace_annotations: Mapping[str, str],
    pod_annotations: Mapping[str, str],
) -> ProxySettings:
    """Resolve every setting by precedence; raise SettingsError on the first invalid one.

    Only the value that wins is parsed: a bad namespace label that a pod
    annotation overrides does not refuse the pod. Results are cached by the
    inputs that matter (the config and the ``sidecar.mesh.io/`` items): the
    pods of one workload, and of one namespace, almost always resolve alike,
    and resolution was the engine's largest cost per admission.
    """
    return _resolve(
        config, _ours(namespace_labels), _ours(namespace_annotations), _ours(pod_annotations)
    )


# Bounded: each entry is one distinct combination of settings in use.
@functools.lru_cache(maxsize=4096)
def _resolve(
    config: InjectorConfig,
    namespace_labels: tuple[tuple[str, str], ...],
    namespace_annotations: tuple[tuple[str, str], ...],
    pod_annotations: tuple[tuple[str, str], ...],
) -> ProxySettings:
    layers = (
        (Source.POD_ANNOTATION, dict(pod_annotations), ","),
        (Source.NAMESPACE_ANNOTATION, dict(namespace_annotations), ","),
        (Source.NAMESPACE_LABEL, dict(namespace_labels), "_"),
    )
    warnings: list[str] = []
    for where, values, _sep in reversed(layers):
        warnings.extend(_unknown_keys(where, values))

    resolved: dict[str, Any] = {}
    provenance: dict[str, Provenance] = {}
    for name, (default, default_source) in _defaults(config).items():
        key = constants.PREFIX + name
        spec = _KEYS[name]
        value, source = default, default_source
        for where, values, separator in layers:
            raw = values.get(key)
            if raw is None:
                continue
            if where is Source.NAMESPACE_LABEL and not spec.label_ok:
                warnings.append(f"{where} {key} is ignored: CIDR lists can only be annotations")
                continue
            try:
                value = spec.parse(raw, separator)
            except ValueError as err:
                raise SettingsError(key, where, raw, str(err)) from None
            source = where
            break
        resolved[spec.field] = value
        provenance[key] = Provenance(_display(value), source)

    for resource in ("cpu", "memory"):
        request = resolved[f"proxy_{resource}_request"]
        limit = resolved[f"proxy_{resource}_limit"]
        if (
            request is not None
            and limit is not None
            and parse_quantity(request) > parse_quantity(limit)
        ):
            raise _request_over_limit(resource, request, limit, provenance)

    return ProxySettings(**resolved, provenance=provenance, warnings=tuple(warnings))
