"""``mesh-init``: the rules it writes, for both families, and the script that applies them.

Three levels: the rendered rules as text; the script run by a real ``sh``
with stand-ins for the iptables tools (so its control flow, the IPv6 skip and
``set -e`` are exercised without root); and the rules fed to the real
``iptables-restore --test`` / ``ip6tables-restore --test`` in a throwaway
network namespace. Pod-in-a-box (tests/e2e) runs them for real.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import orjson
import pytest

from webhook.contract import constants
from webhook.engine import iptables
from webhook.engine.config import InjectorConfig
from webhook.engine.iptables import (
    MAX_SCRIPT_BYTES,
    SKIPPED_IPV6,
    mesh_init_container,
    render_rules,
    render_script,
)
from webhook.engine.settings import ProxySettings, resolve_settings
from webhook.engine.values import MAX_CIDRS, MAX_PORTS

P = constants.PREFIX
CONFIG = InjectorConfig()


def settings_for(**annotations: str) -> ProxySettings:
    return resolve_settings(
        CONFIG,
        namespace_labels={},
        namespace_annotations={},
        pod_annotations={P + key: value for key, value in annotations.items()},
    )


def rules_for(family: int = 4, **annotations: str) -> list[str]:
    return render_rules(settings_for(**annotations), proxy_uid=1337, family=family).splitlines()


def worst_settings() -> ProxySettings:
    """Every list at its maximum, every item in its longest spelling."""
    ports = ",".join(str(65535 - i) for i in range(MAX_PORTS))

    def cidrs(kind: int) -> str:
        return ",".join(
            f"{0x1000 + kind:x}:{0x1000 + i:x}:2222:3333:4444:5555:6666:7777/128"
            for i in range(MAX_CIDRS)
        )

    return settings_for(**{
        "include-inbound-ports": ports,
        "exclude-inbound-ports": ports,
        "exclude-outbound-ports": ports,
        "exclude-outbound-cidrs": cidrs(1),
        "include-outbound-cidrs": cidrs(2),
    })  # fmt: skip


# --- the rules ------------------------------------------------------------------------


@pytest.mark.parametrize(("family", "loopback"), [(4, "127.0.0.0/8"), (6, "::1/128")])
def test_default_rules_are_the_same_for_both_families_but_loopback(
    family: int, loopback: str
) -> None:
    assert rules_for(family) == [
        "*nat",
        ":MESH_INBOUND - [0:0]",
        ":MESH_OUTPUT - [0:0]",
        "-A MESH_INBOUND -p tcp -m multiport --dports 15000,15001,15006,15021,15090 -j RETURN",
        "-A MESH_INBOUND -p tcp -j REDIRECT --to-ports 15006",
        "-A MESH_OUTPUT -m owner --uid-owner 1337 -j RETURN",
        f"-A MESH_OUTPUT -o lo -d {loopback} -j RETURN",
        "-A MESH_OUTPUT -o lo -j MESH_INBOUND",
        "-A MESH_OUTPUT -o lo -j RETURN",
        "-A MESH_OUTPUT -p tcp -j REDIRECT --to-ports 15001",
        "-A PREROUTING -p tcp -j MESH_INBOUND",
        "-A OUTPUT -p tcp -j MESH_OUTPUT",
        "COMMIT",
    ]


def test_outbound_exemptions_come_before_the_redirect_and_cidrs_go_to_their_family() -> None:
    annotations = {
        "exclude-outbound-ports": "5432,443",
        "exclude-outbound-cidrs": "10.0.0.0/8,fd00::/8,169.254.169.254",
    }
    common = [
        "-A MESH_OUTPUT -m owner --uid-owner 1337 -j RETURN",
        "-A MESH_OUTPUT -o lo -d {lo} -j RETURN",
        "-A MESH_OUTPUT -o lo -j MESH_INBOUND",
        "-A MESH_OUTPUT -o lo -j RETURN",
        "-A MESH_OUTPUT -p tcp -m multiport --dports 443,5432 -j RETURN",
    ]
    for family, lo, cidrs in ((4, "127.0.0.0/8", "10.0.0.0/8,169.254.169.254/32"),
                              (6, "::1/128", "fd00::/8")):  # fmt: skip
        output = [r for r in rules_for(family, **annotations) if r.startswith("-A MESH_OUTPUT")]
        assert output == [
            *(rule.format(lo=lo) for rule in common),
            f"-A MESH_OUTPUT -d {cidrs} -j RETURN",
            "-A MESH_OUTPUT -p tcp -j REDIRECT --to-ports 15001",
        ]


def test_the_proxy_uid_comes_from_the_argument() -> None:
    text = render_rules(settings_for(), proxy_uid=4242, family=6)
    assert "--uid-owner 4242 -j RETURN" in text


def test_excluded_inbound_ports_join_the_proxy_ports_in_order() -> None:
    inbound = [
        r for r in rules_for(**{"exclude-inbound-ports": "9090,22"}) if "MESH_INBOUND -p" in r
    ]
    assert inbound == [
        "-A MESH_INBOUND -p tcp -m multiport --dports 22,9090,15000,15001,15006,15021,15090 "
        "-j RETURN",
        "-A MESH_INBOUND -p tcp -j REDIRECT --to-ports 15006",
    ]


def test_an_include_inbound_list_redirects_only_those_ports_minus_exclusions() -> None:
    annotations = {"include-inbound-ports": "8080,9090,15021,8443", "exclude-inbound-ports": "9090"}
    inbound = [r for r in rules_for(**annotations) if r.startswith("-A MESH_INBOUND")]
    assert inbound == [
        "-A MESH_INBOUND -p tcp -m multiport --dports 8080,8443 -j REDIRECT --to-ports 15006"
    ]
    single = [r for r in rules_for(**{"include-inbound-ports": "8080"}) if "MESH_INBOUND -p" in r]
    assert single == ["-A MESH_INBOUND -p tcp --dport 8080 -j REDIRECT --to-ports 15006"]


def test_an_empty_include_inbound_list_redirects_nothing_inbound() -> None:
    assert not [r for r in rules_for(**{"include-inbound-ports": ""}) if "-A MESH_INBOUND" in r]


def test_include_outbound_cidrs_limit_the_redirect_per_family() -> None:
    annotations = {"include-outbound-cidrs": "10.96.0.0/12,fd00::/8,192.168.0.0/16"}
    for family, expected in ((4, "10.96.0.0/12,192.168.0.0/16"), (6, "fd00::/8")):
        redirects = [r for r in rules_for(family, **annotations) if r.endswith("15001")]
        assert redirects == [f"-A MESH_OUTPUT -p tcp -d {expected} -j REDIRECT --to-ports 15001"]
    # A family the list does not name is not redirected at all (settings warn).
    only_v4 = {"include-outbound-cidrs": "10.96.0.0/12"}
    assert not [r for r in rules_for(6, **only_v4) if r.endswith("15001")]


def test_long_lists_are_split_into_rules_of_15_ports_and_16_cidrs() -> None:
    annotations = {
        "exclude-outbound-ports": ",".join(str(2000 + i) for i in range(40)),
        "exclude-outbound-cidrs": ",".join(f"10.0.{i}.0/24" for i in range(40)),
    }
    rules = rules_for(**annotations)
    port_rules = [r for r in rules if "--dports" in r and "MESH_OUTPUT" in r]
    assert [r.split("--dports ")[1].split()[0].count(",") + 1 for r in port_rules] == [15, 15, 10]
    cidr_rules = [r for r in rules if " -d 10.0." in r]
    assert [r.split(" -d ")[1].split()[0].count(",") + 1 for r in cidr_rules] == [16, 16, 8]
    listed = ",".join(r.split(" -d ")[1].split()[0] for r in cidr_rules)
    assert listed == annotations["exclude-outbound-cidrs"]  # the order given is kept


# --- the script -----------------------------------------------------------------------


def test_the_default_init_container_is_compact() -> None:
    # Issue 17 wants the default injected pod under 6 KB; mesh-init's share stays small.
    container = mesh_init_container(settings_for(), CONFIG)
    assert len(orjson.dumps(container)) < 1536
    script = container["command"][2]
    assert script.count("tables-restore --noflush") == 2  # both families ...
    assert script.count("-A MESH_OUTPUT -o lo -j MESH_INBOUND") == 1  # ... from one template


def test_the_worst_accepted_settings_render_far_below_the_argument_limit() -> None:
    container = mesh_init_container(worst_settings(), CONFIG)
    script = container["command"][2]
    size = len(script.encode())
    # Linux refuses any single exec argument over MAX_ARG_STRLEN (128 KiB).
    assert size < MAX_SCRIPT_BYTES <= 128 * 1024 // 4
    assert size < MAX_SCRIPT_BYTES // 2  # the limits bind, not the backstop
    assert all(len(part.encode()) < 128 * 1024 for part in container["command"])
    assert max(len(line) for line in script.splitlines()) < 1024


def test_the_script_bound_is_a_backstop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(iptables, "MAX_SCRIPT_BYTES", 500)
    with pytest.raises(RuntimeError, match="exceeds 500"):
        render_script(settings_for(), proxy_uid=1337)


def test_with_ipv6_off_the_script_has_no_ipv6_half() -> None:
    config = InjectorConfig(ipv6=False)
    script = mesh_init_container(settings_for(), config)["command"][2]
    assert "ip6tables" not in script
    assert "iptables-restore --noflush" in script


def test_the_init_container_shape() -> None:
    container = mesh_init_container(settings_for(), CONFIG)
    assert container["name"] == constants.INIT_CONTAINER
    assert container["image"] == CONFIG.init.image
    assert container["command"][:2] == ["sh", "-c"]
    assert container["command"][2].startswith("set -eu\n")
    context = container["securityContext"]
    assert context["runAsUser"] == 0
    assert context["runAsNonRoot"] is False
    assert context["privileged"] is False
    assert context["allowPrivilegeEscalation"] is False
    assert context["readOnlyRootFilesystem"] is True
    assert context["capabilities"] == {"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]}
    assert context["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["resources"] == {
        "limits": {"memory": "64Mi"},
        "requests": {"cpu": "10m", "memory": "16Mi"},
    }


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
    settings = settings_for(**annotations)
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
    script = render_script(settings_for(), proxy_uid=1337)
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
    script = render_script(settings_for(), proxy_uid=1337)
    result = run_script(script, fake_tools(tmp_path, probe_rc=1, probe_says=says))
    assert result.returncode == 1
    assert f"mesh-init: {says}" in result.stderr
    assert SKIPPED_IPV6 not in result.stdout
    assert not (tmp_path / "ip6tables-restore.in").exists()


@pytest.mark.skipif(not IPV6_KERNEL, reason="this kernel has no IPv6")
@pytest.mark.parametrize("tool", ["ip6tables-restore", "iptables-restore"])
def test_a_real_failure_of_either_half_fails_the_container(tmp_path: Path, tool: str) -> None:
    script = render_script(settings_for(), proxy_uid=1337)
    result = run_script(script, fake_tools(tmp_path, fail=tool))
    assert result.returncode != 0
    assert f"{tool}: line 3 failed" in result.stderr
    assert SKIPPED_IPV6 not in result.stdout


# --- real iptables-restore --test -----------------------------------------------------

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
    settings = worst_settings() if annotations is None else settings_for(**annotations)
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
