"""Compact JSON with the standard library, byte for byte as orjson writes it.

The status annotation, the containers' digest and the bootstrap's quoted
scalars used to be written by orjson, and pods in clusters carry what it
wrote: a digest that changed with the encoder would make every injected pod
look outdated. The engine uses the standard library only (pyproject's import
contracts), so these encoders are set up to write what orjson writes for the
engine's data (strings, integers, booleans, ``None``, dicts and lists,
including the read-only subclasses in ``frozen``, and tuples): no spaces, text
as UTF-8 rather than ``\\u`` escapes, control characters escaped alike, keys
sorted only where asked. tests/unit/test_json_text.py holds them to orjson.

``strict_loads`` reads as strictly as orjson did, so that a status annotation
refused before is refused still: no ``NaN``/``Infinity``, no number beyond a
double's range, no unpaired surrogate. Nesting too deep for the parser's
recursion is an error like any other (``ValueError``), not a crash; that limit
is the interpreter's recursion limit, a little below orjson's 1024 levels, and
either is far beyond the two levels a status annotation has.
"""

from __future__ import annotations

import json
import math
from typing import Any, Final, NoReturn

# Both are reused: building an encoder per call (as json.dumps does with
# options) costs more than encoding the status annotation. Circular data is
# impossible here (the engine builds trees), so the check for it is skipped;
# floats never occur, and NaN would not be JSON, so it fails loudly.
_COMPACT: Final = json.JSONEncoder(
    ensure_ascii=False, separators=(",", ":"), check_circular=False, allow_nan=False
)
_SORTED: Final = json.JSONEncoder(
    ensure_ascii=False,
    separators=(",", ":"),
    check_circular=False,
    allow_nan=False,
    sort_keys=True,
)
# The longest integer literal that is certainly within a double's range.
_SHORT_NUMBER: Final = 300


def compact(value: Any) -> str:
    """``value`` as compact JSON text, keys in their order."""
    return _COMPACT.encode(value)


def canonical(value: Any) -> bytes:
    """``value`` as compact UTF-8 JSON with every object's keys sorted (a stable digest input)."""
    return _SORTED.encode(value).encode()


def _constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not JSON")


def _float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"{text[:20]}... is beyond a double's range")
    return value


def _int(text: str) -> int:
    if len(text) > _SHORT_NUMBER and math.isinf(float(text)):
        raise ValueError(f"{text[:20]}... is beyond a double's range")
    return int(text)


def _has_surrogate(value: Any) -> bool:
    if isinstance(value, str):
        try:
            value.encode()
        except UnicodeEncodeError:  # the one thing UTF-8 cannot encode
            return True
        return False
    if isinstance(value, dict):
        return any(_has_surrogate(key) or _has_surrogate(item) for key, item in value.items())
    if isinstance(value, list):
        return any(_has_surrogate(item) for item in value)
    return False


def strict_loads(text: str) -> Any:
    """Parse JSON text as orjson does; ``ValueError`` (or ``json.JSONDecodeError``) if not JSON."""
    try:
        value = json.loads(text, parse_constant=_constant, parse_float=_float, parse_int=_int)
        # Only a \u escape or a character outside ASCII can make a surrogate.
        if not (text.isascii() and "\\u" not in text) and _has_surrogate(value):
            raise ValueError("a string holds an unpaired surrogate")
    except RecursionError:
        raise ValueError("nested too deeply") from None
    return value
