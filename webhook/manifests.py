"""Reading Kubernetes manifests: JSON or YAML, multi-document, ``List`` kinds.

Shared by the CLI (files and stdin), ``/preview`` (request bodies) and the
namespaces file, so all three accept exactly the same inputs and report
problems the same way: ``<origin>: <where>: <what>`` on one line.
"""

from __future__ import annotations

from typing import Any

import orjson
import yaml

try:  # the C loader is ~10x faster; fall back where libyaml is missing
    _BaseLoader: type[yaml.SafeLoader] = yaml.CSafeLoader  # type: ignore[assignment]
except AttributeError:  # pragma: no cover
    _BaseLoader = yaml.SafeLoader

Obj = dict[str, Any]


class ManifestError(ValueError):
    """The input is not a readable manifest; the message names origin and place."""


class _NoAliasLoader(yaml.SafeLoader):
    """Refuses YAML aliases: a few bytes of anchors can expand to gigabytes.

    Built on the pure-Python loader because the C one composes nodes in C.
    """

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()  # type: ignore[no-untyped-call]
            raise yaml.MarkedYAMLError(
                problem="YAML aliases are not accepted here", problem_mark=event.start_mark
            )
        return super().compose_node(parent, index)


def _yaml_error(origin: str, err: yaml.YAMLError) -> ManifestError:
    mark = getattr(err, "problem_mark", None)
    problem = getattr(err, "problem", None) or "not valid YAML"
    where = f"line {mark.line + 1} column {mark.column + 1}: " if mark is not None else ""
    return ManifestError(f"{origin}: {where}{problem}")


def _looks_like_json(text: str) -> bool:
    stripped = text.lstrip()
    return stripped.startswith(("{", "["))


def parse_documents(data: bytes | str, *, origin: str, allow_aliases: bool = True) -> list[Any]:
    """Decode JSON or (multi-document) YAML into its top-level documents; empty ones dropped."""
    if isinstance(data, bytes):
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as err:
            raise ManifestError(f"{origin}: byte {err.start}: not valid UTF-8") from None
    else:
        text = data
    if _looks_like_json(text):
        try:
            doc = orjson.loads(text)
        except orjson.JSONDecodeError as err:
            if text.lstrip().startswith("["):
                raise ManifestError(f"{origin}: invalid JSON: {err}") from None
            # ``{a: 1}`` is YAML flow style; let the YAML parser have it.
        else:
            return doc if isinstance(doc, list) else [doc]
    loader = _BaseLoader if allow_aliases else _NoAliasLoader
    try:
        docs = list(yaml.load_all(text, Loader=loader))
    except yaml.YAMLError as err:
        raise _yaml_error(origin, err) from None
    except RecursionError:
        raise ManifestError(f"{origin}: nested too deeply") from None
    return [doc for doc in docs if doc is not None]


def is_list(obj: Obj) -> bool:
    """``kind: List`` or any ``...List`` kind with ``items`` (what ``kubectl get`` prints)."""
    kind = obj.get("kind")
    return isinstance(kind, str) and kind.endswith("List") and "items" in obj


def load_objects(data: bytes | str, *, origin: str, allow_aliases: bool = True) -> list[Obj]:
    """All objects in the input, with Lists flattened; each must be a mapping."""
    objects: list[Obj] = []
    for index, doc in enumerate(parse_documents(data, origin=origin, allow_aliases=allow_aliases)):
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
