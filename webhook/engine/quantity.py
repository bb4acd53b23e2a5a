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

Where Kubernetes' reading departs from the number written, the two modes
(this parser and the policy's CEL, which calls Kubernetes' own) agree on a
refusal instead (docs/settings.md, "Quantities"):

* Kubernetes takes a quantity without digits (``.``, ``-``, ``Mi``, ``e3``)
  as zero, and so does this parser;
* it caps binary quantities at 2^63-1 (``8Ei`` reads as 2^63-1), so a binary
  quantity is refused from 2^63-1 up, where the cap makes values alike;
* it reads an exponent in 32 bits (``1e4294967296`` reads as 1), and it
  writes out ``10**exponent`` to compare or round a quantity, so
  ``1e-2147483647`` or ``0e999999999`` hold the API server past its request
  deadline: an exponent beyond +-999 is refused (as too large when it makes
  a non-zero number huge). No quantity within the bounds needs more: a value
  is at most 260 characters, so it cannot carry the digits that would make
  ``1e-999`` (below a nano-unit, read as 1n) mean more than that.

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
# The grammar, for the policy mode's CEL too (RE2 reads it alike).
PATTERN: Final = _QUANTITY.pattern
_BINARY: Final = {"Ki": 1, "Mi": 2, "Gi": 3, "Ti": 4, "Pi": 5, "Ei": 6}
_DECIMAL: Final = {"n": -9, "u": -6, "m": -3, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}

NANO_PER_UNIT: Final = 10**9
MAX_UNITS: Final = 2**63 - 1
MAX_NANO: Final = MAX_UNITS * NANO_PER_UNIT  # 28 decimal digits
# The largest exponent magnitude taken (see the module docstring: Kubernetes' cost).
MAX_EXPONENT: Final = 999


class QuantityError(ValueError):
    """Not a Kubernetes quantity, or one out of range."""


def parse_quantity(text: str) -> int:
    """The value of a quantity in nano-units (rounded up, like Kubernetes); QuantityError if none.

    ``2`` -> 2_000_000_000, ``100m`` -> 100_000_000, ``1Ki`` -> 1_024_000_000_000.
    """
    match = _QUANTITY.fullmatch(text)
    if match is None or text == "":
        raise _not_a_quantity(text)
    whole, frac = match["int"], match["frac"] or ""
    suffix = match["suffix"] or ""
    digits = (whole + frac).lstrip("0")
    binary_steps = _BINARY.get(suffix, 0)
    exponent = _exponent(suffix)
    if abs(exponent) > MAX_EXPONENT:
        if digits and exponent > 0:
            raise _too_large(text)
        raise QuantityError(f"{shorten(text)} has an exponent beyond +-{MAX_EXPONENT}")
    if not digits:
        return 0  # Kubernetes too: no digits at all ("-", ".", "Mi") is zero
    power = exponent - len(frac) + 9  # value = int(digits) * 10**power nano-units * 1024**steps
    # Magnitude first, so a huge exponent never becomes a huge number: the value
    # is at least 10**(len(digits) - 1 + power) * 1000**steps, and MAX_NANO < 10**28.
    if len(digits) - 1 + power + 3 * binary_steps > 28:
        raise _too_large(text)
    value = _nano(int(digits) * 1024**binary_steps, power)
    if value > MAX_NANO or (binary_steps and value == MAX_NANO):
        # Binary quantities are capped at 2^63-1 by Kubernetes, so at the bound
        # (2^63-1 written in Ki) one cannot tell them from those over it.
        raise _too_large(text)
    return -value if match["sign"] == "-" else value


def _nano(mantissa: int, power: int) -> int:
    """``mantissa * 10**power``, rounded up to a whole number (of nano-units)."""
    if power >= 0:
        return mantissa * int(10**power)
    if -power > len(str(mantissa)):
        return 1  # below one nano-unit: Kubernetes rounds it up to 1n
    return -(-mantissa // int(10 ** (-power)))  # ceiling division


def _exponent(suffix: str) -> int:
    """The power of ten a suffix stands for (0 for the binary ones, counted in ``_BINARY``)."""
    if suffix in _DECIMAL:
        return _DECIMAL[suffix]
    if suffix and suffix not in _BINARY:
        return int(suffix[1:])  # bounded: the text is at most MAX_SCALAR_CHARS long
    return 0


def _not_a_quantity(text: str) -> QuantityError:
    return QuantityError(f"{shorten(text)} is not a Kubernetes quantity (e.g. 100m, 128Mi)")


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
