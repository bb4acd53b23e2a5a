"""The policy generator: every engine operation has a CEL rendering; the objects render."""

from __future__ import annotations

from webhook.engine import expr
from webhook.engine.config import InjectorConfig
from webhook.engine.settings import KINDS
from webhook.policy import cel
from webhook.policy.render import render_policy
from webhook.policy.settings import KIND_CEL, resolution


def test_every_operation_of_the_expression_language_has_a_cel_rendering() -> None:
    assert set(cel._RENDER) == set(expr.OPS)


def test_kinds_without_a_cel_rendering_are_pinned_to_the_config() -> None:
    from webhook.engine.settings import resolve_settings

    defaults = resolve_settings(
        InjectorConfig(), namespace_labels={}, namespace_annotations={}, pod_annotations={}
    )
    pinned = resolution(defaults).pinned
    unsupported = {kind for kind in KINDS.values() if kind not in KIND_CEL}
    assert {"cidrs", "cidrs*", "address?"} >= unsupported
    assert set(pinned) == {"include_outbound_cidrs", "exclude_outbound_cidrs", "xds_address"}


def test_the_policy_renders_four_objects_whose_expressions_fit_the_cel_parser() -> None:
    objects = render_policy(InjectorConfig(), revision="canary")
    assert [o["kind"] for o in objects] == [
        "MutatingAdmissionPolicy",
        "MutatingAdmissionPolicyBinding",
        "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicyBinding",
    ]
    assert {o["metadata"]["name"] for o in objects} == {"sidecar-injector-canary"}
    spec = objects[0]["spec"]
    expressions = [v["expression"] for v in spec["variables"]]
    expressions.append(spec["mutations"][0]["jsonPatch"]["expression"])
    # cel-go's parser refuses expressions over 100,000 code points.
    assert max(len(e) for e in expressions) < 100_000


def test_cel_string_literals_escape_what_cel_would_read_otherwise() -> None:
    assert cel.string('a"b\\c\n\x01é') == '"a\\"b\\\\c\\n\\x01\\u00e9"'
