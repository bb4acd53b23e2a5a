"""Per-pod proxy settings resolved from the namespace and the pod, with provenance.

Precedence, highest first: pod annotation > namespace annotation > namespace
label > injector config file > built-in default. Each effective value records
where it came from, so a refusal can say "pod annotation
sidecar.mesh.io/proxy-cpu-request='lots' ..." and a preview can show why a value
is what it is. Label values cannot hold commas, so list items in labels are
separated by ``_``; CIDR lists (which need ``/``) can only be annotations.

Settings the config locks (``lockedSettings``) skip the pod annotation layer:
the namespace and the config decide them, and a pod annotation with another
value is a ``LockedError`` (``locked_conflicts`` lists them for ``check``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import Any, Final, Literal

from webhook.contract import constants
from webhook.engine.bounded_cache import BoundedCache
from webhook.engine.config import InjectorConfig, ProxyConfig, Resources
from webhook.engine.quantity import QuantityError, check_quantity, parse_quantity
from webhook.engine.values import (
    ALL,
    MAX_CIDR_LIST_CHARS,
    MAX_PORT_LIST_CHARS,
    MAX_SCALAR_CHARS,
    AllOr,
    CidrList,
    PortList,
    check_address,
    check_text,
    cidr_family,
    parse_bool,
    parse_cidrs,
    parse_image_tag,
    parse_log_level,
    parse_ports,
    shorten,
)


class Source(StrEnum):
    """Where an effective setting came from, lowest precedence first."""

    BUILT_IN = "built-in default"
    CONFIG = "injector config"
    NAMESPACE_LABEL = "namespace label"
    NAMESPACE_ANNOTATION = "namespace annotation"
    POD_ANNOTATION = "pod annotation"


class SettingsError(ValueError):
    """A setting has an invalid value; the pod is refused with this message.

    The value is quoted shortened (``shorten``): the message is one line of
    bounded length whatever the pod carried.
    """

    def __init__(self, key: str, source: Source, raw: str, problem: str) -> None:
        self.key = key
        self.source = source
        self.raw = raw
        self.problem = problem
        super().__init__(f"{source} {key}={shorten(raw)} is invalid: {problem}")


class LockedError(SettingsError):
    """A pod annotation gives a locked setting another value than the one in force.

    Also when the pod's value is invalid: a locked setting never takes the
    pod's value, so its validity is beside the point, and the fix is the same
    either way (remove the annotation, or give the value in force, which this
    message names and an "is invalid" one would not).
    """

    def __init__(self, key: str, raw: str, in_force: Provenance) -> None:
        super().__init__(key, Source.POD_ANNOTATION, raw, "the injector config locks it")
        self.in_force = in_force
        self.args = (
            f"{Source.POD_ANNOTATION} {key}={shorten(raw)} is refused: the injector config "
            f"locks {key} (lockedSettings) to what the namespace and the config decide, here "
            f"{shorten(in_force.value)} ({in_force.source}); remove the annotation, or set it "
            f"to that value",
        )


@dataclass(frozen=True, slots=True)
class Provenance:
    """An effective value as a string, where it was set, and whether the config locks it."""

    value: str
    source: Source
    locked: bool = False


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


_FIELDS: Final = tuple(
    f.name for f in dataclasses.fields(ProxySettings) if f.name not in ("provenance", "warnings")
)


def settings_env(settings: ProxySettings) -> dict[str, Any]:
    """The settings as ``expr`` reads them: field name -> value."""
    return {name: getattr(settings, name) for name in _FIELDS}


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
    # Checked on the raw value before anything else (values.py, "limits").
    max_chars: int = MAX_SCALAR_CHARS
    # How a pod's value is compared with a locked one, both parsed: as they
    # are ("value"), as sets of items ("set": CIDR lists, whose order and
    # duplicates change nothing the pod gets), or as amounts ("quantity":
    # ``0.1`` is ``100m``). Port lists are parsed into sorted sets already.
    same: Literal["value", "set", "quantity"] = "value"


_KEYS: Final[dict[str, _Key]] = {
    "proxy-version": _Key("proxy_version", lambda raw, _s: parse_image_tag(raw.strip())),
    "proxy-cpu-request": _Key("proxy_cpu_request", _optional_quantity, same="quantity"),
    "proxy-cpu-limit": _Key("proxy_cpu_limit", _optional_quantity, same="quantity"),
    "proxy-memory-request": _Key("proxy_memory_request", _optional_quantity, same="quantity"),
    "proxy-memory-limit": _Key("proxy_memory_limit", _optional_quantity, same="quantity"),
    "log-level": _Key("log_level", lambda raw, _s: parse_log_level(raw)),
    "include-inbound-ports": _Key(
        "include_inbound_ports",
        lambda raw, s: parse_ports(raw, separator=s, allow_all=True),
        max_chars=MAX_PORT_LIST_CHARS,
    ),
    "exclude-inbound-ports": _Key(
        "exclude_inbound_ports",
        lambda raw, s: parse_ports(raw, separator=s, allow_all=False),
        max_chars=MAX_PORT_LIST_CHARS,
    ),
    "exclude-outbound-ports": _Key(
        "exclude_outbound_ports",
        lambda raw, s: parse_ports(raw, separator=s, allow_all=False),
        max_chars=MAX_PORT_LIST_CHARS,
    ),
    "include-outbound-cidrs": _Key(
        "include_outbound_cidrs",
        lambda raw, s: parse_cidrs(raw, separator=s, allow_all=True),
        label_ok=False,
        max_chars=MAX_CIDR_LIST_CHARS,
        same="set",
    ),
    "exclude-outbound-cidrs": _Key(
        "exclude_outbound_cidrs",
        lambda raw, s: parse_cidrs(raw, separator=s, allow_all=False),
        label_ok=False,
        max_chars=MAX_CIDR_LIST_CHARS,
        same="set",
    ),
    "native-sidecar": _Key("native_sidecar", lambda raw, _s: parse_bool(raw)),
    "hold-application": _Key("hold_application", lambda raw, _s: parse_bool(raw)),
    "xds-address": _Key("xds_address", _optional_address),
}

# The settings' names as the config's ``lockedSettings`` spells them, and as keys.
SETTING_NAMES: Final = tuple(_KEYS)
SETTING_KEYS: Final = tuple(constants.PREFIX + name for name in _KEYS)

# The value type of each setting, by name: what ``webhook.policy`` needs to
# judge and parse the same values in CEL (it has a rendering per kind, and
# refuses to render a policy for a kind it lacks). A ``?`` kind is optional:
# an empty value unsets it; a ``*`` kind may be ``*`` for "all".
KINDS: Final[dict[str, str]] = {
    "proxy-version": "image-tag",
    "proxy-cpu-request": "quantity?",
    "proxy-cpu-limit": "quantity?",
    "proxy-memory-request": "quantity?",
    "proxy-memory-limit": "quantity?",
    "log-level": "log-level",
    "include-inbound-ports": "ports*",
    "exclude-inbound-ports": "ports",
    "exclude-outbound-ports": "ports",
    "include-outbound-cidrs": "cidrs*",
    "exclude-outbound-cidrs": "cidrs",
    "native-sidecar": "bool",
    "hold-application": "bool",
    "xds-address": "address?",
}
if set(KINDS) != set(_KEYS):  # pragma: no cover - keeps the two tables in step
    raise RuntimeError(f"settings.KINDS and _KEYS differ: {set(KINDS) ^ set(_KEYS)}")


@dataclass(frozen=True, slots=True)
class SettingSpec:
    """One setting as the outside sees it: key name, ``ProxySettings`` field, value kind,
    whether a namespace label may set it, its length limit, and how a pod's value
    is compared with a locked one (``_Key.same``)."""

    name: str
    field: str
    kind: str
    label_ok: bool
    max_chars: int
    same: str


SETTING_SPECS: Final = tuple(
    SettingSpec(name, spec.field, KINDS[name], spec.label_ok, spec.max_chars, spec.same)
    for name, spec in _KEYS.items()
)
# Keys under the prefix that are not settings but are still ours (the revision
# label picks the injector revision: never an unknown key to warn about).
_OTHER_KEYS: Final = frozenset(
    {constants.INJECT_KEY, constants.STATUS_ANNOTATION, constants.REVISION_LABEL}
)


def _defaults(config: InjectorConfig) -> dict[str, tuple[Any, Source]]:
    """Config-derived values, each tagged as set by the config file or built in."""
    proxy = config.proxy
    resources = proxy.resources

    def source(model: ProxyConfig | Resources, name: str) -> Source:
        # Only the config file loader fills ``from_file``, and it names a nested
        # section only when the file has it, so the innermost class decides.
        return Source.CONFIG if name in model.from_file else Source.BUILT_IN

    return {
        "proxy-version": (proxy.version, source(proxy, "version")),
        "proxy-cpu-request": (resources.cpu_request, source(resources, "cpu_request")),
        "proxy-cpu-limit": (resources.cpu_limit, source(resources, "cpu_limit")),
        "proxy-memory-request": (
            resources.memory_request,
            source(resources, "memory_request"),
        ),
        "proxy-memory-limit": (
            resources.memory_limit,
            source(resources, "memory_limit"),
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


# Unknown keys are listed one warning each, up to this many; a pod with
# thousands of them gets one more line saying how many were left out.
MAX_UNKNOWN_KEY_WARNINGS: Final = 8


def _show_key(key: str) -> str:
    """A key as typed, unless it is too long or unprintable to show as is (CLI and preview
    input is not checked by an apiserver)."""
    if len(key) <= 120 and key.isascii() and key.isprintable():
        return key
    return shorten(key, 120)


def _unknown_keys(layers: tuple[tuple[Source, dict[str, str], str], ...]) -> list[str]:
    found = [
        (where, key)
        for where, values, _sep in reversed(layers)
        for key in values
        if key[len(constants.PREFIX) :] not in _KEYS and key not in _OTHER_KEYS
    ]
    warnings = [
        f"{where} {_show_key(key)} is not a known setting and is ignored"
        for where, key in found[:MAX_UNKNOWN_KEY_WARNINGS]
    ]
    if len(found) > MAX_UNKNOWN_KEY_WARNINGS:
        warnings.append(
            f"{len(found) - MAX_UNKNOWN_KEY_WARNINGS} more unknown keys under "
            f"{constants.PREFIX} are ignored"
        )
    return warnings


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


def _ours(values: Mapping[str, str]) -> dict[str, str]:
    """The items under our prefix: all that resolution reads."""
    return {key: value for key, value in values.items() if key.startswith(constants.PREFIX)}


# (setting name, where it was set, raw value) for each setting some layer sets.
_Winners = tuple[tuple[str, Source, str], ...]
# (setting name, raw value) for each locked setting a pod annotation sets.
_Pinned = tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class _Entry:
    """A cached resolution and the config it was made with (see ``resolve_settings``)."""

    config: InjectorConfig
    settings: ProxySettings


# Resolved settings per distinct (config, winning values, pod values of locked
# settings); only resolutions that pass are kept. Bounded in entries
# and in bytes: each entry is charged five times the raw text it was parsed
# from (the key keeps the text; parsed tuples and provenance strings repeat
# it) plus 4 KiB for the objects themselves, which covers what an entry
# really keeps alive (tests/unit/test_settings.py checks it with tracemalloc;
# docs/settings.md, "Limits", has the figures), so distinct big settings are
# evicted rather than kept for ever.
SETTINGS_CACHE: Final[BoundedCache[tuple[int, _Winners, _Pinned], _Entry]] = BoundedCache(
    max_entries=4096, max_bytes=8 * 1024 * 1024
)
_ENTRY_OVERHEAD: Final = 4096
_CHARGE_PER_CHAR: Final = 5


def resolve_settings(
    config: InjectorConfig,
    *,
    namespace_labels: Mapping[str, str],
    namespace_annotations: Mapping[str, str],
    pod_annotations: Mapping[str, str],
) -> ProxySettings:
    """Resolve every setting by precedence; raise SettingsError on the first invalid one,
    then LockedError on the first locked setting a pod annotation gives another value.

    Only the value that wins is checked and parsed: a bad namespace label that
    a pod annotation overrides does not refuse the pod. A setting the config
    locks never takes the pod's value: the namespace and the config decide it,
    and the pod's, if any, must be the same (``locked_conflicts``). Cheap checks come
    first: the winners are picked by dictionary look-ups and their lengths
    checked against each key's limit before anything is parsed, hashed or
    cached, so an oversized value costs microseconds. Results are cached by
    the config and the winning values: the pods of one workload, and of one
    namespace, almost always resolve alike.
    """
    layers = (
        (Source.POD_ANNOTATION, _ours(pod_annotations), ","),
        (Source.NAMESPACE_ANNOTATION, _ours(namespace_annotations), ","),
        (Source.NAMESPACE_LABEL, _ours(namespace_labels), "_"),
    )
    warnings = _unknown_keys(layers)
    locked = config.locked_settings
    winners: list[tuple[str, Source, str]] = []
    pinned: list[tuple[str, str]] = []
    for name, spec in _KEYS.items():
        key = constants.PREFIX + name
        for where, values, _sep in layers:
            raw = values.get(key)
            if raw is None:
                continue
            if where is Source.POD_ANNOTATION and name in locked:
                pinned.append((name, raw))  # judged against the value in force, below
                continue
            if where is Source.NAMESPACE_LABEL and not spec.label_ok:
                warnings.append(f"{where} {key} is ignored: CIDR lists can only be annotations")
                continue
            if len(raw) > spec.max_chars:
                raise SettingsError(
                    key, where, raw, f"it is longer than {spec.max_chars} characters"
                )
            winners.append((name, where, raw))
            break

    if any(len(raw) > _KEYS[name].max_chars for name, raw in pinned):
        # An oversized pod value can never be the one in force: refused
        # against the settings in force, without hashing it into a cache key.
        raise _conflicts(_cached(config, tuple(winners), ()), tuple(pinned))[0]
    settings = _cached(config, tuple(winners), tuple(pinned))
    if warnings:
        settings = dataclasses.replace(settings, warnings=(*warnings, *settings.warnings))
    return settings


def _cached(config: InjectorConfig, winners: _Winners, pinned: _Pinned) -> ProxySettings:
    """The settings for these winners, from the cache or resolved (and locks judged) now.

    The config is keyed by identity, not value: provenance depends on which
    fields the config set explicitly, which equal configs need not share. The
    entry holds the config, so a reused id cannot match another one. Only a
    resolution that passes is kept.
    """
    cache_key = (id(config), winners, pinned)
    entry = SETTINGS_CACHE.get(cache_key)
    if entry is None or entry.config is not config:
        resolved = _resolve(config, winners)
        conflicts = _conflicts(resolved, pinned)
        if conflicts:
            raise conflicts[0]
        entry = _Entry(config, resolved)
        chars = sum(len(raw) for _, _, raw in winners) + sum(len(raw) for _, raw in pinned)
        SETTINGS_CACHE.put(cache_key, entry, size=_ENTRY_OVERHEAD + _CHARGE_PER_CHAR * chars)
    return entry.settings


def locked_conflicts(
    settings: ProxySettings, pod_annotations: Mapping[str, str], *, config: InjectorConfig
) -> tuple[LockedError, ...]:
    """Every locked setting that ``pod_annotations`` give another value than ``settings``.

    ``settings`` are the ones in force for the pod's namespace (resolved
    without the pod's annotations); ``check`` lists workloads with this.
    """
    pinned = tuple(
        (name, raw)
        for name in _KEYS
        if name in config.locked_settings
        and (raw := pod_annotations.get(constants.PREFIX + name)) is not None
    )
    return _conflicts(settings, pinned)


def _conflicts(settings: ProxySettings, pinned: _Pinned) -> tuple[LockedError, ...]:
    """The pinned pod values that differ from the value in force, as refusals."""
    found = []
    for name, raw in pinned:
        key = constants.PREFIX + name
        if not _holds(_KEYS[name], raw, settings):
            found.append(LockedError(key, raw, settings.provenance[key]))
    return tuple(found)


def _holds(spec: _Key, raw: str, settings: ProxySettings) -> bool:
    """Whether a pod annotation's value for a locked setting is the value in force.

    Compared parsed (pod annotations separate items with commas): ``9090,9091``
    is a namespace label's ``9090_9091``. An invalid value is never the one in
    force; an oversized one is not parsed at all.
    """
    if len(raw) > spec.max_chars:
        return False
    try:
        check_text(raw)
        value = spec.parse(raw, ",")
    except ValueError:
        return False
    in_force = getattr(settings, spec.field)
    if spec.same == "set" and isinstance(value, tuple) and isinstance(in_force, tuple):
        return set(value) == set(in_force)
    if spec.same == "quantity" and value is not None and in_force is not None:
        return parse_quantity(value) == parse_quantity(in_force)
    return bool(value == in_force)


def _resolve(config: InjectorConfig, winners: _Winners) -> ProxySettings:
    """Parse the winning values over the config's defaults; raise SettingsError if one is bad."""
    separators = {Source.NAMESPACE_LABEL: "_"}
    chosen = {name: (where, raw) for name, where, raw in winners}
    resolved: dict[str, Any] = {}
    provenance: dict[str, Provenance] = {}
    for name, (default, default_source) in _defaults(config).items():
        key = constants.PREFIX + name
        spec = _KEYS[name]
        value, source = default, default_source
        if name in chosen:
            source, raw = chosen[name]
            try:
                check_text(raw)
                value = spec.parse(raw, separators.get(source, ","))
            except ValueError as err:
                raise SettingsError(key, source, raw, str(err)) from None
        resolved[spec.field] = value
        provenance[key] = Provenance(_display(value), source, name in config.locked_settings)

    for resource in ("cpu", "memory"):
        request = resolved[f"proxy_{resource}_request"]
        limit = resolved[f"proxy_{resource}_limit"]
        if (
            request is not None
            and limit is not None
            and parse_quantity(request) > parse_quantity(limit)
        ):
            raise _request_over_limit(resource, request, limit, provenance)

    warnings = _cidr_family_warnings(resolved, provenance, ipv6=config.ipv6)
    # Read-only: the settings are cached and shared by every pod that resolves alike.
    return ProxySettings(
        **resolved, provenance=MappingProxyType(provenance), warnings=tuple(warnings)
    )


def _cidr_family_warnings(
    resolved: Mapping[str, Any], provenance: Mapping[str, Provenance], *, ipv6: bool
) -> list[str]:
    """Say which family's outbound traffic an include-outbound-cidrs list leaves alone.

    A list that names only IPv4 ranges turns IPv6 outbound interception off
    (and the other way round): probably not what was meant, and a bypass if not.
    """
    warnings: list[str] = []
    include = resolved["include_outbound_cidrs"]
    key = constants.PREFIX + "include-outbound-cidrs"
    where = provenance[key].source
    families = (4, 6) if ipv6 else (4,)
    if include != ALL:
        present = {cidr_family(cidr) for cidr in include}
        warnings += [
            f"{where} {key} names no IPv{family} range: "
            f"the pod's outbound IPv{family} traffic is not intercepted"
            for family in families
            if family not in present
        ]
    if not ipv6:
        for name in ("include_outbound_cidrs", "exclude_outbound_cidrs"):
            cidrs = resolved[name]
            if cidrs != ALL and any(cidr_family(cidr) == 6 for cidr in cidrs):
                listed = constants.PREFIX + name.replace("_", "-")
                warnings.append(
                    f"{provenance[listed].source} {listed} has IPv6 ranges, which are ignored: "
                    f"the injector's config turns IPv6 interception off (ipv6: false)"
                )
    return warnings
