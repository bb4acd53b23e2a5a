"""Settings resolution in CEL: precedence, judging and parsing, from the engine's own tables.

The keys, their order, which layers may set them, their length limits and
their value kinds are the engine's (``settings.SETTING_SPECS``); the sources
and their precedence are ``settings.Source``; the defaults come from
``resolve_settings`` on the config. What this module adds is one CEL
rendering per value kind (``KIND_CEL``), the counterpart of the engine's
parser for that kind (values.py, quantity.py); a kind without one is pinned:
the policy reads it from the config only, and refuses pods that set it.

Each supported setting ``f`` becomes CEL variables: ``w_f`` (the winning
layer: ``[source, raw]``, or ``[]``), ``l_f`` (a length problem), ``e_f``
(any other problem), ``s_f`` (the value, the default when unset or invalid)
and, for lists that may be ``*``, ``s_f_all``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from webhook.contract import constants
from webhook.engine.quantity import MAX_UNITS
from webhook.engine.settings import SETTING_SPECS, ProxySettings, Source, settings_env
from webhook.engine.values import ALL, LOG_LEVELS, MAX_PORTS, SHOWN_CHARS
from webhook.policy.cel import literal, string

V = "variables."
_RANK: Final = literal([str(source) for source in Source])


def shorten(text: str) -> str:
    """CEL for the engine's ``shorten``: the value quoted, cut to SHOWN_CHARS with its length."""
    return (
        f"(size({text}) <= {SHOWN_CHARS} ? strings.quote({text}) : "
        f"strings.quote({text}.substring(0, {SHOWN_CHARS})) + '... (' + string(size({text})) "
        f"+ ' characters)')"
    )


@dataclass(frozen=True, slots=True)
class KindCel:
    """How one value kind is judged and parsed in CEL.

    ``problem(raw, sep)`` is CEL for '' (valid) or what is wrong; ``value(raw, sep)`` CEL
    for the parsed value (only evaluated when valid); ``helpers`` are variables the two
    share (name suffix -> CEL, ``{raw}`` and ``{sep}`` substituted).
    """

    problem: Callable[[str, str, str], str]
    value: Callable[[str, str, str], str]
    helpers: tuple[tuple[str, str], ...] = ()


_QUANTITY_MAX: Final = f"quantity('{MAX_UNITS}')"


def _quantity_problem(raw: str, _sep: str, _f: str) -> str:
    t = f"{raw}.trim()"
    # Kubernetes caps binary quantities at 2^63-1 instead of refusing them, so for
    # those "equal to the maximum" means "at or over it" (docs/policy.md, quantities).
    over = (
        f"({t}.matches('[KMGTPE]i$') ? {_QUANTITY_MAX}.compareTo(quantity({t})) <= 0 "
        f": {_QUANTITY_MAX}.compareTo(quantity({t})) < 0)"
    )
    return (
        f"{t} == '' ? '' : "
        f"!({t}.matches('[0-9]') && isQuantity({t})) ? "
        f"{shorten(t)} + ' is not a Kubernetes quantity (e.g. 100m, 128Mi)' : "
        f"quantity({t}).isLessThan(quantity('0')) ? {shorten(t)} + ' is negative' : "
        f"{over} ? {shorten(t)} + ' is too large: Kubernetes quantities stop at 2^63-1 "
        f"({MAX_UNITS})' : ''"
    )


def _ports(allow_all: bool) -> KindCel:
    port_ok = "x.matches('^[0-9]{1,5}$') && int(x) >= 1 && int(x) <= 65535"

    def problem(raw: str, sep: str, f: str) -> str:
        items = f"{V}i_{f}"
        everything = f"{raw}.trim() == '*' ? '' : " if allow_all else ""
        return (
            f"{everything}{raw}.trim() == '' ? '' : "
            f"size({raw}.split({sep})) > {MAX_PORTS} ? 'has ' + string(size({raw}.split({sep}))) "
            f"+ ' items; at most {MAX_PORTS} are allowed' : "
            f"{items}.exists(x, x == '') ? 'has an empty item (items are separated by ' "
            f"+ strings.quote({sep}) + ')' : "
            f"{items}.exists(x, !({port_ok})) ? "
            f"strings.quote({items}.filter(x, !({port_ok}))[0]) "
            "+ ' is not a port number (1-65535)' : ''"
        )

    def value(raw: str, _sep: str, f: str) -> str:
        everything = f"{raw}.trim() == '*' || " if allow_all else ""
        return f"({everything}{raw}.trim() == '') ? [] : {V}i_{f}.map(x, int(x)).distinct().sort()"

    return KindCel(problem, value, (("i", "{raw}.split({sep}).map(x, x.trim())"),))


def _choice(words: tuple[str, ...], what: str, parse: Callable[[str], str]) -> KindCel:
    listed = literal(list(words))
    return KindCel(
        lambda raw, _s, _f: (
            f"{raw}.trim().lowerAscii() in {listed} ? '' : {shorten(raw)} + '{what}'"
        ),
        lambda raw, _s, _f: parse(f"{raw}.trim().lowerAscii()"),
    )


KIND_CEL: Final[dict[str, KindCel]] = {
    "image-tag": KindCel(
        lambda raw, _s, _f: (
            f"{raw}.trim().matches('^[A-Za-z0-9_][A-Za-z0-9_.-]{{0,127}}$') ? '' : "
            f"{shorten(raw + '.trim()')} + ' is not an image tag'"
        ),
        lambda raw, _s, _f: f"{raw}.trim()",
    ),
    "quantity?": KindCel(_quantity_problem, lambda raw, _s, _f: f"{raw}.trim()"),
    "log-level": _choice(
        LOG_LEVELS, f" is not an Envoy log level ({', '.join(LOG_LEVELS)})", lambda v: v
    ),
    "bool": _choice(("true", "false"), " is not true or false", lambda v: f"{v} == 'true'"),
    "ports": _ports(allow_all=False),
    "ports*": _ports(allow_all=True),
}


def default_literal(value: Any) -> str:
    """CEL for a setting's default value, in the representation its kind uses."""
    if value is None:
        return "''"  # optional kinds use '' for unset: never a valid set value
    if value == ALL:
        return "[]"
    if isinstance(value, tuple):
        return literal(list(value))
    return literal(value)


@dataclass(frozen=True, slots=True)
class Resolution:
    """The CEL variables resolving the settings, and what the compiler needs to read them."""

    variables: tuple[tuple[str, str], ...]
    supported: frozenset[str]  # field names read per pod
    pinned: dict[str, Any]  # field name -> value, for the others
    error: str  # CEL: the first settings refusal, or ''


def resolution(defaults: ProxySettings) -> Resolution:
    """CEL variables resolving every setting by precedence; ``defaults`` from the config."""
    env = settings_env(defaults)
    out: list[tuple[str, str]] = []
    length_checks: list[str] = []
    problems: list[str] = []
    supported: set[str] = set()
    pinned: dict[str, Any] = {}
    for spec in SETTING_SPECS:
        key = constants.PREFIX + spec.name
        f = spec.field
        layers = [("pod annotation", "podAnnotations"), ("namespace annotation", "nsAnnotations")]
        if spec.label_ok:
            layers.append(("namespace label", "nsLabels"))
        winner = "[]"
        for source, mapping in reversed(layers):
            winner = (
                f"{string(key)} in {V}{mapping} ? "
                f"[{string(source)}, string({V}{mapping}[{string(key)}])] : {winner}"
            )
        out.append((f"w_{f}", winner))
        w, raw = f"{V}w_{f}", f"{V}w_{f}[1]"
        sep = f"({V}w_{f}[0] == 'namespace label' ? '_' : ',')"
        named = f"{V}w_{f}[0] + ' {key}=' + {shorten(raw)} + ' is invalid: '"
        out.append(
            (
                f"l_{f}",
                f"size({w}) > 0 && size({raw}) > {spec.max_chars} ? {named} + "
                f"'it is longer than {spec.max_chars} characters' : ''",
            )
        )
        length_checks.append(f"{V}l_{f}")
        kind = KIND_CEL.get(spec.kind)
        if kind is None:
            pinned[f] = env[f]
            out.append(
                (
                    f"e_{f}",
                    f"size({w}) > 0 ? {w}[0] + ' {key} is not supported in policy mode yet "
                    f"(the policy uses the injector config\\'s value)' : ''",
                )
            )
            problems.append(f"{V}e_{f}")
            continue
        supported.add(f)
        for suffix, helper in kind.helpers:
            out.append(
                (
                    f"{suffix}_{f}",
                    f"size({w}) == 0 ? [] : " + helper.format(raw=raw, sep=sep),
                )
            )
        out.append((f"p_{f}", f"size({w}) == 0 ? '' : " + kind.problem(raw, sep, f)))
        out.append(
            (
                f"e_{f}",
                f"size({w}) == 0 ? '' : !{raw}.matches('^[ -~]*$') ? {named} + "
                f"'contains a character that is not printable ASCII' : "
                f"{V}p_{f} == '' ? '' : {named} + {V}p_{f}",
            )
        )
        problems.append(f"{V}e_{f}")
        default = default_literal(env[f])
        valid = f"size({w}) > 0 && {V}l_{f} == '' && {V}e_{f} == ''"
        out.append((f"s_{f}", f"{valid} ? ({kind.value(raw, sep, f)}) : {default}"))
        if spec.kind.endswith("*"):
            out.append(
                (
                    f"s_{f}_all",
                    f"{valid} ? {raw}.trim() == '*' : {literal(env[f] == ALL)}",
                )
            )
    limits = [_request_over_limit(resource, defaults) for resource in ("cpu", "memory")]
    for name, text in limits:
        out.append((name, text))
        problems.append(f"{V}{name}")
    return Resolution(
        tuple(out), frozenset(supported), pinned, _first_nonempty(length_checks + problems)
    )


def _first_nonempty(texts: list[str]) -> str:
    return (
        "[" + ", ".join(f"string({t})" for t in texts) + "].filter(m, m != '').first().orValue('')"
    )


def _request_over_limit(resource: str, defaults: ProxySettings) -> tuple[str, str]:
    """A request above its limit: blame whichever was set closer to the pod."""
    request, limit = f"proxy_{resource}_request", f"proxy_{resource}_limit"
    request_key = f"{constants.PREFIX}proxy-{resource}-request"
    limit_key = f"{constants.PREFIX}proxy-{resource}-limit"

    def source(f: str, key: str) -> str:
        default_source = str(defaults.provenance[key].source)
        return f"(size({V}w_{f}) > 0 ? {V}w_{f}[0] : {string(default_source)})"

    req, lim = f"{V}s_{request}", f"{V}s_{limit}"
    blame_limit = (
        f"{_RANK}.indexOf({source(limit, limit_key)}) "
        f"> {_RANK}.indexOf({source(request, request_key)})"
    )
    message = (
        f"{blame_limit} ? {source(limit, limit_key)} + ' {limit_key}=' + {shorten(lim)} + "
        f"' is invalid: it is below proxy-{resource}-request ' + {req} : "
        f"{source(request, request_key)} + ' {request_key}=' + {shorten(req)} + "
        f"' is invalid: it exceeds proxy-{resource}-limit ' + {lim}"
    )
    return (
        f"rl_{resource}",
        f"{req} != '' && {lim} != '' && quantity({req}).compareTo(quantity({lim})) > 0 ? "
        f"({message}) : ''",
    )
