"""Turning injection results into what people and tools read: YAML, JSON, diffs.

Shared by the CLI and ``/preview`` so both print the same bytes for the same
input. Multi-line strings (the init container's rules, the proxy bootstrap) are
written as YAML block scalars, so a reviewer reads the rules as they will run.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from typing import Any

import orjson
import yaml

from webhook.engine.values import escape_controls, escape_json_controls
from webhook.manifests.documents import ManifestError

try:
    _BaseDumper: type[yaml.SafeDumper] = yaml.CSafeDumper  # type: ignore[assignment]
except AttributeError:  # pragma: no cover
    _BaseDumper = yaml.SafeDumper


class _Dumper(_BaseDumper):  # type: ignore[misc, valid-type]
    """Safe YAML with block scalars for multi-line strings."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    if "\n" in value and not any(ch in value for ch in "\t\r") and value == value.rstrip(" "):
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|")
    return dumper.represent_scalar("tag:yaml.org,2002:str", value)


_Dumper.add_representer(str, _represent_str)


def to_yaml(objects: Sequence[Any]) -> str:
    """One YAML document per object, ``---`` between them (kubectl's style)."""
    return "---\n".join(
        yaml.dump(obj, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=1 << 16)
        for obj in objects
    )


def to_json(value: Any) -> str:
    """Indented JSON with a trailing newline, keys in input order (see :func:`to_json_bytes`)."""
    return to_json_bytes(value).decode()


def to_json_bytes(value: Any) -> bytes:
    """:func:`to_json` as UTF-8 bytes, made once (what ``/preview`` sends as is).

    Raises ``RecursionError`` past orjson's nesting limit (as the engine and
    the YAML writer do on deep input) and ``ManifestError`` for a value JSON
    has no form for (YAML's ``!!binary`` or ``!!set``). What a terminal would
    act on is escaped even where JSON allows it raw (``escape_json_controls``),
    as the YAML writer escapes it: the output often lands on a terminal.
    """
    try:
        document = orjson.dumps(value, option=orjson.OPT_INDENT_2 | orjson.OPT_APPEND_NEWLINE)
        return escape_json_controls(document)
    except orjson.JSONEncodeError as err:
        if "recursion" in str(err).lower():
            raise RecursionError(str(err)) from None
        raise ManifestError(f"the output cannot be written as JSON: {err}") from None


def as_list(objects: Sequence[dict[str, Any]]) -> Any:
    """A single object as itself, several as a ``v1`` ``List`` (what kubectl prints)."""
    if len(objects) == 1:
        return objects[0]
    return {"apiVersion": "v1", "kind": "List", "items": list(objects)}


def unified_diff(
    pairs: Iterable[tuple[str, dict[str, Any], dict[str, Any]]], *, side: str = "injected"
) -> str:
    """A unified diff of each (label, before, after) as YAML; empty when nothing changed."""
    chunks: list[str] = []
    for label, before, after in pairs:
        if before is after:
            continue
        shown = escape_controls(label)  # an object's name, printed as is by YAML's side
        chunks.extend(
            difflib.unified_diff(
                to_yaml([before]).splitlines(keepends=True),
                to_yaml([after]).splitlines(keepends=True),
                fromfile=f"{shown} (as given)",
                tofile=f"{shown} ({side})",
            )
        )
    return "".join(chunks)
