"""Each value kind's judge and parser in CEL: the counterparts of the engine's parsers.

``settings.KINDS`` names each key's kind; here each kind has a ``KindCel``:
CEL for what is wrong with a value (``''`` when nothing is: the same phrase
the engine's parser raises, values.py and quantity.py) and CEL for the parsed
value, in the representation the compiled templates read (``webhook.policy.cel``).
The shapes (regular expressions) are the engine's own (``values.PATTERNS``,
``quantity.PATTERN``); addresses, CIDRs and quantities are read by the API
server's own functions (``isIP``, ``cidr``, ``isQuantity``, ``quantity``),
whose judgement the engine was made to share (docs/settings.md). A kind
without an entry makes ``policy`` refuse to render, naming the key.

CEL here runs inside the settings variables of ``webhook.policy.settings``:
``raw`` is the winning layer's raw value, ``t`` the variable holding it
trimmed, ``sep`` the list separator of that layer, ``f`` the field name (for
the kind's own helper variables).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from webhook.engine.quantity import MAX_EXPONENT, MAX_UNITS, PATTERN
from webhook.engine.values import LOG_LEVELS, MAX_CIDRS, MAX_PORTS, PATTERNS
from webhook.policy.cel import literal, string
from webhook.policy.text import shorten

V: Final = "variables."


def _full(pattern: str) -> str:
    """A CEL string literal for a Python pattern to match whole strings (``fullmatch``)."""
    return string(f"^(?:{pattern})$")


@dataclass(frozen=True, slots=True)
class KindCel:
    """How one value kind is judged and parsed in CEL.

    ``problem(raw, t, sep, f)``: CEL for ``''`` (valid) or what is wrong;
    ``value(raw, t, sep, f)``: CEL for the parsed value (evaluated only when valid);
    ``helpers``: variables the two share, as (name prefix, CEL when unset, CEL
    for it from the same four arguments).
    """

    problem: Callable[[str, str, str, str], str]
    value: Callable[[str, str, str, str], str]
    helpers: tuple[tuple[str, str, Callable[[str, str, str, str], str]], ...] = ()
    # CEL for ``settings._display`` of a parsed value (and, for ``*`` kinds, its flag).
    display: Callable[[str, str], str] = lambda value, _all: value


# --- quantities (quantity.parse_quantity and check_quantity) ---------------------------

_MAX: Final = f"quantity('{MAX_UNITS}')"
_NOT_A_QUANTITY: Final = "' is not a Kubernetes quantity (e.g. 100m, 128Mi)'"
_TOO_LARGE: Final = f"' is too large: Kubernetes quantities stop at 2^63-1 ({MAX_UNITS})'"


def _quantity_problem(_raw: str, t: str, _sep: str, _f: str) -> str:
    exponent = f"{t}.find('[eE][+-]?[0-9]+$')"  # '' unless the suffix is an exponent
    power = f"{exponent}.find('[1-9][0-9]*$')"  # without its sign and leading zeros
    # Past the bound Kubernetes would write out 10**exponent to compare or round
    # (9e2147483647 held the API server past its deadline): judged from the text.
    digits = len(str(MAX_EXPONENT))
    huge = f"(size({power}) > {digits} || ({power} != '' && int({power}) > {MAX_EXPONENT}))"
    mantissa = f"{t}.substring(0, size({t}) - size({exponent}))"
    negative = f"quantity({t}).isLessThan(quantity('0'))"
    magnitude = f"({negative} ? quantity('0').sub(quantity({t})) : quantity({t}))"
    # Kubernetes caps binary quantities at 2^63-1, so for those "equal" means "at or over".
    over = (
        f"({t}.matches('[KMGTPE]i$') ? {magnitude}.compareTo({_MAX}) >= 0 "
        f": {magnitude}.compareTo({_MAX}) > 0)"
    )
    quoted = shorten(t)
    return (
        f"{t} == '' ? '' : "
        f"!{t}.matches({_full(PATTERN)}) ? {quoted} + {_NOT_A_QUANTITY} : "
        f"{huge} ? (!{exponent}.contains('-') && {mantissa}.matches('[1-9]') "
        f"? {quoted} + {_TOO_LARGE} : {quoted} + ' has an exponent beyond +-{MAX_EXPONENT}') : "
        f"!isQuantity({t}) ? {quoted} + {_NOT_A_QUANTITY} : "
        f"{over} ? {quoted} + {_TOO_LARGE} : "
        f"{negative} ? {quoted} + ' is negative' : ''"
    )


# --- lists (values.split_list) -----------------------------------------------------------


def _list_problem(
    raw: str, t: str, sep: str, f: str, *, allow_all: bool, most: int, items_problem: str
) -> str:
    everything = f"{t} == '*' ? '' : " if allow_all else ""
    count = f"size({raw}.split({sep}))"
    shown_sep = f"({sep} == '_' ? \"'_'\" : \"','\")"
    return (
        f"{everything}{t} == '' ? '' : "
        f"{count} > {most} ? 'has ' + string({count}) + ' items; at most {most} are allowed' : "
        f"{V}i_{f}.exists(x, x == '') ? 'has an empty item (items are separated by ' "
        f"+ {shown_sep} + ')' : {items_problem}"
    )


def _items(raw: str, _t: str, sep: str, _f: str) -> str:
    return f"{raw}.split({sep}).map(x, x.trim())"


_ITEMS: Final = ("i", "[]", _items)


def _ports(*, allow_all: bool) -> KindCel:
    ok = f"x.matches({_full(PATTERNS['port'])}) && int(x) >= 1 && int(x) <= 65535"

    def problem(raw: str, t: str, sep: str, f: str) -> str:
        bad = f"{V}i_{f}.filter(x, !({ok}))[0]"
        items = (
            f"{V}i_{f}.exists(x, !({ok})) ? {shorten(bad)} + ' is not a port number (1-65535)' : ''"
        )
        return _list_problem(
            raw, t, sep, f, allow_all=allow_all, most=MAX_PORTS, items_problem=items
        )

    def value(_raw: str, t: str, _sep: str, f: str) -> str:
        everything = f"{t} == '*' || " if allow_all else ""
        return f"({everything}{t} == '') ? [] : {V}i_{f}.map(x, int(x)).distinct().sort()"

    return KindCel(problem, value, (_ITEMS,), _list_display("string(x)"))


def _list_display(item: str) -> Callable[[str, str], str]:
    return lambda value, everything: f"({everything} ? '*' : {value}.map(x, {item}).join(','))"


def _cidr_parts(x: str) -> tuple[str, str, str]:
    """CEL for a CIDR item's address, its bit count and the item as ``address/length``."""
    address = f"({x}.contains('/') ? {x}.substring(0, {x}.indexOf('/')) : {x})"
    bits = f"({address}.contains(':') ? 128 : 32)"
    length = f"({x}.contains('/') ? int({x}.substring({x}.indexOf('/') + 1)) : {bits})"
    return address, bits, f"{address} + '/' + string({length})"


def _cidr_problem(x: str) -> str:
    """CEL for ``values.parse_cidr``'s refusal of one item (``''`` if none)."""
    address, bits, whole = _cidr_parts(x)
    length_ok = f"{x}.substring({x}.indexOf('/') + 1).matches({_full(PATTERNS['prefix length'])})"
    length = f"int({x}.substring({x}.indexOf('/') + 1))"
    quoted = shorten(x)
    return (
        # isIP takes neither zones nor IPv4-mapped addresses, as the engine.
        f"!(isIP({address}) && (!{x}.contains('/') || {length_ok})) ? "
        f"{quoted} + ' is not a CIDR (e.g. 10.0.0.0/8 or fd00::/8)' : "
        f"{x}.contains('/') && {length} > {bits} ? "
        f"{quoted} + ' has a prefix length over ' + string({bits}) : "
        f"cidr({whole}) != cidr({whole}).masked() ? {quoted} + ' has host bits set (its network "
        f"is ' + string(cidr({whole}).masked()) + ')' : ''"
    )


def _cidrs(*, allow_all: bool) -> KindCel:
    def problem(raw: str, t: str, sep: str, f: str) -> str:
        items = f"{V}cp_{f}.exists(m, m != '') ? {V}cp_{f}.filter(m, m != '')[0] : ''"
        return _list_problem(
            raw, t, sep, f, allow_all=allow_all, most=MAX_CIDRS, items_problem=items
        )

    def value(_raw: str, t: str, _sep: str, f: str) -> str:
        everything = f"{t} == '*' || " if allow_all else ""
        canonical = f"{V}cv_{f}"
        # In the order given, without duplicates (values.parse_cidrs).
        unique = (
            f"lists.range(size({canonical})).filter(d, !({canonical}[d] in "
            f"{canonical}.slice(0, d))).map(d, {canonical}[d])"
        )
        return f"({everything}{t} == '') ? [] : {unique}"

    def problems(_raw: str, _t: str, _sep: str, f: str) -> str:
        return f"{V}i_{f}.map(x, {_cidr_problem('x')})"

    def canonical(_raw: str, _t: str, _sep: str, f: str) -> str:
        return f"{V}i_{f}.map(x, string(cidr({_cidr_parts('x')[2]})))"

    helpers = (_ITEMS, ("cp", "[]", problems), ("cv", "[]", canonical))
    return KindCel(problem, value, helpers, _list_display("x"))


# --- xds-address (values.check_address) -------------------------------------------------


def _address_problem(_raw: str, t: str, _sep: str, _f: str) -> str:
    colon = f"{t}.lastIndexOf(':')"
    host = f"{t}.substring(0, {colon})"
    port = f"{t}.substring({colon} + 1)"
    inner = f"{host}.substring(1, size({host}) - 1)"
    port_ok = (
        f"{port}.matches({_full(PATTERNS['port'])}) && int({port}) >= 1 && int({port}) <= 65535"
    )
    quoted = shorten(t)
    return (
        f"{t} == '' ? '' : "
        f"{colon} <= 0 ? {quoted} + ' is not host:port' : "
        f"!({port_ok}) ? {shorten(port)} + ' is not a port number (1-65535)' : "
        f"{host}.startsWith('[') && {host}.endsWith(']') ? "
        f"(isIP({inner}) && {inner}.contains(':') ? '' "
        f": {quoted} + ' has an invalid IPv6 address') : "
        f"{host}.matches('^[0-9.]+$') ? "
        f"(isIP({host}) ? '' : {quoted} + ' has an invalid IPv4 address') : "
        f"size({host}) > 253 || !{host}.matches({_full(PATTERNS['host name'])}) ? "
        f"{quoted} + ' has an invalid host name' : ''"
    )


# --- the rest ----------------------------------------------------------------------------


def _choice(words: tuple[str, ...], what: str, parse: Callable[[str], str]) -> KindCel:
    listed = literal(list(words))
    return KindCel(
        lambda raw, _t, _s, _f: (
            f"{raw}.trim().lowerAscii() in {listed} ? '' : {shorten(raw)} + {string(what)}"
        ),
        lambda raw, _t, _s, _f: parse(f"{raw}.trim().lowerAscii()"),
    )


def _unchanged(_raw: str, t: str, _sep: str, _f: str) -> str:
    return t


KIND_CEL: Final[dict[str, KindCel]] = {
    "image-tag": KindCel(
        lambda _raw, t, _s, _f: (
            f"{t}.matches({_full(PATTERNS['image tag'])}) ? '' "
            f": {shorten(t)} + ' is not an image tag'"
        ),
        _unchanged,
    ),
    "quantity?": KindCel(_quantity_problem, _unchanged),
    "log-level": _choice(
        LOG_LEVELS, f" is not an Envoy log level ({', '.join(LOG_LEVELS)})", lambda v: v
    ),
    "bool": dataclasses.replace(
        _choice(("true", "false"), " is not true or false", lambda v: f"{v} == 'true'"),
        display=lambda value, _all: f"({value} ? 'true' : 'false')",
    ),
    "ports": _ports(allow_all=False),
    "ports*": _ports(allow_all=True),
    "cidrs": _cidrs(allow_all=False),
    "cidrs*": _cidrs(allow_all=True),
    "address?": KindCel(_address_problem, _unchanged),
}
