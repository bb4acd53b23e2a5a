"""Parsers for the value types settings take: ports, CIDRs, booleans, addresses.

Each raises ValueError with a short phrase saying what was expected; the caller
adds the key and where it was set, so messages read as one sentence.

Strict on purpose: whatever is accepted here ends up in a shell script, an
iptables rule or an Envoy bootstrap, where a surprise costs a pod that cannot
start. So values are printable ASCII only, digits are ASCII digits (``int()``
would take Arabic-Indic or full-width ones), and every list has a maximum
length that keeps the rendered ``mesh-init`` command small (docs/settings.md,
"Limits"). Every message quotes user text through ``shorten``, so a huge value
never comes back as a huge message.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from typing import Final, Literal

ALL: Final = "*"
LOG_LEVELS: Final = ("trace", "debug", "info", "warning", "error", "critical", "off")

PortList = tuple[int, ...]
CidrList = tuple[str, ...]
AllOr = Literal["*"]

# --- limits (docs/settings.md, "Limits", says why each is what it is) -------------

# Items per list. 128 ports or CIDRs is far beyond what a pod needs (a few to a
# few dozen), and with these the worst accepted settings still render a
# ``mesh-init`` script well under ``iptables.MAX_SCRIPT_BYTES``
# (tests/unit/test_iptables.py renders it).
MAX_PORTS: Final = 128
MAX_CIDRS: Final = 128
# Raw characters per value, checked before any parsing, so a multi-megabyte
# annotation is refused before it costs anything. Each is the longest
# sensible spelling of a full list (128 x "65535, " and 128 x a 43-character
# IPv6 CIDR plus separators, with room for spaces), or of the longest scalar:
# a 253-character DNS name plus ":65535" for ``xds-address``.
MAX_PORT_LIST_CHARS: Final = 1024
MAX_CIDR_LIST_CHARS: Final = 8192
MAX_SCALAR_CHARS: Final = 260
# How much of a value an error message quotes.
SHOWN_CHARS: Final = 48

_PORT = re.compile(r"[0-9]{1,5}")
_PREFIX_LENGTH = re.compile(r"[0-9]{1,3}")
_NAMESPACE_NAME = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
_DOTTED_NUMBERS = re.compile(r"[0-9.]+")
_IMAGE_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")


# The patterns above as the policy mode's CEL matches them too (RE2 reads these
# alike: ASCII classes, no look-arounds or back-references), so that a value's
# shape is written once for both modes.
PATTERNS: Final = {
    "port": _PORT.pattern,
    "host name": _HOSTNAME.pattern,
    "image tag": _IMAGE_TAG.pattern,
    "prefix length": _PREFIX_LENGTH.pattern,
}


def shorten(text: str, limit: int = SHOWN_CHARS, *, quote: bool = True) -> str:
    """User text for a message or a log line, however long it is: the one place that cuts it.

    Quoted (the default, for messages): ``repr(text)``, so blanks and control
    characters show, cut to about ``limit`` characters with the full length
    noted. Unquoted (log fields and reasons that have a fixed bound): the text
    itself, at most ``limit`` characters, ending in ``...`` when cut.
    """
    if not quote:
        return text if len(text) <= limit else text[: limit - 3] + "..."
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}... ({len(text)} characters)"


# What a terminal acts on rather than shows: the C0 controls (ESC starts every
# escape sequence, CR and BS overwrite what came before, LF breaks a one-line
# message), DEL, the C1 controls (0x9b alone is CSI to a terminal that takes
# 8-bit controls), Unicode's bidirectional marks, embeddings, overrides and
# isolates (they reorder what the reader sees, as in "Trojan Source"), and the
# line and paragraph separators.
_TERMINAL_ACTS_ON: Final = re.compile(
    r"[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]"
)


def escape_controls(text: str) -> str:
    """``text`` safe to show on a terminal: what a terminal would act on, written out.

    Each such character becomes its Python escape (``\\x1b``, ``\\x9b``,
    ``\\u202e``); everything else, other non-ASCII text included, stays as it
    is. Applied where text meets people: the CLI's stderr, ``check``'s output,
    admission messages and warnings (kubectl prints them), ``/preview``'s
    errors. Idempotent: the escapes are plain printable ASCII.
    """
    if _TERMINAL_ACTS_ON.search(text) is None:
        return text
    return _TERMINAL_ACTS_ON.sub(_escaped, text)


def _escaped(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


# The same characters above 0x1f in UTF-8, which JSON may carry raw (its
# encoders escape only those below 0x20): DEL, the C1 controls, the
# bidirectional marks and controls, the line and paragraph separators. Lead
# bytes and ASCII only start a match, so it never starts inside a character.
_RAW_IN_JSON: Final = re.compile(
    rb"\x7f|\xc2[\x80-\x9f]|\xd8\x9c|\xe2\x80[\x8e\x8f\xa8-\xae]|\xe2\x81[\xa6-\xa9]"
)


def escape_json_controls(document: bytes) -> bytes:
    """Encoded JSON (UTF-8) with those characters as ``\\u`` escapes: the same data, safe bytes.

    They can only occur inside strings, where ``\\u009b`` means what the raw
    character meant, so a parser reads the same document; a terminal shown
    the bytes reads the escape rather than acting on it.
    """
    if _RAW_IN_JSON.search(document) is None:
        return document
    return _RAW_IN_JSON.sub(_json_escaped, document)


def _json_escaped(match: re.Match[bytes]) -> bytes:
    return f"\\u{ord(match.group().decode()):04x}".encode()


def is_namespace_name(name: str) -> bool:
    """Whether ``name`` can be a namespace's name: an RFC 1123 label (63 characters at most).

    Anything else cannot exist, and must never be spliced into an API URL.
    """
    return _NAMESPACE_NAME.fullmatch(name) is not None


# What is_namespace_name accepts, for messages.
NAMESPACE_NAME_RULE = "lower-case letters, digits and '-', at most 63 characters"

# A revision names its objects with itself as a suffix (sidecar-injector-canary),
# and a Service's name is a DNS label of at most 63 characters: 17 of them are
# "sidecar-injector-".
REVISION_NAME_MAX: Final = 46
REVISION_NAME_RULE = (
    f"lower-case letters, digits and '-', starting and ending with a letter or digit,"
    f" at most {REVISION_NAME_MAX} characters"
)


def is_revision_name(name: str) -> bool:
    """Whether ``name`` can name a revision or a tag (a label value and an object name suffix)."""
    return len(name) <= REVISION_NAME_MAX and _NAMESPACE_NAME.fullmatch(name) is not None


def check_text(raw: str) -> None:
    """Printable ASCII only: no control characters (newline, tab, NUL, DEL), no Unicode."""
    if raw.isascii() and raw.isprintable():
        return
    position, char = next(
        (i, c) for i, c in enumerate(raw) if not (c.isascii() and c.isprintable())
    )
    kind = "a non-ASCII character" if not char.isascii() else "a control character"
    raise ValueError(f"contains {kind} ({char!r} at position {position})")


def split_list(raw: str, *, separator: str, max_items: int | None = None) -> list[str]:
    """Split a list value; blanks around items are ignored, empty items are not allowed.

    The item count is checked before splitting, on the separators alone.
    """
    if raw.strip() == "":
        return []
    if max_items is not None and raw.count(separator) + 1 > max_items:
        raise ValueError(f"has {raw.count(separator) + 1} items; at most {max_items} are allowed")
    items = [item.strip() for item in raw.split(separator)]
    if any(item == "" for item in items):
        raise ValueError(f"has an empty item (items are separated by {separator!r})")
    return items


def parse_port(text: str) -> int:
    """A TCP port number, 1-65535, in ASCII digits."""
    if not _PORT.fullmatch(text) or not 1 <= int(text) <= 65535:
        raise ValueError(f"{shorten(text)} is not a port number (1-65535)")
    return int(text)


def parse_ports(raw: str, *, separator: str, allow_all: bool) -> PortList | AllOr:
    """A list of ports, de-duplicated and sorted; ``*`` means all when allowed."""
    if allow_all and raw.strip() == ALL:
        return ALL
    items = split_list(raw, separator=separator, max_items=MAX_PORTS)
    return tuple(sorted({parse_port(item) for item in items}))


def parse_cidr(text: str) -> str:
    """An IPv4 or IPv6 network in CIDR notation (a bare address means a /32 or /128).

    Returned in canonical form (``FD00:0::/8`` -> ``fd00::/8``, ``10.0.0.0/08`` ->
    ``10.0.0.0/8``): that is the text the rules carry. A network with host bits
    set (``10.0.0.1/8``) is refused, naming the network it would be, rather
    than widened silently; so is an IPv4-mapped IPv6 address (``::ffff:1.2.3.4``),
    which ip6tables would never see (IPv4 traffic goes through iptables), and
    which the API server's CEL (policy mode) refuses too. Parsed with the C
    library's ``inet_pton`` (strict: dotted-quad IPv4 without leading zeros,
    no IPv6 zone index, which iptables could not take): far cheaper than
    ``ipaddress.ip_network`` for IPv6, which matters for the longest lists on
    a cold admission (docs/settings.md, "Limits").
    """
    address, slash, length = text.partition("/")
    family, bits = (socket.AF_INET6, 128) if ":" in address else (socket.AF_INET, 32)
    try:
        packed = socket.inet_pton(family, address)
    except OSError:
        packed = b""
    if (
        not packed
        or (slash and not _PREFIX_LENGTH.fullmatch(length))
        or packed[:12] == _IPV4_MAPPED
    ):
        raise ValueError(f"{shorten(text)} is not a CIDR (e.g. 10.0.0.0/8 or fd00::/8)")
    prefix = int(length) if slash else bits
    if prefix > bits:
        raise ValueError(f"{shorten(text)} has a prefix length over {bits}")
    host_bits = bits - prefix
    number = int.from_bytes(packed, "big")
    network = f"{_address_text(family, (number >> host_bits) << host_bits)}/{prefix}"
    if number & ((1 << host_bits) - 1):
        raise ValueError(f"{shorten(text)} has host bits set (its network is {network})")
    return network


# The first 96 bits of an IPv4-mapped IPv6 address (RFC 4291 2.5.5.2).
_IPV4_MAPPED: Final = bytes(10) + b"\xff\xff"


def _address_text(family: int, number: int) -> str:
    """An address as the API server's CEL (Go's ``netip``) writes it.

    ``inet_ntop`` and Go agree (RFC 5952) except where the first 96 bits are
    zero: glibc writes the last 32 as a dotted quad (``::1.2.3.4``), Go in hex
    (``::102:304``). That rare case goes through ``ipaddress``, which writes
    what Go does; the common one stays on the fast path.
    """
    if family == socket.AF_INET:
        return socket.inet_ntop(family, number.to_bytes(4, "big"))
    if number >> 32 == 0:
        return ipaddress.IPv6Address(number).compressed
    return socket.inet_ntop(family, number.to_bytes(16, "big"))


def parse_cidrs(raw: str, *, separator: str, allow_all: bool) -> CidrList | AllOr:
    """A list of CIDRs in the order given, without duplicates; ``*`` means all when allowed."""
    if allow_all and raw.strip() == ALL:
        return ALL
    items = split_list(raw, separator=separator, max_items=MAX_CIDRS)
    return tuple(dict.fromkeys(parse_cidr(item) for item in items))


def cidr_family(cidr: str) -> int:
    """4 or 6, for a CIDR in the canonical form ``parse_cidr`` returns."""
    return 6 if ":" in cidr else 4


def parse_bool(raw: str) -> bool:
    """``true`` or ``false``, as Kubernetes users write them in labels."""
    lowered = raw.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    raise ValueError(f"{shorten(raw)} is not true or false")


def parse_log_level(raw: str) -> str:
    """One of Envoy's log levels."""
    level = raw.strip().lower()
    if level not in LOG_LEVELS:
        raise ValueError(f"{shorten(raw)} is not an Envoy log level ({', '.join(LOG_LEVELS)})")
    return level


def check_address(raw: str) -> str:
    """``host:port`` for the xDS server; host is a DNS name, IPv4, or ``[IPv6]``.

    Strict, because the host goes into the bootstrap as an address Envoy must
    resolve: printable ASCII only, a DNS name of RFC 1123 labels (at most 253
    characters), an IPv4 address in dotted-quad form, or a bracketed IPv6
    address without a zone index (nor an IPv4-mapped one); the port in ASCII digits.
    """
    check_text(raw)
    host, sep, port = raw.rpartition(":")
    if not sep or not host:
        raise ValueError(f"{shorten(raw)} is not host:port")
    parse_port(port)
    if host.startswith("[") and host.endswith("]"):
        try:
            # No zone index, and no IPv4-mapped form: the API server's CEL
            # (policy mode) takes neither, and a mapped address is IPv4 anyway.
            if "%" in host or ipaddress.IPv6Address(host[1:-1]).ipv4_mapped is not None:
                raise ValueError
        except ValueError:
            raise ValueError(f"{shorten(raw)} has an invalid IPv6 address") from None
        return raw
    if _DOTTED_NUMBERS.fullmatch(host):
        # All-numeric: an IPv4 address or nothing (RFC 1123 2.1 rules out numeric names).
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise ValueError(f"{shorten(raw)} has an invalid IPv4 address") from None
        return raw
    if len(host) > 253 or not _HOSTNAME.fullmatch(host):
        raise ValueError(f"{shorten(raw)} has an invalid host name")
    return raw


def split_address(address: str) -> tuple[str, int]:
    """``host:port`` (host a name, IPv4 or ``[IPv6]``, as ``check_address`` takes it)
    -> (host without brackets, port)."""
    host, _, port = address.rpartition(":")
    return host.removeprefix("[").removesuffix("]"), int(port)


def parse_image_tag(raw: str) -> str:
    """An image tag as the OCI distribution spec allows it."""
    if not _IMAGE_TAG.fullmatch(raw):
        raise ValueError(f"{shorten(raw)} is not an image tag")
    return raw
