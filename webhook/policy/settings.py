"""Settings resolution in CEL: precedence, judging and parsing, from the engine's own tables.

The keys, their order, which layers may set them, their length limits and
their value kinds are the engine's (``settings.SETTING_SPECS``); the sources
and their precedence are ``settings.Source``; the defaults come from
``resolve_settings`` on the config. Each kind's judge and parser in CEL is in
``webhook.policy.kinds``; a kind without one makes ``resolution`` refuse
(``Unsupported``, naming the key), so ``policy`` never renders a policy that
would store a different pod.

Each setting ``f`` becomes CEL variables: ``w_f`` (the winning layer:
``[source, raw]``, or ``[]``), ``n_f`` (the start of a refusal naming the
key, where it was set and the value), ``l_f`` (a length problem), ``t_f``
(the value trimmed), ``p_f`` (what the kind's judge says), ``e_f`` (any
other problem, the printable-ASCII check first), ``s_f`` (the value, the
default when unset) and, for lists that may be ``*``, ``s_f_all``; plus the
kind's helpers. The refusal order is the engine's: every length first, then
each key in order, then a request above its limit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from webhook.contract import constants
from webhook.engine.settings import (
    SETTING_SPECS,
    ProxySettings,
    SettingSpec,
    Source,
    settings_env,
)
from webhook.engine.values import ALL
from webhook.policy.cel import Unsupported, literal, string
from webhook.policy.kinds import KIND_CEL, KindCel
from webhook.policy.text import escapes_variable, first_unprintable, shorten

V: Final = "variables."
_RANK: Final = literal([str(source) for source in Source])
_LAYERS: Final = (
    (str(Source.POD_ANNOTATION), "podAnnotations"),
    (str(Source.NAMESPACE_ANNOTATION), "nsAnnotations"),
    (str(Source.NAMESPACE_LABEL), "nsLabels"),
)


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
    """The CEL variables resolving the settings, and the first refusal among them."""

    variables: tuple[tuple[str, str], ...]
    error: str  # CEL: the first settings refusal, or ''


def _winner(key: str, *, label_ok: bool, locked: bool) -> str:
    winner = "[]"
    layers: tuple[tuple[str, str], ...] = _LAYERS if label_ok else _LAYERS[:2]
    if locked:
        layers = layers[1:]  # a locked setting never takes the pod's value
    for source, mapping in reversed(layers):
        winner = (
            f"{string(key)} in {V}{mapping} ? "
            f"[{string(source)}, string({V}{mapping}[{string(key)}])] : {winner}"
        )
    return winner


def resolution(defaults: ProxySettings, *, locked: frozenset[str] = frozenset()) -> Resolution:
    """CEL variables resolving every setting by precedence; ``defaults`` from the config,
    ``locked`` the setting names it locks (``lockedSettings``)."""
    env = settings_env(defaults)
    out: list[tuple[str, str]] = [escapes_variable()]
    length_checks: list[str] = []
    problems: list[str] = []
    conflicts: list[str] = []
    for spec in SETTING_SPECS:
        key = constants.PREFIX + spec.name
        kind = KIND_CEL.get(spec.kind)
        if kind is None:
            raise Unsupported(f"{key}: its value kind {spec.kind!r} has no CEL rendering")
        f = spec.field
        w, raw, t = f"{V}w_{f}", f"{V}w_{f}[1]", f"{V}t_{f}"
        sep = f"({w}[0] == {string(str(Source.NAMESPACE_LABEL))} ? '_' : ',')"
        out += [
            (f"w_{f}", _winner(key, label_ok=spec.label_ok, locked=spec.name in locked)),
            (
                f"n_{f}",
                f"size({w}) == 0 ? '' : {w}[0] + ' {key}=' + {shorten(raw, ascii_only=False)} "
                "+ ' is invalid: '",
            ),
            (
                f"l_{f}",
                f"size({w}) > 0 && size({raw}) > {spec.max_chars} ? {V}n_{f} + "
                f"'it is longer than {spec.max_chars} characters' : ''",
            ),
            (f"t_{f}", f"size({w}) == 0 ? '' : {raw}.trim()"),
        ]
        length_checks.append(f"{V}l_{f}")
        for prefix, empty, helper in kind.helpers:
            out.append((f"{prefix}_{f}", f"size({w}) == 0 ? {empty} : {helper(raw, t, sep, f)}"))
        out += [
            (f"p_{f}", f"size({w}) == 0 ? '' : {kind.problem(raw, t, sep, f)}"),
            (
                f"e_{f}",
                # Nothing is judged past a length problem: the value may be huge.
                f"size({w}) == 0 || {V}l_{f} != '' ? '' : "
                f"!{raw}.matches('^[ -~]*$') ? {V}n_{f} + {first_unprintable(raw)} : "
                f"{V}p_{f} == '' ? '' : {V}n_{f} + {V}p_{f}",
            ),
        ]
        problems.append(f"{V}e_{f}")
        valid = f"size({w}) > 0 && {V}l_{f} == '' && {V}e_{f} == ''"
        out.append(
            (f"s_{f}", f"{valid} ? ({kind.value(raw, t, sep, f)}) : {default_literal(env[f])}")
        )
        if spec.kind.endswith("*"):
            out.append((f"s_{f}_all", f"{valid} ? {t} == '*' : {literal(env[f] == ALL)}"))
        if spec.name in locked:
            out += _lock(spec, kind, defaults)
            conflicts.append(f"{V}k_{f}")
    for resource in ("cpu", "memory"):
        name, text = _request_over_limit(resource, defaults)
        out.append((name, text))
        problems.append(f"{V}{name}")
    return Resolution(tuple(out), _first_nonempty(length_checks + problems + conflicts))


def _lock(spec: SettingSpec, kind: KindCel, defaults: ProxySettings) -> list[tuple[str, str]]:
    """``k_f``: a pod annotation giving a locked setting another value (``settings.LockedError``).

    The pod's value is judged as the kind judges any value (under the name
    ``f_pod``, commas separating items) and compared parsed with the value in
    force, as ``settings._holds`` does: as sets for CIDR lists, as amounts for
    quantities, as they are otherwise. An oversized, unprintable or invalid
    value is never the one in force.
    """
    key = constants.PREFIX + spec.name
    f, g = spec.field, spec.field + "_pod"
    has, raw, t = (
        f"{string(key)} in {V}podAnnotations",
        f"{V}podAnnotations[{string(key)}]",
        f"{V}t_{g}",
    )
    sep = "','"
    out = [(f"t_{g}", f"{has} ? {raw}.trim() : ''")]
    for prefix, empty, helper in kind.helpers:
        out.append((f"{prefix}_{g}", f"{has} ? ({helper(raw, t, sep, g)}) : {empty}"))
    judged = f"{has} && size({raw}) <= {spec.max_chars} && {raw}.matches('^[ -~]*$')"
    out.append((f"p_{g}", f"{judged} ? ({kind.problem(raw, t, sep, g)}) : 'not judged'"))
    out.append((f"v_{g}", kind.value(raw, t, sep, g)))
    mine, theirs = f"{V}v_{g}", f"{V}s_{f}"
    everything = spec.kind.endswith("*")
    if spec.same == "quantity":
        same = (
            f"({mine} == '' || {theirs} == '' ? {mine} == {theirs} "
            f": quantity({mine}).compareTo(quantity({theirs})) == 0)"
        )
    elif spec.same == "set":
        same = f"({mine}.all(x, x in {theirs}) && {theirs}.all(x, x in {mine}))"
    else:
        same = f"{mine} == {theirs}"
    if everything:
        flags = f"({t} == '*') == {V}s_{f}_all"
        same = f"{flags} && ({t} == '*' || {same})"
    in_force = kind.display(theirs, f"{V}s_{f}_all" if everything else "false")
    default_source = str(defaults.provenance[key].source)
    source = f"(size({V}w_{f}) > 0 ? {V}w_{f}[0] : {string(default_source)})"
    message = (
        f"'{Source.POD_ANNOTATION} {key}=' + {shorten(raw, ascii_only=False)} + ' is refused: "
        f"the injector config locks {key} (lockedSettings) to what the namespace and the config "
        f"decide, here ' + {shorten(in_force)} + ' (' + {source} + '); remove the annotation, "
        "or set it to that value'"
    )
    out.append((f"k_{f}", f"!({has}) || ({V}p_{g} == '' && {same}) ? '' : {message}"))
    return out


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
