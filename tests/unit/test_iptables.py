"""``mesh-init``: the rules it writes, for both families, and the script that applies them.

Three levels: the rendered rules as text; the script run by a real ``sh``
with stand-ins for the iptables tools (so its control flow, the IPv6 skip and
``set -e`` are exercised without root); and the rules fed to the real
``iptables-restore --test`` / ``ip6tables-restore --test`` in a throwaway
network namespace. Pod-in-a-box (tests/e2e) runs them for real.
"""

from __future__ import annotations

import orjson
import pytest

from tests.builders import proxy_settings, worst_proxy_settings
from webhook.contract import constants
from webhook.engine import iptables
from webhook.engine.config import InjectorConfig
from webhook.engine.iptables import (
    MAX_SCRIPT_BYTES,
    mesh_init_container,
    render_rules,
    render_script,
)

P = constants.PREFIX
CONFIG = InjectorConfig()


def rules_for(family: int = 4, **annotations: str) -> list[str]:
    return render_rules(proxy_settings(**annotations), proxy_uid=1337, family=family).splitlines()


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
    text = render_rules(proxy_settings(), proxy_uid=4242, family=6)
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
    # The default injected pod should stay under 6 KB; mesh-init's share stays small.
    container = mesh_init_container(proxy_settings(), CONFIG)
    assert len(orjson.dumps(container)) < 1536
    script = container["command"][2]
    assert script.count("tables-restore --noflush") == 2  # both families ...
    assert script.count("-A MESH_OUTPUT -o lo -j MESH_INBOUND") == 1  # ... from one template


def test_the_worst_accepted_settings_render_far_below_the_argument_limit() -> None:
    container = mesh_init_container(worst_proxy_settings(), CONFIG)
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
        render_script(proxy_settings(), proxy_uid=1337)


def test_with_ipv6_off_the_script_has_no_ipv6_half() -> None:
    config = InjectorConfig(ipv6=False)
    script = mesh_init_container(proxy_settings(), config)["command"][2]
    assert "ip6tables" not in script
    assert "iptables-restore --noflush" in script


def test_the_init_container_shape() -> None:
    container = mesh_init_container(proxy_settings(), CONFIG)
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


# --- real iptables-restore --test -----------------------------------------------------
