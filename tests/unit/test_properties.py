"""Invariants of injection and uninjection over generated pods and workloads (hypothesis)."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from types import MappingProxyType
from typing import Any

import jsonpatch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness.validation import pod_spec, validate_pod_rules
from tests.profiles import examples
from webhook.cluster.namespaces_file import NamespaceInfo
from webhook.engine import (
    InjectionRefused,
    InjectionResult,
    InjectionStatus,
    StatusError,
    inject,
    uninject,
)
from webhook.engine.config import InjectorConfig
from webhook.engine.workloads import locate_pod
from webhook.manifests.patched import patched

CONFIG = InjectorConfig()
NAMESPACE = NamespaceInfo("demo", MappingProxyType({"sidecar-injection": "enabled"}))

dns_label = st.from_regex(r"[a-z]([a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True).filter(
    lambda name: name not in ("mesh-proxy", "mesh-init")
)
annotation_key = st.one_of(
    dns_label,
    st.builds(lambda a, b: f"{a}.io/{b}", dns_label, dns_label),
    st.builds(lambda a, b: f"{a}~{b}/x~1", dns_label, dns_label),  # RFC 6901 escapes
)
text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=20)


@st.composite
def containers(draw: st.DrawFn, *, min_size: int) -> list[dict[str, Any]]:
    names = draw(st.lists(dns_label, min_size=min_size, max_size=4, unique=True))
    result = []
    for name in names:
        container: dict[str, Any] = {"name": name, "image": draw(dns_label) + ":1"}
        env = draw(st.lists(st.tuples(dns_label, text), max_size=5))
        if env:
            container["env"] = [{"name": k.upper().replace("-", "_"), "value": v} for k, v in env]
        result.append(container)
    return result


mode_annotations = st.fixed_dictionaries(
    {},
    optional={
        "sidecar.mesh.io/native-sidecar": st.sampled_from(["true", "false"]),
        "sidecar.mesh.io/hold-application": st.sampled_from(["true", "false"]),
        "sidecar.mesh.io/exclude-inbound-ports": st.sampled_from(["", "8080", "9090,9091"]),
        "sidecar.mesh.io/xds-address": st.sampled_from(["xds:15010", "10.0.0.1:15010"]),
    },
)

copied_status = (
    st.sampled_from(
        [
            '{"version":"0.1.0","initContainers":["mesh-init","mesh-proxy"],"containers":[],'
            '"volumes":[],"annotations":[],"digest":"sha256:00"}',
            '{"version":"0.0.9","initContainers":["mesh-init"],"containers":["mesh-proxy"]}',
            '{"version":"0","initContainers":["mesh-init"],"replaced":"{\\"version\\":\\"0\\"}"}',
        ]
    )
    | text
)


@st.composite
def pods(draw: st.DrawFn) -> dict[str, Any]:
    apps = draw(containers(min_size=1))
    inits = draw(containers(min_size=0))
    names = {c["name"] for c in apps}
    inits = [c for c in inits if c["name"] not in names]
    spec: dict[str, Any] = {"containers": apps}
    if draw(st.booleans()):
        spec["initContainers"] = inits or None
    if draw(st.booleans()):
        spec["volumes"] = [{"name": n, "emptyDir": {}} for n in draw(st.lists(dns_label, max_size=3, unique=True))] or None  # fmt: skip
    meta: dict[str, Any] | None = None
    shape = draw(st.sampled_from(["missing", "null-maps", "maps"]))
    if shape == "null-maps":
        meta = {"labels": None, "annotations": None}
    elif shape == "maps":
        annotations = draw(st.dictionaries(annotation_key, text, max_size=4))
        annotations.update(draw(mode_annotations))
        if draw(st.booleans()):
            # Copied from an injected pod (its containers are not here), or any text.
            annotations["sidecar.mesh.io/status"] = draw(copied_status)
        meta = {"labels": draw(st.dictionaries(dns_label, dns_label, max_size=3)),
                "annotations": annotations}  # fmt: skip
    template: dict[str, Any] = {"spec": spec}
    if meta is not None:
        template["metadata"] = meta
    kind = draw(st.sampled_from(["Pod", "Deployment", "Job", "CronJob"]))
    if kind == "Pod":
        return {"apiVersion": "v1", "kind": "Pod", **template}
    if kind == "CronJob":
        return {"apiVersion": "batch/v1", "kind": "CronJob",
                "spec": {"schedule": "* * * * *", "jobTemplate": {"spec": {"template": template}}}}  # fmt: skip
    group = "apps/v1" if kind == "Deployment" else "batch/v1"
    return {"apiVersion": group, "kind": kind, "spec": {"template": template}}


def pod_meta(obj: dict[str, Any], *, create: bool = False) -> dict[str, Any]:
    """The pod's (or template's) metadata; ``create`` adds a missing or null one."""
    location = locate_pod(obj)
    assert location is not None
    node = obj
    for key in location.path:
        node = node[key]
    if create and node.get("metadata") is None:
        node["metadata"] = {}
        return node["metadata"]
    return node.get("metadata") or {}


PROPERTY = settings(
    max_examples=examples(300), deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


@PROPERTY
@given(pods())
def test_the_object_is_the_patch_applied_and_the_sidecar_sits_where_its_mode_says(
    obj: dict[str, Any],
) -> None:
    result = inject(obj, namespace=NAMESPACE, config=CONFIG)
    assert result.injected
    assert patched(result) == jsonpatch.apply_patch(obj, list(result.patch))
    spec = pod_spec(patched(result))
    inits = [c["name"] for c in spec["initContainers"]]
    apps = [c["name"] for c in spec["containers"]]
    annotations = pod_meta(obj).get("annotations") or {}
    if annotations.get("sidecar.mesh.io/native-sidecar", "true") == "true":
        assert inits[:2] == ["mesh-init", "mesh-proxy"]
        assert "mesh-proxy" not in apps
    else:
        assert inits[-1] == "mesh-init"
        hold = annotations.get("sidecar.mesh.io/hold-application") == "true"
        assert apps.index("mesh-proxy") == (0 if hold else len(apps) - 1)


@PROPERTY
@given(pods())
def test_uninject_is_the_exact_inverse_of_inject(obj: dict[str, Any]) -> None:
    before = copy.deepcopy(obj)
    injected = patched(inject(obj, namespace=NAMESPACE, config=CONFIG))
    result = uninject(injected)
    assert result.removed
    assert patched(result) == before
    if "sidecar.mesh.io/status" not in (pod_meta(before).get("annotations") or {}):
        assert patched(uninject(before)) is before, "nothing to remove: the very same object"


user_container = st.builds(lambda n: {"name": f"later-{n}", "image": "debug:1"}, dns_label)


@PROPERTY
@given(pods(), user_container, dns_label, text)
def test_uninject_keeps_what_the_user_added_after_injection(
    obj: dict[str, Any], container: dict[str, Any], key: str, value: str
) -> None:
    injected = patched(inject(obj, namespace=NAMESPACE, config=CONFIG))
    # After injection the user adds a container, a volume and an annotation.
    later = copy.deepcopy(injected)
    spec = pod_spec(later)
    spec["containers"].append(container)
    spec["volumes"] = [*(spec.get("volumes") or []), {"name": "later-vol", "emptyDir": {}}]
    meta = pod_meta(later)
    meta["annotations"][f"later.io/{key}"] = value
    back = patched(uninject(later))
    expected = copy.deepcopy(obj)
    expected_spec = pod_spec(expected)
    expected_spec["containers"].append(container)
    expected_spec["volumes"] = [*(expected_spec.get("volumes") or []), {"name": "later-vol", "emptyDir": {}}]  # fmt: skip
    expected_meta = pod_meta(expected, create=True)
    expected_meta["annotations"] = {**(expected_meta.get("annotations") or {}), f"later.io/{key}": value}  # fmt: skip
    assert back == expected


@PROPERTY
@given(pods())
def test_the_patch_only_adds(obj: dict[str, Any]) -> None:
    result = inject(obj, namespace=NAMESPACE, config=CONFIG)
    assert {op["op"] for op in result.patch} == {"add"}


@PROPERTY
@given(pods())
def test_injecting_the_result_again_changes_nothing(obj: dict[str, Any]) -> None:
    first = inject(obj, namespace=NAMESPACE, config=CONFIG)
    first_obj = patched(first)
    second = inject(first_obj, namespace=NAMESPACE, config=CONFIG)
    assert second.patch == ()
    assert patched(second) is first_obj
    assert second.decision.code == "already-injected"


@PROPERTY
@given(pods())
def test_the_input_is_never_modified_and_user_containers_are_untouched(
    obj: dict[str, Any],
) -> None:
    before = copy.deepcopy(obj)
    result = inject(obj, namespace=NAMESPACE, config=CONFIG)
    assert obj == before
    old, new = pod_spec(before), pod_spec(patched(result))
    for field in ("containers", "initContainers", "volumes"):
        ours = [c for c in new.get(field) or [] if c["name"] not in ("mesh-proxy", "mesh-init")]
        assert ours == (old.get(field) or []), field
    validate_pod_rules(new)


# --- what any client may send: a status annotation, and spec lists of any shape -------------

any_json = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 3) | st.text(max_size=4),
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(st.sampled_from(["name", "image", "x"]), children, max_size=2)
    ),
    max_leaves=6,
)
injected_names = st.sampled_from(["mesh-init", "mesh-proxy", "app"])
spec_list = (
    st.sampled_from([7, True, 1.5, {"name": "mesh-init"}, [7], [{"name": ["mesh-init"]}]])
    | st.lists(st.fixed_dictionaries({"name": injected_names | any_json}), max_size=3)
    | any_json
)
status_text = (
    st.builds(
        json.dumps,
        st.fixed_dictionaries(
            {"version": st.just("0")},
            optional={
                "containers": st.lists(injected_names, max_size=2),
                "initContainers": st.lists(injected_names, max_size=2),
                "replaced": text,
                "wasNull": st.lists(st.sampled_from(["spec", "containers"]), max_size=1),
            },
        ),
    )
    | st.builds(json.dumps, any_json)
    | text
)


@PROPERTY
@given(
    status_text,
    st.dictionaries(st.sampled_from(["containers", "initContainers", "volumes"]), spec_list),
)
def test_a_status_annotation_on_any_spec_is_decided_then_injected_or_refused_in_one_line(
    status: str, lists: dict[str, Any]
) -> None:
    obj = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "web", "annotations": {"sidecar.mesh.io/status": status}},
        "spec": {"containers": [{"name": "app", "image": "app:1"}], **lists},
    }
    try:
        InjectionStatus.parse(status)
    except StatusError:
        valid = False
    else:
        valid = True
    results: list[InjectionResult] = []
    refusal = refused(lambda: results.append(inject(obj, namespace=NAMESPACE, config=CONFIG)))
    if refusal is not None:
        assert "\n" not in refusal
    elif results[0].decision.code == "already-injected":
        # Step 5 reads names, not the annotation: both injected containers are there.
        assert _string_names(obj["spec"]) >= INJECTED_NAMES
    else:
        assert not _string_names(obj["spec"]) >= INJECTED_NAMES
        assert results[0].injected
        inits = [c["name"] for c in pod_spec(patched(results[0]))["initContainers"]]
        assert inits[:2] == ["mesh-init", "mesh-proxy"]
    refusal = refused(lambda: uninject(obj))
    if valid:
        assert refusal is None
    else:
        assert refusal is not None
        assert "not removing anything" in refusal


INJECTED_NAMES = frozenset({"mesh-init", "mesh-proxy"})


def _string_names(spec: dict[str, Any]) -> set[str]:
    """The string names of the items of both container lists (whatever those lists hold)."""
    return {
        item["name"]
        for field in ("initContainers", "containers")
        if isinstance(spec.get(field), list)
        for item in spec[field]
        if isinstance(item, dict) and isinstance(item.get("name"), str)
    }


def refused(call: Callable[[], object]) -> str | None:
    """The engine's refusal message, or None when ``call`` went through."""
    try:
        call()
    except InjectionRefused as err:
        return str(err)
    return None
