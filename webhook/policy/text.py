"""CEL that writes user text into messages the way the engine's ``values.shorten`` does.

The engine quotes a value with Python's ``repr`` and cuts it to a bounded
length; the policy's messages must say the same, so that a refusal reads
alike in both modes. ``repr`` is reproduced exactly for every string of
printable ASCII (the quote it picks, backslashes and the quote escaped) and,
through one shared table (the ``reprEscapes`` variable), for ASCII control
characters and the non-printable characters of Unicode's control, format and
separator categories. Characters outside those (unassigned or private-use code
points) stay as they are in the policy's message, where ``repr`` escapes them:
the only difference, documented in docs/policy.md.
"""

from __future__ import annotations

import unicodedata
from typing import Final

from webhook.engine.values import SHOWN_CHARS
from webhook.policy.cel import string

V: Final = "variables."
# The variable holding the escapes table; ``escapes_variable`` declares it.
ESCAPES: Final = "reprEscapes"
_CATEGORIES: Final = frozenset({"Cc", "Cf", "Zl", "Zp", "Zs"})


def _escaped() -> dict[str, str]:
    table = {"\\": "\\\\"}
    for code in range(0x110000):
        char = chr(code)
        if (
            not char.isprintable()
            and char != " "
            and (code < 0x80 or unicodedata.category(char) in _CATEGORIES)
        ):
            table[char] = repr(char)[1:-1]
    return table


def escapes_variable() -> tuple[str, str]:
    """The variable mapping each character ``repr`` escapes to its escape."""
    entries = ", ".join(f"{string(char)}: {string(text)}" for char, text in _escaped().items())
    return ESCAPES, "{" + entries + "}"


def _quoted(text: str, body: str) -> str:
    # repr picks double quotes only for text with a single quote and no double one.
    return (
        f"({text}.contains(\"'\") && !{text}.contains('\"') ? '\"' + {body} + '\"' "
        f': "\'" + {body}.replace("\'", "\\\\\'") + "\'")'
    )


def repr_ascii(text: str) -> str:
    """CEL for ``repr(text)``, exact when ``text`` is printable ASCII."""
    return _quoted(text, f"{text}.replace('\\\\', '\\\\\\\\')")


def repr_any(text: str) -> str:
    """CEL for ``repr(text)`` for any text (see the module docstring for the limits)."""
    body = (
        f"lists.range(size({text})).map(ri, {text}.charAt(ri))"
        f".map(rc, {V}{ESCAPES}[?rc].orValue(rc)).join()"
    )
    return _quoted(text, body)


def shorten(text: str, *, limit: int = SHOWN_CHARS, ascii_only: bool = True) -> str:
    """CEL for ``values.shorten(text, limit)``: quoted, cut to ``limit`` with the full length.

    ``ascii_only``: the text is known to be printable ASCII (a cheaper ``repr``).
    """
    quote = repr_ascii if ascii_only else repr_any
    cut = f"{text}.substring(0, {limit})"
    return (
        f"(size({text}) <= {limit} ? {quote(text)} : "
        f"{quote(cut)} + '... (' + string(size({text})) + ' characters)')"
    )


def first_unprintable(text: str) -> str:
    """CEL for ``values.check_text``'s message on ``text``, which holds a character that is
    not printable ASCII: what it is and where."""
    position = f"size({text}.find('^[ -~]*'))"
    char = f"{text}.charAt({position})"
    return (
        f"'contains ' + ({char} < '\\u0080' ? 'a control character' : 'a non-ASCII character') "
        f"+ ' (' + {repr_any(char)} + ' at position ' + string({position}) + ')'"
    )
