"""Kubernetes resource quantities (``100m``, ``1.5Gi``, ``2e3``).

The apiserver refuses a pod whose quantities do not parse, or whose request
exceeds its limit, with an error that names neither this injector nor the
setting that caused it. Checking here lets the refusal say which label was wrong.

Values are judged the way ``k8s.io/apimachinery``'s ``resource.Quantity``
defines them: the grammar of ``ParseQuantity`` (decimal suffixes n, u, m, k,
M, G, T, P, E; binary Ki..Ei; or an exponent ``e``/``E``), a magnitude of at
most 2^63-1 in base units ("no quantity may represent a number greater than
2^63-1 in magnitude"), and a precision of one nano-unit, finer values being
rounded up ("if you want some resources, you should get some"). Kubernetes
itself only caps binary quantities and lets a decimal ``1e1000000`` through
to overflow later in the scheduler; here anything above the bound is refused.

The exact value is an ``int`` of nano-units, computed only after the magnitude
is known to be in range, so ``9e2147483647`` costs a few integer operations
rather than a billion-digit number (or, as with ``Decimal.scaleb`` before,
an Overflow traceback).
"""

from __future__ import annotations

import re
from typing import Final

from webhook.engine.values import shorten

_QUANTITY = re.compile(
    r"(?P<sign>[+-]?)(?P<int>[0-9]*)(?:\.(?P<frac>[0-9]*))?"
    r"(?P<suffix>Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E|[eE][+-]?[0-9]+)?"
)
_BINARY: Final = {"Ki": 1, "Mi": 2, "Gi": 3, "Ti": 4, "Pi": 5, "Ei": 6}
_DECIMAL: Final = {"n": -9, "u": -6, "m": -3, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}

NANO_PER_UNIT: Final = 10**9
MAX_UNITS: Final = 2**63 - 1
MAX_NANO: Final = MAX_UNITS * NANO_PER_UNIT  # 28 decimal digits


class QuantityError(ValueError):
    """Not a Kubernetes quantity, or one out of range."""


def parse_quantity(text: str) -> int:
    """The value of a quantity in nano-units (rounded up, like Kubernetes); QuantityError if none.

    ``2`` -> 2_000_000_000, ``100m`` -> 100_000_000, ``1Ki`` -> 1_024_000_000_000.
    """
    match = _QUANTITY.fullmatch(text)
    if match is None or not (match["int"] or match["frac"]):
        raise QuantityError(f"{shorten(text)} is not a Kubernetes quantity (e.g. 100m, 128Mi)")
    whole, frac = match["int"], match["frac"] or ""
    suffix = match["suffix"] or ""
    digits = (whole + frac).lstrip("0")
    if not digits:
        return 0
    binary_steps = _BINARY.get(suffix, 0)
    if suffix in _BINARY:
        exponent = 0
    elif suffix in _DECIMAL:
        exponent = _DECIMAL[suffix]
    elif suffix:
        exponent = int(suffix[1:])  # bounded: the text is at most MAX_SCALAR_CHARS long
    else:
        exponent = 0
    power = exponent - len(frac) + 9  # value = int(digits) * 10**power nano-units * 1024**steps
    # Magnitude first, so a huge exponent never becomes a huge number: the value
    # is at least 10**(len(digits) - 1 + power) * 1000**steps, and MAX_NANO < 10**28.
    if len(digits) - 1 + power + 3 * binary_steps > 28:
        raise _too_large(text)
    mantissa: int = int(digits) * 1024**binary_steps
    value: int
    if power >= 0:
        value = mantissa * int(10**power)
    elif -power > len(str(mantissa)):
        value = 1  # below one nano-unit: Kubernetes rounds it up to 1n
    else:
        value = -(-mantissa // int(10 ** (-power)))  # ceiling division
    if value > MAX_NANO:
        raise _too_large(text)
    return -value if match["sign"] == "-" else value


def _too_large(text: str) -> QuantityError:
    return QuantityError(
        f"{shorten(text)} is too large: Kubernetes quantities stop at 2^63-1 ({MAX_UNITS})"
    )


def check_quantity(text: str) -> int:
    """Parse a resource quantity, which must also be non-negative."""
    value = parse_quantity(text)
    if value < 0:
        raise QuantityError(f"{shorten(text)} is negative")
    return value
