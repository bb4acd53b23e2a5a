"""Parsers for the value types settings take: ports, CIDRs, booleans, addresses.

Each raises ValueError with a short phrase saying what was expected; the caller
adds the key and where it was set, so messages read as one sentence.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Final, Literal

ALL: Final = "*"
LOG_LEVELS: Final = ("trace", "debug", "info", "warning", "error", "critical", "off")

PortList = tuple[int, ...]
CidrList = tuple[str, ...]
AllOr = Literal["*"]

_HOSTNAME = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$"
)


def split_list(raw: str, *, separator: str) -> list[str]:
    """Split a list value; blanks around items are ignored, empty items are not allowed."""
    if raw.strip() == "":
        return []
    items = [item.strip() for item in raw.split(separator)]
    if any(item == "" for item in items):
        raise ValueError(f"has an empty item (items are separated by {separator!r})")
    return items


def parse_port(text: str) -> int:
    """A TCP port number, 1-65535."""
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise ValueError(f"{text!r} is not a port number (1-65535)")
    return int(text)


def parse_ports(raw: str, *, separator: str, allow_all: bool) -> PortList | AllOr:
    """A list of ports, de-duplicated and sorted; ``*`` means all when allowed."""
    if allow_all and raw.strip() == ALL:
        return ALL
    return tuple(sorted({parse_port(item) for item in split_list(raw, separator=separator)}))


def parse_cidr(text: str) -> str:
    """An IPv4 or IPv6 network in CIDR notation (a bare address means a /32 or /128)."""
    try:
        network = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise ValueError(f"{text!r} is not a CIDR (e.g. 10.0.0.0/8)") from None
    return str(network)


def parse_cidrs(raw: str, *, separator: str, allow_all: bool) -> CidrList | AllOr:
    """A list of CIDRs in the order given, without duplicates; ``*`` means all when allowed."""
    if allow_all and raw.strip() == ALL:
        return ALL
    return tuple(dict.fromkeys(parse_cidr(item) for item in split_list(raw, separator=separator)))


def parse_bool(raw: str) -> bool:
    """``true`` or ``false``, as Kubernetes users write them in labels."""
    lowered = raw.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    raise ValueError(f"{raw!r} is not true or false")


def parse_log_level(raw: str) -> str:
    """One of Envoy's log levels."""
    level = raw.strip().lower()
    if level not in LOG_LEVELS:
        raise ValueError(f"{raw!r} is not an Envoy log level ({', '.join(LOG_LEVELS)})")
    return level


def check_address(raw: str) -> str:
    """``host:port`` for the xDS server; host is a DNS name, IPv4, or ``[IPv6]``."""
    host, sep, port = raw.rpartition(":")
    if not sep or not host:
        raise ValueError(f"{raw!r} is not host:port")
    parse_port(port)
    if host.startswith("[") and host.endswith("]"):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise ValueError(f"{raw!r} has an invalid IPv6 address") from None
        return raw
    if not _HOSTNAME.match(host):
        raise ValueError(f"{raw!r} has an invalid host name")
    return raw


def parse_image_tag(raw: str) -> str:
    """An image tag as the OCI distribution spec allows it."""
    if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}", raw):
        raise ValueError(f"{raw!r} is not an image tag")
    return raw
