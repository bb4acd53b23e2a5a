"""A node killed before its teardown must not stop the next one from starting.

The leftovers are made by hand here (a bridge, a node directory, a KUBE-
chain with a jump to it, a ``cni-`` network namespace), beside things that
are not a node's (another bridge, another chain); reclaiming removes the
first kind and keeps the second. Done under the machine-wide node lock, as
a node start does, so it never races a running node.
"""

from __future__ import annotations

import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.kube.host import (
    BRIDGE,
    NETNS_DIR,
    WORKDIR_PREFIX,
    links,
    reclaim_leftovers,
    unsupported_reason,
)
from harness.kube.node import Node
from harness.kube.node_parts import host_lock

OUR_CHAIN = "KUBE-LEFTOVER-TEST"
OTHER_CHAIN = "SIDECAR-TEST-KEEP"
OTHER_BRIDGE = "sitestkeep0"
CNI_NETNS = "cni-leftover-test"


def _run(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout


def _rules() -> list[str]:
    return [
        line.split(" [")[0]
        for line in _run("iptables-save").splitlines()
        if line.startswith(("-A", ":"))
    ]


def _chains() -> set[str]:
    return {
        line[1:].split()[0]
        for line in _run("iptables-save", "-t", "filter").splitlines()
        if line.startswith(":")
    }


@pytest.fixture
def node_lock() -> Iterator[None]:
    reason = unsupported_reason()
    if reason is not None:
        pytest.skip(f"this machine cannot run a Kubernetes node: {reason}")
    with host_lock(timeout=1800):
        yield
        for argv in (
            ("ip", "link", "del", OTHER_BRIDGE),
            ("ip", "link", "del", BRIDGE),
            ("ip", "netns", "del", CNI_NETNS),
        ):
            subprocess.run(argv, capture_output=True, check=False)
        for chain in (OUR_CHAIN, OTHER_CHAIN):
            subprocess.run(
                ["iptables", "-D", "FORWARD", "-j", chain], capture_output=True, check=False
            )
            subprocess.run(["iptables", "-X", chain], capture_output=True, check=False)


def test_reclaiming_removes_a_killed_nodes_leftovers_and_nothing_else(node_lock: None) -> None:
    stale = Path(tempfile.mkdtemp(prefix=WORKDIR_PREFIX))
    _run("ip", "link", "add", BRIDGE, "type", "bridge")
    _run("ip", "link", "add", OTHER_BRIDGE, "type", "bridge")
    _run("ip", "netns", "add", CNI_NETNS)
    for chain in (OUR_CHAIN, OTHER_CHAIN):
        _run("iptables", "-N", chain)
        _run("iptables", "-A", "FORWARD", "-j", chain)

    found = reclaim_leftovers(
        containerd_root=Node.containerd_root(), kube_proxy=Path("/nonexistent/kube-proxy")
    )

    assert f"directory {stale}" in found
    assert f"network link added: {BRIDGE}" in found
    assert not stale.exists()
    assert BRIDGE not in links()
    assert OUR_CHAIN not in _chains()
    assert f"-j {OUR_CHAIN}" not in _run("iptables-save", "-t", "filter")
    assert not (NETNS_DIR / CNI_NETNS).exists()
    assert OTHER_CHAIN in _chains()
    assert OTHER_BRIDGE in _run("ip", "-o", "link", "show")
    assert (
        reclaim_leftovers(
            containerd_root=Node.containerd_root(), kube_proxy=Path("/nonexistent/kube-proxy")
        )
        == []
    )


def test_reclaiming_a_clean_host_changes_nothing(node_lock: None) -> None:
    before = _rules()
    assert (
        reclaim_leftovers(
            containerd_root=Node.containerd_root(), kube_proxy=Path("/nonexistent/kube-proxy")
        )
        == []
    )
    assert _rules() == before
