"""The engine's expression language (``webhook.engine.expr``) compiled to Kubernetes CEL.

What the API server's CEL environment (1.36+) is known to offer is written
down in docs/policy.md; every operation here uses only that. Three rules keep
the output valid and cheap:

* Constant subtrees are evaluated in Python and written as literals, so the
  policy carries what the config fixes (the image, the proxy UID, the
  bootstrap) as plain data and CEL only computes what a pod's settings change.
* Aggregate literals whose members differ in type wrap each member in
  ``dyn()``: the API server's checker refuses heterogeneous literals
  (``HomogeneousAggregateLiterals``) at policy creation.
* An argument an operation reads more than once is first given a variable of
  its own (``hoist``), so CEL computes it once per admission: the runtime
  cost budget counts every evaluation.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from webhook.engine.expr import (
    OPS,
    Call,
    Const,
    Each,
    Expr,
    If,
    Local,
    Opaque,
    Present,
    Setting,
    evaluate,
    render,
)
from webhook.engine.flow_yaml import PLAIN, WORDS


class Unsupported(ValueError):
    """The expression reads something CEL cannot compute; the message names it."""


def string(text: str) -> str:
    """A CEL string literal (double-quoted; backslash escapes as in JSON, plus ``\\x``)."""
    out = ['"']
    for char in text:
        code = ord(char)
        if char in '"\\':
            out.append("\\" + char)
        elif char == "\n":
            out.append("\\n")
        elif char == "\r":
            out.append("\\r")
        elif char == "\t":
            out.append("\\t")
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\x{code:02x}")
        elif code > 0x7E:
            out.append(f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}")
        else:
            out.append(char)
    out.append('"')
    return "".join(out)


def _type(value: Any) -> str:
    """A CEL type name for a constant, enough to tell when a literal needs ``dyn``."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, str):
        return "string"
    if value is None:
        return "null"
    if isinstance(value, list | tuple):
        kinds = {_type(item) for item in value}
        return f"list({kinds.pop() if len(kinds) == 1 else 'dyn'})"
    if isinstance(value, Mapping):
        kinds = {_type(item) for item in value.values()}
        return f"map({kinds.pop() if len(kinds) == 1 else 'dyn'})"
    raise Unsupported(f"no CEL literal for {type(value).__name__}")


def literal(value: Any) -> str:
    """A CEL literal for JSON-like data."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return string(value)
    if value is None:
        return "null"
    if isinstance(value, list | tuple):
        mixed = len({_type(item) for item in value}) > 1
        return "[" + ", ".join(_wrap(literal(item), mixed) for item in value) + "]"
    if isinstance(value, Mapping):
        mixed = len({_type(item) for item in value.values()}) > 1
        return (
            "{"
            + ", ".join(f"{string(k)}: {_wrap(literal(v), mixed)}" for k, v in value.items())
            + "}"
        )
    raise Unsupported(f"no CEL literal for {type(value).__name__}")


def _wrap(text: str, dyn: bool) -> str:
    return f"dyn({text})" if dyn else text


@dataclass
class Compiler:
    """Compiles expressions and templates; collects the variables it hoists.

    ``setting`` maps a setting name to its CEL reference; ``all_of`` names the
    CEL boolean for a list setting that may be ``*``. An ``Opaque`` value
    (computed by Python only) cannot be compiled: ``Unsupported`` names the
    settings it reads, and ``policy`` refuses to render.
    """

    setting: Callable[[str], str]
    all_of: Callable[[str], str]
    prefix: str = "t"
    hoisted: list[tuple[str, str]] = field(default_factory=list)
    _names: dict[str, str] = field(default_factory=dict)

    # -- expressions --

    def expr(self, node: Expr) -> str:
        if _is_constant(node):
            return literal(plain(evaluate(node, _NO_SETTINGS)))
        if isinstance(node, Setting):
            return self.setting(node.name)
        if isinstance(node, Local):
            return node.name
        if isinstance(node, Opaque):
            raise Unsupported(
                f"{', '.join(node.reads)}: computed in Python only, CEL cannot reproduce it"
            )
        if isinstance(node, If):
            return (
                f"({self.expr(node.cond)} ? dyn({self.expr(node.then)})"
                f" : dyn({self.expr(node.orelse)}))"
            )
        if isinstance(node, Each):
            items = self.expr(node.items)
            method = "map" if node.kind == "map" else "filter"
            return f"{items}.{method}({node.var}, {self.expr(node.body)})"
        if isinstance(node, Call):
            return self._call(node)
        raise Unsupported(f"not an expression: {node!r}")

    def _call(self, node: Call) -> str:
        op, args = node.op, node.args
        rendering = _RENDER.get(op)
        if rendering is None:
            raise Unsupported(f"operation {op!r} has no CEL rendering")
        if op in ("is_all", "items"):
            (arg,) = args
            if not isinstance(arg, Setting):
                raise Unsupported(f"{op} applies to a setting")
            return self.all_of(arg.name) if op == "is_all" else self.setting(arg.name)
        if op == "flatten" and isinstance(args[0], Call) and args[0].op == "list":
            parts = [self.expr(a) for a in args[0].args]
            return "(" + " + ".join(parts) + ")" if parts else "[]"
        texts = [
            self.expr(a) if i not in _REUSED.get(op, ()) else self.reused(a)
            for i, a in enumerate(args)
        ]
        return rendering(*texts)

    def reused(self, node: Expr) -> str:
        """A reference to ``node`` that may appear several times without recomputing it."""
        text = self.expr(node)
        if _simple(text) or _has_local(node):
            return text
        name = self._names.get(text)
        if name is None:
            name = f"{self.prefix}{len(self.hoisted)}"
            self.hoisted.append((name, text))
            self._names[text] = name
        return f"variables.{name}"

    # -- templates --

    def template(self, node: Any) -> str:
        """A CEL value for a template (JSON-like data with expressions and ``Present``)."""
        if not _template_has_expr(node):
            return literal(plain(render(node, _NO_SETTINGS)))
        if isinstance(node, Expr):
            return self.expr(node)
        if isinstance(node, Mapping):
            entries = []
            for key, value in node.items():
                if isinstance(value, Present):
                    cond = self.expr(value.cond)
                    body = f"dyn({self.template(value.value)})"
                    entries.append(
                        f"?{string(key)}: ({cond} ? optional.of({body}) : optional.none())"
                    )
                else:
                    entries.append(f"{string(key)}: dyn({self.template(value)})")
            return "{" + ", ".join(entries) + "}"
        if isinstance(node, list | tuple):
            return "[" + ", ".join(f"dyn({self.template(item)})" for item in node) + "]"
        return literal(node)


_NO_SETTINGS: Final[Mapping[str, Any]] = {}
_PLAIN_CEL: Final = string("^(?:" + PLAIN.pattern.replace("\\d", "[0-9]") + ")$")


def _yaml_scalar(text: str) -> str:
    """``flow_yaml.scalar`` of a string: exact for printable ASCII (all an address holds),
    where JSON escapes only the double quote and the backslash."""
    quoted = "'\"' + " + text + r""".replace('\\', '\\\\').replace('"', '\\"') + '"'"""
    return (
        f"({text}.matches({_PLAIN_CEL}) && !({text}.lowerAscii() in {literal(sorted(WORDS))}) "
        f"? {text} : {quoted})"
    )


def _simple(text: str) -> bool:
    return text.replace(".", "").replace("_", "").isalnum()


def _has_local(node: Any) -> bool:
    if isinstance(node, Local):
        return True
    if isinstance(node, Call):
        return any(_has_local(a) for a in node.args)
    if isinstance(node, Each):
        return _has_local(node.items) or _has_local(node.body)
    if isinstance(node, If):
        return any(_has_local(n) for n in (node.cond, node.then, node.orelse))
    return False


def _is_constant(node: Expr) -> bool:
    if isinstance(node, Const):
        return True
    if isinstance(node, Call):
        return all(_is_constant(a) for a in node.args)
    if isinstance(node, Each):
        return _is_constant(node.items) and not _has_local_outside(node)
    if isinstance(node, If):
        return all(_is_constant(n) for n in (node.cond, node.then, node.orelse))
    return False  # a setting, an Opaque value, or a comprehension's variable


def _has_local_outside(node: Each) -> bool:
    # A body that reads only its own variable (and constants) is constant once its
    # items are; one that reads a setting is not.
    def reads_settings(n: Any) -> bool:
        if isinstance(n, Setting | Opaque):
            return True
        if isinstance(n, Call):
            return any(reads_settings(a) for a in n.args)
        if isinstance(n, Each):
            return reads_settings(n.items) or reads_settings(n.body)
        if isinstance(n, If):
            return any(reads_settings(x) for x in (n.cond, n.then, n.orelse))
        return False

    return reads_settings(node.body)


def _template_has_expr(node: Any) -> bool:
    if isinstance(node, Expr):
        return not _is_constant(node)
    if isinstance(node, Present):
        return _template_has_expr(node.cond) or _template_has_expr(node.value)
    if isinstance(node, Mapping):
        return any(_template_has_expr(v) for v in node.values())
    if isinstance(node, list | tuple):
        return any(_template_has_expr(v) for v in node)
    return False


def plain(value: Any) -> Any:
    """Tuples as lists, through and through (JSON's view of the value)."""
    return json.loads(json.dumps(value))


# CEL renderings of the operations (``expr.OPS``); a test checks that every
# operation has one.
_RENDER: Final[dict[str, Callable[..., str]]] = {
    "concat": lambda *parts: "(" + " + ".join(parts) + ")",
    "join": lambda items, sep: f"{items}.join({sep})",
    "int_str": lambda value: f"string({value})",
    "eq": lambda a, b: f"({a} == {b})",
    "not": lambda a: f"!{a}",
    "and": lambda a, b: f"({a} && {b})",
    "or": lambda a, b: f"({a} || {b})",
    "size": lambda items: f"size({items})",
    "first": lambda items: f"{items}[0]",
    "in": lambda item, items: f"({item} in {items})",
    "sorted_unique": lambda items: f"{items}.distinct().sort()",
    "minus": lambda items, drop: f"{items}.filter(m, !(m in {drop}))",
    "chunks": lambda items, n: (
        f"lists.range((size({items}) + {n} - 1) / {n}).map(c, {items}.slice(c * {n}, "
        f"c * {n} + {n} < size({items}) ? c * {n} + {n} : size({items})))"
    ),
    "flatten": lambda lists: f"{lists}.flatten()",
    "list": lambda *items: "[" + ", ".join(items) + "]",
    "is_all": lambda value: value,
    "items": lambda value: value,
    "is_none": lambda value: f"({value} == '')",
    "is_ipv6": lambda cidr: f"{cidr}.contains(':')",
    "address_host": lambda a: (
        f"({a}.startsWith('[') ? {a}.substring(1, {a}.lastIndexOf(':') - 1) "
        f": {a}.substring(0, {a}.lastIndexOf(':')))"
    ),
    "address_port": lambda a: f"int({a}.substring({a}.lastIndexOf(':') + 1))",
    "is_ip": lambda host: f"isIP({host})",
    "yaml_scalar": _yaml_scalar,
}
# Arguments an operation's rendering names more than once.
_REUSED: Final[dict[str, tuple[int, ...]]] = {
    "chunks": (0,),
    "minus": (1,),
    "address_host": (0,),
    "address_port": (0,),
    "yaml_scalar": (0,),
}

if set(_RENDER) != set(OPS):  # pragma: no cover - tests/unit/test_policy.py says which
    raise RuntimeError(f"CEL renderings and expr.OPS differ: {set(_RENDER) ^ set(OPS)}")
