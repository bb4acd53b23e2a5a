"""Compact flow-style YAML, the form of the Envoy bootstrap (``bootstrap.render_bootstrap``).

JSON's structure, with the quotes left off only where a string cannot be read
as anything else, so it has exactly one reading whatever ends up inside a
string. Its own module because two readers need ``scalar``: the bootstrap,
and the expression language (``expr``), which writes the one scalar a pod's
settings put into the bootstrap (the xDS host) in both modes.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator, Mapping
from typing import Any, Final

from webhook.engine.json_text import compact

# A string is written plain (unquoted) only when it is a name, a dotted name
# or a path, or an IPv4 address (four numbers cannot make one YAML number),
# so that no YAML reader can take it for a number, a boolean, null, an alias,
# a tag or a flow indicator, and it is not one of YAML 1.1's boolean/null
# words (Envoy's YAML reader, yaml-cpp, turns plain "yes"/"on" into booleans)
# or a float spelling ("inf", "nan"). Anything else ("10s", "*", "::", every
# "$(VAR)", whose expansion could be an IPv6 address or a number) is a JSON
# string, which is also a YAML double-quoted scalar.
PLAIN: Final = re.compile(r"[A-Za-z_/][A-Za-z0-9_./-]*|\d{1,3}(?:\.\d{1,3}){3}")
WORDS: Final = frozenset(
    {"y", "n", "yes", "no", "on", "off", "true", "false", "null", "inf", "infinity", "nan"}
)


# A string value this long that occurs more than once (the TCP proxy's type
# URL, in all four transparent filter chains) is written once with an anchor
# (``&t0``) and then as an alias (``*t0``), which saves bytes in every pod. Envoy's
# YAML reader resolves aliases like any YAML reader; keys are never aliased.
_ALIASED_MIN_CHARS: Final = 32


def _strings(value: Any) -> Iterator[str]:
    """Every string value (not key) in JSON-like data, in document order."""
    if isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)
    elif isinstance(value, str):
        yield value


def flow_document(value: Any) -> str:
    """:func:`_flow`, with long repeated string values anchored once and aliased after."""
    counts = Counter(text for text in _strings(value) if len(text) >= _ALIASED_MIN_CHARS)
    aliases = {
        text: f"t{index}" for index, text in enumerate(t for t, n in counts.items() if n > 1)
    }
    return _flow(value, aliases, set())


def _flow(value: Any, aliases: Mapping[str, str], anchored: set[str]) -> str:
    """Compact flow-style YAML for JSON-like data of printable ASCII (all a bootstrap holds)."""
    if isinstance(value, dict):
        return (
            "{"
            + ",".join(
                f"{scalar(key)}: {_flow(item, aliases, anchored)}" for key, item in value.items()
            )
            + "}"
        )
    if isinstance(value, list):
        return "[" + ",".join(_flow(item, aliases, anchored) for item in value) + "]"
    if isinstance(value, str) and value in aliases:
        name = aliases[value]
        if value in anchored:
            return f"*{name}"
        anchored.add(value)
        return f"&{name} {scalar(value)}"
    return scalar(value)


def scalar(value: Any) -> str:
    """One scalar (or key): plain when it can be read only as that string, else JSON."""
    if isinstance(value, str) and PLAIN.fullmatch(value) and value.lower() not in WORDS:
        return value
    return compact(value)
