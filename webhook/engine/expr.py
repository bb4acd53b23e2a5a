"""A tiny typed expression language for what the injected containers take from the settings.

The parts of ``mesh-init`` and ``mesh-proxy`` that depend on a pod's settings
(the netfilter rules, the image tag, the log level, the resources, ...) are
written once, as expressions over the settings, and have two readers: the
engine evaluates them here in Python (once per combination of settings: the
containers are cached, so this costs nothing per admission), and
``webhook.policy`` compiles them to CEL for the MutatingAdmissionPolicy, so the
API server builds the same containers. One definition, two modes: a change to
a builder changes both, and the policy tests compare the pods they store.

Deliberately small: constants, settings, the variable a ``map``/``filter``
binds, ``If``, and a fixed set of operations (``OPS``), each with one meaning
that both readers implement. Everything a builder computes from the config
alone is plain Python at build time; only setting-dependent values are
expressions. Templates are JSON-like data (dicts, lists, scalars) whose
leaves may be expressions; ``Present`` makes a dict entry conditional.

Setting values have the types ``resolve_settings`` gives them: ``str``,
``int``, ``bool``, ``None`` (an unset optional value), tuples of ints or
strings, and ``"*"`` (``ALL``) for the lists that may mean "all".
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final

from webhook.engine.flow_yaml import scalar
from webhook.engine.values import ALL, split_address


class Expr:
    """An expression; build them with the functions below, not the classes."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class Const(Expr):
    """A value known when the template is built (from the config or a constant)."""

    value: Any


@dataclass(frozen=True, slots=True)
class Setting(Expr):
    """A per-pod setting, by its ``ProxySettings`` field name."""

    name: str


@dataclass(frozen=True, slots=True)
class Local(Expr):
    """The item a ``map`` or ``filter`` is looking at."""

    name: str


@dataclass(frozen=True, slots=True)
class Call(Expr):
    """One of ``OPS`` applied to its arguments."""

    op: str
    args: tuple[Expr, ...]


@dataclass(frozen=True, slots=True)
class Each(Expr):
    """``map`` (the body's value per item) or ``filter`` (the items where the body holds)."""

    kind: str
    items: Expr
    var: str
    body: Expr


@dataclass(frozen=True, slots=True)
class If(Expr):
    """``then`` when ``cond`` holds, else ``orelse``."""

    cond: Expr
    then: Expr
    orelse: Expr


@dataclass(frozen=True, slots=True)
class Opaque(Expr):
    """A value computed by Python from the settings it ``reads``, not yet written as an
    expression. The engine calls ``compute``; the policy mode cannot, so it pins those
    settings to the config's values (pods that set them are refused there)."""

    compute: Callable[[Mapping[str, Any]], Any]
    reads: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Present:
    """A dict entry that exists only when ``cond`` holds (a template node, not an Expr)."""

    cond: Expr
    value: Any


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _chunks(items: Sequence[Any], size: int) -> tuple[tuple[Any, ...], ...]:
    return tuple(tuple(items[i : i + size]) for i in range(0, len(items), size))


# The operations and their meaning; webhook.policy has a CEL rendering of each
# (a test fails when one is missing). Lists are tuples.
OPS: Final[dict[str, Callable[..., Any]]] = {
    "concat": lambda *parts: "".join(parts),
    "join": lambda items, sep: sep.join(items),
    "int_str": str,
    "eq": lambda a, b: a == b,
    "not": lambda a: not a,
    "and": lambda a, b: a and b,
    "or": lambda a, b: a or b,
    "size": len,
    "first": lambda items: items[0],
    "in": lambda item, items: item in items,
    # Sorted, without duplicates (ints).
    "sorted_unique": lambda items: tuple(sorted(set(items))),
    # The items of the first list not in the second, in order.
    "minus": lambda items, drop: tuple(item for item in items if item not in drop),
    "chunks": _chunks,
    "flatten": lambda lists: tuple(item for items in lists for item in items),
    "list": lambda *items: tuple(items),
    # A list setting that may be ALL: whether it is, and its items (none when it is).
    "is_all": lambda value: value == ALL,
    "items": lambda value: () if value == ALL else tuple(value),
    "is_none": lambda value: value is None,
    "is_ipv6": lambda cidr: ":" in cidr,
    # An xds-address (as values.check_address takes it): its host without
    # brackets, its port, and whether that host is an IP address, not a name.
    "address_host": lambda address: split_address(address)[0],
    "address_port": lambda address: split_address(address)[1],
    "is_ip": _is_ip,
    # A string as the bootstrap's flow YAML writes it (plain, or JSON-quoted).
    "yaml_scalar": scalar,
}


def _call(op: str, *args: Any) -> Call:
    return Call(op, tuple(lift(arg) for arg in args))


def lift(value: Any) -> Expr:
    """An expression for ``value``: itself if it already is one, else a constant."""
    return value if isinstance(value, Expr) else Const(value)


def concat(*parts: Any) -> Expr:
    """Strings joined end to end."""
    return _call("concat", *parts)


def join(items: Any, sep: str) -> Expr:
    """A list of strings joined with ``sep``."""
    return _call("join", items, sep)


def int_str(value: Any) -> Expr:
    """An int in decimal."""
    return _call("int_str", value)


def eq(a: Any, b: Any) -> Expr:
    """Equality of two values of one type."""
    return _call("eq", a, b)


def not_(a: Any) -> Expr:
    """Negation."""
    return _call("not", a)


def and_(a: Any, b: Any) -> Expr:
    """Both."""
    return _call("and", a, b)


def or_(a: Any, b: Any) -> Expr:
    """Either."""
    return _call("or", a, b)


def size(items: Any) -> Expr:
    """The length of a list."""
    return _call("size", items)


def first(items: Any) -> Expr:
    """The first item of a non-empty list."""
    return _call("first", items)


def sorted_unique(items: Any) -> Expr:
    """Ints sorted, without duplicates."""
    return _call("sorted_unique", items)


def minus(items: Any, drop: Any) -> Expr:
    """The items not in ``drop``, in order."""
    return _call("minus", items, drop)


def chunks(items: Any, n: int) -> Expr:
    """Consecutive runs of at most ``n`` items."""
    return _call("chunks", items, n)


def flatten(lists: Any) -> Expr:
    """A list of lists as one list."""
    return _call("flatten", lists)


def list_of(*items: Any) -> Expr:
    """A list of these (same-typed) items."""
    return _call("list", *items)


def is_all(setting: Any) -> Expr:
    """Whether a list setting that may be ``*`` is."""
    return _call("is_all", setting)


def items(setting: Any) -> Expr:
    """A list setting's items (empty when it is ``*``)."""
    return _call("items", setting)


def is_none(setting: Any) -> Expr:
    """Whether an optional setting is unset."""
    return _call("is_none", setting)


def is_ipv6(cidr: Any) -> Expr:
    """Whether a canonical CIDR is IPv6."""
    return _call("is_ipv6", cidr)


def address_host(address: Any) -> Expr:
    """An address's host, without the brackets of an IPv6 one."""
    return _call("address_host", address)


def address_port(address: Any) -> Expr:
    """An address's port, an int."""
    return _call("address_port", address)


def is_ip(host: Any) -> Expr:
    """Whether a host is an IP address (else a DNS name)."""
    return _call("is_ip", host)


def yaml_scalar(text: Any) -> Expr:
    """A string as a scalar of the bootstrap's flow YAML."""
    return _call("yaml_scalar", text)


def if_(cond: Any, then: Any, orelse: Any) -> Expr:
    """``then`` if ``cond`` else ``orelse``."""
    return If(lift(cond), lift(then), lift(orelse))


_counter: Iterator[int] = iter(range(1 << 62))


def map_(items: Any, body: Callable[[Expr], Any]) -> Expr:
    """``body(item)`` for each item."""
    var = f"x{next(_counter)}"
    return Each("map", lift(items), var, lift(body(Local(var))))


def filter_(items: Any, body: Callable[[Expr], Any]) -> Expr:
    """The items for which ``body(item)`` holds."""
    var = f"x{next(_counter)}"
    return Each("filter", lift(items), var, lift(body(Local(var))))


# --- evaluation ------------------------------------------------------------------------

_NO_LOCALS: Final[Mapping[str, Any]] = MappingProxyType({})


def evaluate(expr: Expr, settings: Mapping[str, Any], local: Mapping[str, Any] = _NO_LOCALS) -> Any:
    """The value of ``expr`` for these settings (``ProxySettings`` field -> value)."""
    if isinstance(expr, Const):
        return expr.value
    if isinstance(expr, Setting):
        return settings[expr.name]
    if isinstance(expr, Local):
        return local[expr.name]
    if isinstance(expr, If):
        branch = expr.then if evaluate(expr.cond, settings, local) else expr.orelse
        return evaluate(branch, settings, local)
    if isinstance(expr, Each):
        values = evaluate(expr.items, settings, local)
        out = []
        for value in values:
            result = evaluate(expr.body, settings, {**local, expr.var: value})
            if expr.kind == "map":
                out.append(result)
            elif result:
                out.append(value)
        return tuple(out)
    if isinstance(expr, Call):
        return OPS[expr.op](*(evaluate(arg, settings, local) for arg in expr.args))
    if isinstance(expr, Opaque):
        return expr.compute(settings)
    raise TypeError(f"not an expression: {expr!r}")


def render(template: Any, settings: Mapping[str, Any]) -> Any:
    """A template (JSON-like data with expressions and ``Present`` entries) made concrete."""
    if isinstance(template, Expr):
        value = evaluate(template, settings)
        return list(value) if isinstance(value, tuple) else value
    if isinstance(template, dict):
        out: dict[str, Any] = {}
        for key, item in template.items():
            if not isinstance(item, Present):
                out[key] = render(item, settings)
            elif evaluate(item.cond, settings):
                out[key] = render(item.value, settings)
        return out
    if isinstance(template, list | tuple):
        return [render(item, settings) for item in template]
    return template


def settings_of(template: Any) -> set[str]:
    """The names of the settings a template or expression reads."""
    found: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, Setting):
            found.add(node.name)
        elif isinstance(node, Opaque):
            found.update(node.reads)
        elif isinstance(node, Call):
            for arg in node.args:
                walk(arg)
        elif isinstance(node, Each):
            walk(node.items)
            walk(node.body)
        elif isinstance(node, If):
            walk(node.cond)
            walk(node.then)
            walk(node.orelse)
        elif isinstance(node, Present):
            walk(node.cond)
            walk(node.value)
        elif isinstance(node, dict):
            for value in node.values():
                walk(value)
        elif isinstance(node, list | tuple):
            for value in node:
                walk(value)

    walk(template)
    return found
