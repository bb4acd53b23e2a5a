"""The most expensive settings the limits accept, for the policy mode's CEL cost.

Every list at its maximum (128 ports, 128 CIDRs) in its longest spelling,
every scalar padded to the length limit (blanks around a value are allowed),
the longest ``xds-address``, quantities of 260 characters, and a copied
status annotation just under the size the injector keeps. With every setting
locked, the same values go in the namespace's annotations (the winners,
judged) and in the pod's (judged again, against them): the most CEL one
admission can be made to run. Used by tests/e2e/test_policy_limits.py and
scripts/measure_policy_cost.py.
"""

from __future__ import annotations

from typing import Any

from webhook.contract import constants
from webhook.engine.config import InjectorConfig
from webhook.engine.settings import SETTING_NAMES
from webhook.engine.status import MAX_STATUS_CHARS
from webhook.engine.values import MAX_CIDRS, MAX_PORTS, MAX_SCALAR_CHARS

P = constants.PREFIX
LOCKED_EVERYTHING = InjectorConfig(locked_settings=frozenset(SETTING_NAMES))


def _padded(value: str) -> str:
    """``value`` with blanks around it up to the scalar length limit."""
    room = MAX_SCALAR_CHARS - len(value)
    return " " * (room // 2) + value + " " * (room - room // 2)


def worst_settings() -> dict[str, str]:
    """Every setting, at its most expensive accepted value."""
    ports = ", ".join(str(65535 - i) for i in range(MAX_PORTS))

    def cidrs(kind: int) -> str:
        return ", ".join(
            f"{0x1000 + kind:x}:{0x1000 + i:x}:2222:3333:4444:5555:6666:7777/128"
            for i in range(MAX_CIDRS)
        )

    host = ".".join(["a" * 63, "b" * 63, "c" * 63, "d" * 61])  # 253 characters
    zeros = MAX_SCALAR_CHARS - 2
    return {
        P + "proxy-version": _padded("v" + "1" * 127),
        P + "proxy-cpu-request": "0." + "0" * (zeros - 1) + "1",
        P + "proxy-cpu-limit": "0" * zeros + "1k",
        P + "proxy-memory-request": "0" * (zeros - 1) + "1Mi",
        P + "proxy-memory-limit": "0" * (zeros - 1) + "1Gi",
        P + "log-level": _padded("critical"),
        P + "include-inbound-ports": ports,
        P + "exclude-inbound-ports": ports,
        P + "exclude-outbound-ports": ports,
        P + "include-outbound-cidrs": cidrs(2),
        P + "exclude-outbound-cidrs": cidrs(1),
        P + "native-sidecar": _padded("false"),
        P + "hold-application": _padded("true"),
        P + "xds-address": f"{host}:65535",
    }


def copied_status() -> str:
    """A status annotation copied from another pod, as long as the injector still keeps it
    (its containers are missing, so it is injected again and the old value kept)."""
    escaped = '"\\\x01' * 8  # characters JSON escapes: the escaping's worst case
    head = '{"version":"0","initContainers":["mesh-init"],"pad":"'
    room = MAX_STATUS_CHARS // 2 - len(head) - 2
    return head + escaped + "x" * (room - len(escaped) * 3) + '"}'


def worst_pod(annotations: dict[str, str]) -> dict[str, Any]:
    """A one-container pod carrying ``annotations`` and a copied status annotation."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "worst",
            "annotations": {**annotations, P + "status": copied_status()},
        },
        "spec": {"containers": [{"name": "app", "image": "registry.invalid/app:1"}]},
    }
