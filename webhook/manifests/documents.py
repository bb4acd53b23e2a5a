"""Reading Kubernetes manifests: JSON or YAML, multi-document, ``List`` kinds.

Shared by the CLI (files and stdin), ``/preview`` (request bodies) and the
namespaces file, so all three accept exactly the same inputs and report
problems the same way: ``<origin>: <where>: <what>`` on one line.

YAML anchors and aliases are refused everywhere. An alias is a pointer to a
node already seen, so a few hundred bytes of nested aliases stand for billions
of values ("billion laughs"): PyYAML builds them as a shared graph, and the
first thing that walks it as a tree (the engine, a renderer) runs out of
memory. Kubernetes itself never needs them (``kubectl`` output has none).
They are refused in a pre-pass over the C parser's event stream, before
anything is built, so the fast C loader can then be used as it is (overriding
its composer would mean the pure-Python loader, much slower and bigger).
"""

from __future__ import annotations

import json
import re
from typing import Any, Final

import orjson
import yaml

from webhook.engine.values import shorten

try:  # the C loader is much faster; fall back where libyaml is missing
    _BaseLoader: type[yaml.SafeLoader] = yaml.CSafeLoader  # type: ignore[assignment]
except AttributeError:  # pragma: no cover
    _BaseLoader = yaml.SafeLoader

Obj = dict[str, Any]

_STR_TAG: Final = "tag:yaml.org,2002:str"
# What YAML makes of an unquoted key that is not a string, for the message.
_KEY_KINDS: Final = {
    "tag:yaml.org,2002:int": "a number",
    "tag:yaml.org,2002:float": "a number",
    "tag:yaml.org,2002:bool": "a boolean",
    "tag:yaml.org,2002:null": "null",
    "tag:yaml.org,2002:timestamp": "a date",
    "tag:yaml.org,2002:binary": "binary data",
}


class _Loader(_BaseLoader):  # type: ignore[misc, valid-type]
    """The safe loader, refusing mapping keys that are not strings.

    YAML reads ``1:``, ``true:`` or ``2024-01-01:`` as a number, a boolean or
    a date. Kubernetes has string keys only (the apiserver refuses others),
    and neither the engine nor JSON output can take them: refused here, where
    the line and column are still known, rather than failing far from the input.
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        mapping: dict[Any, Any] = super().construct_mapping(node, deep=deep)
        # After construction: merge keys (``<<``) are flattened away by then.
        for key_node, _ in node.value:
            if key_node.tag != _STR_TAG:
                kind = _KEY_KINDS.get(key_node.tag, "a value of another type")
                text = shorten(str(key_node.value), 40, quote=False)
                shown = f"{kind} ({text})" if text else kind
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"a mapping key must be a string, not {shown}: quote it",
                    key_node.start_mark,
                )
        return mapping


# Kubernetes numbers are 64-bit; JSON output (orjson) takes -2**63 .. 2**64-1.
# A longer numeral is refused before it is converted: Python's int() of a
# digit string grows quadratically (and refuses past 4,300 digits anyway).
_INT_RANGE: Final = range(-(1 << 63), 1 << 64)
_MAX_INT_TEXT: Final = 100  # 64 binary digits with underscores and a sign fit


def _construct_bounded_int(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> int:
    text = shorten(str(node.value), 40, quote=False)
    if len(node.value) <= _MAX_INT_TEXT:
        value: int = yaml.constructor.SafeConstructor.construct_yaml_int(loader, node)
        if value in _INT_RANGE:
            return value
    raise yaml.constructor.ConstructorError(
        None,
        None,
        f"number {text} is out of range (Kubernetes numbers are 64-bit)",
        node.start_mark,
    )


_Loader.add_constructor("tag:yaml.org,2002:int", _construct_bounded_int)

# orjson reads an integer outside 64 bits as a float, which the output would
# then print rounded (1.2345678901234568e+29). Such an integer has at least 19
# digits (-9223372036854775809), so a run of 19 sends the text through the
# standard parser, which tells integers apart (a long digit run in a string
# costs that second parse too, and nothing else).
_LONG_NUMERAL: Final = re.compile(rb"\d{19}")


def exact_json(data: bytes | bytearray | str, doc: Any, *, origin: str) -> Any:
    """``doc`` (orjson's parse of ``data``), or ``data`` parsed again if it may hold a big integer.

    Raises ``ManifestError`` naming the number when an integer is outside
    -2**63 .. 2**64-1.
    """
    raw = data.encode() if isinstance(data, str) else data
    if not _LONG_NUMERAL.search(raw):
        return doc

    def bounded(numeral: str) -> int:
        value = int(numeral) if len(numeral) <= _MAX_INT_TEXT else None
        if value is None or value not in _INT_RANGE:
            shown = shorten(numeral, 40, quote=False)
            raise ManifestError(
                f"{origin}: number {shown} is out of range (Kubernetes numbers are 64-bit)"
            )
        return value

    return json.loads(raw, parse_int=bounded)


# The event types that become a value (a scalar, or the start of a list or map).
_VALUE_EVENTS: Final = (yaml.ScalarEvent, yaml.SequenceStartEvent, yaml.MappingStartEvent)

# Bytes that start or separate JSON values; their count bounds how many values
# a document can hold (a ``{`` or ``[`` per container, a ``,`` per further item).
# Counted as what is left after deleting every other byte: one pass in C,
# cheaper than three ``count`` calls.
_NOT_JSON_VALUE_MARKS: Final = bytes(byte for byte in range(256) if byte not in b",[{")


class ManifestError(ValueError):
    """The input is not a readable manifest; the message names origin and place."""


def _yaml_error(origin: str, err: yaml.YAMLError) -> ManifestError:
    mark = getattr(err, "problem_mark", None)
    problem = getattr(err, "problem", None) or "not valid YAML"
    where = f"line {mark.line + 1} column {mark.column + 1}: " if mark is not None else ""
    return ManifestError(f"{origin}: {where}{problem}")


def _looks_like_json(text: str) -> bool:
    stripped = text.lstrip()
    return stripped.startswith(("{", "["))


def json_value_bound(data: bytes | bytearray | str) -> int:
    """An upper bound on the number of values in a JSON text, counted without parsing it.

    Counts ``,``, ``[`` and ``{`` (one pass in C; docs/service.md, "Limits"), so it
    over-counts those inside strings: a safe direction for a limit. Lets a
    caller refuse a body whose parse would take too long or build too many
    objects *before* paying for the parse.
    """
    raw = data.encode() if isinstance(data, str) else data
    return len(raw.translate(None, _NOT_JSON_VALUE_MARKS))


def _check_yaml(text: str, *, origin: str, max_values: int | None) -> None:
    """Refuse anchors, aliases and (with ``max_values``) too many values; build nothing."""
    count = 0
    try:
        for event in yaml.parse(text, Loader=_BaseLoader):
            if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
                mark = event.start_mark
                where = f"line {mark.line + 1} column {mark.column + 1}: " if mark else ""
                raise ManifestError(f"{origin}: {where}YAML anchors and aliases are not accepted")
            if isinstance(event, _VALUE_EVENTS):
                count += 1
                if max_values is not None and count > max_values:
                    raise ManifestError(f"{origin}: more than {max_values} values")
    except yaml.YAMLError as err:
        raise _yaml_error(origin, err) from None


def parse_documents(
    data: bytes | bytearray | str, *, origin: str, max_values: int | None = None
) -> list[Any]:
    """Decode JSON or (multi-document) YAML into its top-level documents; empty ones dropped.

    ``max_values`` bounds the values (scalars, lists and maps) in the whole
    input; it is checked before any object is built, so what a caller pays
    for a refused input is one cheap scan.
    """
    if isinstance(data, bytes | bytearray):
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as err:
            raise ManifestError(f"{origin}: byte {err.start}: not valid UTF-8") from None
    else:
        text = data
    if _looks_like_json(text):
        if max_values is not None and json_value_bound(data) > max_values:
            raise ManifestError(f"{origin}: more than {max_values} values")
        try:
            doc = orjson.loads(text)
        except orjson.JSONDecodeError as err:
            if text.lstrip().startswith("["):
                raise ManifestError(f"{origin}: invalid JSON: {err}") from None
            # ``{a: 1}`` is YAML flow style; let the YAML parser have it.
        else:
            doc = exact_json(data, doc, origin=origin)
            return doc if isinstance(doc, list) else [doc]
    _check_yaml(text, origin=origin, max_values=max_values)
    try:
        docs = list(yaml.load_all(text, Loader=_Loader))
    except yaml.YAMLError as err:
        raise _yaml_error(origin, err) from None
    except RecursionError:
        raise ManifestError(f"{origin}: nested too deeply") from None
    return [doc for doc in docs if doc is not None]


def is_list(obj: Obj) -> bool:
    """``kind: List`` or any ``...List`` kind with ``items`` (what ``kubectl get`` prints)."""
    kind = obj.get("kind")
    return isinstance(kind, str) and kind.endswith("List") and "items" in obj


def load_objects(
    data: bytes | bytearray | str, *, origin: str, max_values: int | None = None
) -> list[Obj]:
    """All objects in the input, with Lists flattened; each must be a mapping."""
    return objects_of(parse_documents(data, origin=origin, max_values=max_values), origin=origin)


def objects_of(documents: list[Any], *, origin: str) -> list[Obj]:
    """The objects in decoded documents, with Lists flattened; each must be a mapping."""
    objects: list[Obj] = []
    for index, doc in enumerate(documents):
        where = f"{origin}: document {index + 1}"
        if not isinstance(doc, dict):
            raise ManifestError(f"{where}: expected an object, got {_type_name(doc)}")
        if is_list(doc):
            items = doc.get("items")
            if items is None:
                continue
            if not isinstance(items, list):
                raise ManifestError(f"{where}: items must be a list")
            for position, item in enumerate(items):
                if not isinstance(item, dict):
                    raise ManifestError(
                        f"{where}: items[{position}]: expected an object, got {_type_name(item)}"
                    )
                objects.append(item)
        else:
            objects.append(doc)
    return objects


def _type_name(value: Any) -> str:
    names = {str: "a string", int: "a number", float: "a number", bool: "a boolean", list: "a list"}
    return names.get(type(value), "null" if value is None else type(value).__name__)
