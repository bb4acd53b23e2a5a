"""mesh-init's script run by a real shell against stand-in tools, and its rules through the real
``iptables-restore --test`` in a network namespace of their own.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.builders import proxy_settings, worst_proxy_settings
from webhook.engine.iptables import (
    SKIPPED_IPV6,
    render_rules,
    render_script,
)

# What legacy ip6tables prints when the kernel has no ip6table_nat module.
NO_NAT_TABLE = (
    "ip6tables v1.8.9 (legacy): can't initialize ip6tables table `nat':"
    " Table does not exist (do you need to insmod?)"
)


def fake_tools(
    tmp_path: Path, *, fail: str = "", probe_rc: int = 0, probe_says: str = NO_NAT_TABLE
) -> dict[str, str]:
    """A PATH whose iptables tools record their input (and ``fail`` exits 1).

    ``ip6tables`` (the probe) exits ``probe_rc``, printing ``probe_says`` on
    stderr when that is not 0.
    """
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("iptables-restore", "ip6tables-restore", "iptables-save", "ip6tables-save"):
        body = f'cat > "{tmp_path}/{tool}.in"\n' if tool.endswith("restore") else "echo saved\n"
        if tool == fail:
            body = f'cat > /dev/null; echo "{tool}: line 3 failed" >&2; exit 1\n'
        (bin_dir / tool).write_text(f"#!/bin/sh\n{body}")
    says = f"echo {shlex.quote(probe_says)} >&2\n" if probe_rc else ""
    (bin_dir / "ip6tables").write_text(f"#!/bin/sh\n{says}exit {probe_rc}\n")
    for path in bin_dir.iterdir():
        path.chmod(0o755)
    return {"PATH": f"{bin_dir}:/usr/bin:/bin"}


def run_script(script: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["sh", "-c", script], env=env, capture_output=True, text=True, timeout=30, check=False
    )


IPV6_KERNEL = Path("/proc/net/if_inet6").exists()


@pytest.mark.skipif(not IPV6_KERNEL, reason="this kernel has no IPv6")
@pytest.mark.parametrize(
    "annotations",
    [
        pytest.param({}, id="defaults"),
        pytest.param(
            {"exclude-outbound-cidrs": "10.0.0.0/8,fd00::/8", "exclude-inbound-ports": "22"},
            id="exclusions",
        ),
        pytest.param({"include-outbound-cidrs": "10.96.0.0/12"}, id="ipv4-only-include"),
        pytest.param({"include-outbound-cidrs": ""}, id="empty-include"),
    ],
)
def test_the_script_feeds_each_tool_exactly_the_rendered_rules(
    tmp_path: Path, annotations: dict[str, str]
) -> None:
    settings = proxy_settings(**annotations)
    result = run_script(render_script(settings, proxy_uid=1337), fake_tools(tmp_path))
    assert result.returncode == 0, result.stderr
    for tool, family in (("iptables-restore", 4), ("ip6tables-restore", 6)):
        fed = (tmp_path / f"{tool}.in").read_text()
        # A family without CIDR rules gets an empty line where they would go.
        assert [line for line in fed.splitlines() if line] == render_rules(
            settings, proxy_uid=1337, family=family
        ).splitlines()
    assert SKIPPED_IPV6 not in result.stdout


def test_the_script_skips_ipv6_where_the_kernel_has_no_ipv6_nat(tmp_path: Path) -> None:
    script = render_script(proxy_settings(), proxy_uid=1337)
    result = run_script(script, fake_tools(tmp_path, probe_rc=3))
    assert result.returncode == 0, result.stderr
    assert SKIPPED_IPV6 in result.stdout.splitlines()
    assert (tmp_path / "iptables-restore.in").exists()
    assert not (tmp_path / "ip6tables-restore.in").exists()


@pytest.mark.skipif(not IPV6_KERNEL, reason="this kernel has no IPv6")
@pytest.mark.parametrize(
    "says",
    [
        "ip6tables v1.8.9 (legacy): can't initialize ip6tables table `nat': Permission denied",
        "sh: ip6tables: not found",
    ],
)
def test_any_other_failure_of_the_ipv6_probe_fails_the_container(tmp_path: Path, says: str) -> None:
    script = render_script(proxy_settings(), proxy_uid=1337)
    result = run_script(script, fake_tools(tmp_path, probe_rc=1, probe_says=says))
    assert result.returncode == 1
    assert f"mesh-init: {says}" in result.stderr
    assert SKIPPED_IPV6 not in result.stdout
    assert not (tmp_path / "ip6tables-restore.in").exists()


@pytest.mark.skipif(not IPV6_KERNEL, reason="this kernel has no IPv6")
@pytest.mark.parametrize("tool", ["ip6tables-restore", "iptables-restore"])
def test_a_real_failure_of_either_half_fails_the_container(tmp_path: Path, tool: str) -> None:
    script = render_script(proxy_settings(), proxy_uid=1337)
    result = run_script(script, fake_tools(tmp_path, fail=tool))
    assert result.returncode != 0
    assert f"{tool}: line 3 failed" in result.stderr
    assert SKIPPED_IPV6 not in result.stdout


UNSHARE = shutil.which("unshare")


RESTORE_TOOLS = [
    pytest.param(tool, family, id=tool)
    for tool, family in (
        ("iptables-restore", 4),
        ("ip6tables-restore", 6),
        ("iptables-legacy-restore", 4),
        ("ip6tables-legacy-restore", 6),
    )
    if shutil.which(tool)
]


SETTINGS_CASES: list[Any] = [
    pytest.param({}, id="defaults"),
    pytest.param(
        {
            "exclude-inbound-ports": "22,9090",
            "exclude-outbound-ports": "5432",
            "exclude-outbound-cidrs": "10.0.0.0/8,169.254.169.254/32,fd00::/8,64:ff9b::/96",
        },
        id="exclusions",
    ),
    pytest.param(
        {"include-inbound-ports": "8080", "include-outbound-cidrs": "10.96.0.0/12,fd00:10::/64"},
        id="includes",
    ),
    pytest.param({"include-inbound-ports": "", "include-outbound-cidrs": ""}, id="nothing"),
    pytest.param(None, id="worst-accepted"),
]


@pytest.mark.skipif(os.geteuid() != 0, reason="iptables-restore --test needs root")
@pytest.mark.skipif(UNSHARE is None, reason="needs unshare")
@pytest.mark.parametrize(("tool", "family"), RESTORE_TOOLS)
@pytest.mark.parametrize("annotations", SETTINGS_CASES)
def test_rendered_rules_pass_the_real_restore_test(
    tool: str, family: int, annotations: dict[str, str] | None
) -> None:
    # A throwaway network namespace: --test parses and checks without committing,
    # and even a bug here could not touch the host's tables.
    settings = worst_proxy_settings() if annotations is None else proxy_settings(**annotations)
    rules = render_rules(settings, proxy_uid=1337, family=family)
    result = subprocess.run(
        [str(UNSHARE), "--net", tool, "--test", "--noflush"],
        input=rules,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
