"""The policy generator: one source with the engine, refusals to render, the objects render."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.profiles import examples
from webhook.engine import expr
from webhook.engine.bootstrap import bootstrap_expr, render_bootstrap_for
from webhook.engine.config import InjectorConfig
from webhook.engine.settings import KINDS, SETTING_NAMES
from webhook.manifests import revisions
from webhook.policy import cel, kinds
from webhook.policy import render as render_module
from webhook.policy.cel import Unsupported
from webhook.policy.render import render_policy


def test_every_operation_of_the_expression_language_has_a_cel_rendering() -> None:
    assert set(cel._RENDER) == set(expr.OPS)


def test_every_value_kind_has_a_cel_judge_so_no_setting_is_pinned() -> None:
    assert set(KINDS.values()) <= set(kinds.KIND_CEL)
    spec = render_policy(InjectorConfig())[0]["spec"]
    declared = {v["name"] for v in spec["variables"]}
    # Every setting is read per pod: its value variable exists.
    assert {f"s_{spec}" for spec in _fields()} <= declared


def _fields() -> list[str]:
    from webhook.engine.settings import SETTING_SPECS

    return [spec.field for spec in SETTING_SPECS]


def test_a_kind_without_a_cel_judge_makes_policy_refuse_to_render_naming_the_key(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delitem(kinds.KIND_CEL, "address?")
    with pytest.raises(Unsupported, match=r"sidecar\.mesh\.io/xds-address") as caught:
        render_policy(InjectorConfig())
    assert "policy mode cannot reproduce the webhook" in str(caught.value)


def test_a_value_computed_in_python_only_makes_policy_refuse_naming_the_key(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = render_module.mesh_proxy_template

    def with_opaque(config: InjectorConfig) -> dict[str, Any]:
        template = real(config)
        template["image"] = expr.Opaque(lambda s: str(s["log_level"]), ("log_level",))
        return template

    monkeypatch.setattr(render_module, "mesh_proxy_template", with_opaque)
    with pytest.raises(Unsupported, match=r"sidecar\.mesh\.io/log-level: computed in Python"):
        render_policy(InjectorConfig())


def test_the_policy_renders_its_policies_each_with_a_binding_per_entry_of_the_revision() -> None:
    objects = render_policy(InjectorConfig(), revision="canary", tags=["prod"])
    entries = ["rev-pod", "rev-namespace"]
    assert [(o["kind"], o["metadata"]["name"]) for o in objects] == [
        ("MutatingAdmissionPolicy", "sidecar-injector-canary"),
        *(("MutatingAdmissionPolicyBinding", f"sidecar-injector-canary-{e}") for e in entries),
        ("ValidatingAdmissionPolicy", "sidecar-injector-canary"),
        *(("ValidatingAdmissionPolicyBinding", f"sidecar-injector-canary-{e}") for e in entries),
    ]
    assert {o["metadata"]["labels"]["sidecar.mesh.io/rev"] for o in objects} == {"canary"}
    bindings = [o for o in objects if o["kind"].endswith("Binding")]
    assert {o["spec"]["policyName"] for o in bindings} == {"sidecar-injector-canary"}
    # The same disjoint selection as the revision's webhooks, tags included.
    webhook_entries = revisions.entries("canary", ["prod"], InjectorConfig().excluded_namespaces)
    for binding, entry in zip(bindings, webhook_entries * 2, strict=True):
        assert binding["spec"]["matchResources"] == {
            "namespaceSelector": entry.namespace_selector,
            "objectSelector": entry.object_selector,
        }
    default = render_policy(InjectorConfig())
    assert [o["metadata"]["name"] for o in default if o["kind"].startswith("Mutating")] == [
        "sidecar-injector",
        "sidecar-injector-namespace",
        "sidecar-injector-object",
        "sidecar-injector-rev-pod",
        "sidecar-injector-rev-namespace",
    ]
    assert {o["metadata"]["labels"]["sidecar.mesh.io/rev"] for o in default} == {"default"}


def test_the_revision_is_the_config_s_unless_named_and_the_status_records_it() -> None:
    def status(objects: list[dict[str, Any]]) -> str:
        variables = objects[0]["spec"]["variables"]
        return str(next(v["expression"] for v in variables if v["name"] == "status"))

    named = render_policy(InjectorConfig(), revision="canary")
    assert named == render_policy(InjectorConfig(revision="canary"))
    assert '\\"revision\\":\\"canary\\"' in status(named)
    # The default revision's pods carry the annotation they carried before revisions.
    assert "revision" not in status(render_policy(InjectorConfig()))


@pytest.mark.parametrize("tag", ["default", "Not_A_Tag"])
def test_a_tag_that_is_no_tag_name_is_refused(tag: str) -> None:
    with pytest.raises(Unsupported, match="is not a tag name"):
        render_policy(InjectorConfig(), revision="canary", tags=[tag])


def test_cel_string_literals_escape_what_cel_would_read_otherwise() -> None:
    assert cel.string('a"b\\c\n\x01é') == '"a\\"b\\\\c\\n\\x01\\u00e9"'


_label = st.from_regex(r"[A-Za-z0-9]([A-Za-z0-9-]{0,8}[A-Za-z0-9])?", fullmatch=True)
_hosts = st.one_of(
    st.lists(_label, min_size=1, max_size=4).map(".".join),
    st.sampled_from(["on", "yes", "No", "null", "inf", "1abc", "xds", "a-b.c"]),
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).filter(lambda a: a.ipv4_mapped is None).map(lambda a: f"[{a}]"),
)
_addresses = st.builds(lambda h, p: f"{h}:{p}", _hosts, st.integers(1, 65535))


@settings(max_examples=examples(300), deadline=None, derandomize=True, database=None)
@given(address=_addresses, ipv6=st.booleans())
def test_the_bootstrap_as_an_expression_is_the_bootstrap_the_builders_render(
    address: str, ipv6: bool
) -> None:
    # The engine evaluates (and the policy compiles) bootstrap_expr; the
    # builders' own rendering must be the same text for every xds-address.
    config = InjectorConfig(ipv6=ipv6)
    assert expr.evaluate(bootstrap_expr(config), {"xds_address": address}) == (
        render_bootstrap_for(address, config)
    )
    assert expr.evaluate(bootstrap_expr(config), {"xds_address": None}) == (
        render_bootstrap_for(None, config)
    )


def _outside_strings(expression: str) -> str:
    """The expression with its string literals blanked (what the nesting count reads)."""
    out, quote, escaped = [], "", False
    for char in expression:
        if quote:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == quote:
                quote = ""
            continue
        if char in "\"'":
            quote = char
        out.append(char)
    return "".join(out)


def _nesting(expression: str) -> int:
    """An upper bound of the parser's recursion: bracket depth plus every ``?`` (ternaries,
    optionals), each of which may nest one level deeper."""
    code = _outside_strings(expression)
    depth = deepest = 0
    for char in code:
        if char in "([{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in ")]}":
            depth -= 1
    return deepest + code.count("?")


@pytest.mark.parametrize(
    "config",
    [
        InjectorConfig(),
        InjectorConfig(ipv6=False),
        InjectorConfig(locked_settings=frozenset(SETTING_NAMES)),
    ],
    ids=["default", "ipv4-only", "every-setting-locked"],
)
def test_every_expression_is_within_the_cel_parsers_size_and_nesting_limits(
    config: InjectorConfig,
) -> None:
    # cel-go's parser (the API server's) refuses an expression over 100,000 code
    # points, or nested deeper than 250 levels; the policy keeps well inside both.
    for policy in render_policy(config):
        if policy["kind"].endswith("Binding"):
            continue
        spec = policy["spec"]
        expressions = [v["expression"] for v in spec["variables"]]
        expressions += [c["expression"] for c in spec.get("matchConditions", [])]
        for part in ("mutations", "validations"):
            for item in spec.get(part, []):
                expressions.append(item.get("jsonPatch", item).get("expression", ""))
                if "messageExpression" in item:
                    expressions.append(item["messageExpression"])
        assert max(len(e) for e in expressions) < 50_000
        assert max(_nesting(e) for e in expressions) < 250
