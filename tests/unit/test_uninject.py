"""The status annotation and ``uninject``: what inject records is exactly what uninject removes."""

from __future__ import annotations

import copy
from typing import Any

import orjson
import pytest

from tests.builders import enabled_namespace, pod
from webhook import __version__
from webhook.engine import (
    InjectionRefused,
    InjectionStatus,
    StatusError,
    containers_digest,
    inject,
    uninject,
)
from webhook.engine.config import InjectorConfig, ProxyConfig
from webhook.manifests.patched import patched

STATUS = "sidecar.mesh.io/status"
DEFAULT = "kubectl.kubernetes.io/default-container"
CONFIG = InjectorConfig()
NAMESPACE = enabled_namespace()


def status_of(obj: dict[str, Any]) -> dict[str, Any]:
    value: dict[str, Any] = orjson.loads(obj["metadata"]["annotations"][STATUS])
    return value


def injected(obj: dict[str, Any], config: InjectorConfig = CONFIG) -> dict[str, Any]:
    return patched(inject(obj, namespace=NAMESPACE, config=config))


# --- the status annotation ---------------------------------------------------------------


def test_the_status_lists_what_was_added_with_the_version_and_a_digest() -> None:
    obj = injected(pod())
    status = status_of(obj)
    assert list(status) == [
        "version",
        "initContainers",
        "containers",
        "volumes",
        "annotations",
        "digest",
    ]
    assert status["version"] == __version__
    assert status["initContainers"] == ["mesh-init", "mesh-proxy"]
    assert status["containers"] == []
    assert status["volumes"] == []
    assert status["annotations"] == [DEFAULT]
    inits = obj["spec"]["initContainers"]
    assert status["digest"] == containers_digest(inits, [])
    assert status["digest"].startswith("sha256:")
    assert len(status["digest"]) == len("sha256:") + 64


def test_the_default_container_annotation_is_listed_only_when_the_injector_set_it() -> None:
    status = status_of(injected(pod(annotations={DEFAULT: "app"})))
    assert status["annotations"] == []


def test_the_digest_follows_what_is_injected_and_nothing_else() -> None:
    base = status_of(injected(pod()))["digest"]
    other_pod = pod(name="api", labels={"app": "api"})
    assert status_of(injected(other_pod))["digest"] == base
    classic = pod(annotations={"sidecar.mesh.io/native-sidecar": "false"})
    assert status_of(injected(classic))["digest"] != base
    newer = InjectorConfig(proxy=ProxyConfig(version="v1.41.0"))
    assert status_of(injected(pod(), newer))["digest"] != base


def test_the_digest_is_independent_of_key_order() -> None:
    one = {"name": "a", "image": "b"}
    two = {"image": "b", "name": "a"}
    assert containers_digest([one], []) == containers_digest([two], [])
    assert containers_digest([one], []) != containers_digest([], [one])


def test_only_null_or_empty_members_are_recorded() -> None:
    assert "wasNull" not in status_of(injected(pod()))
    nulls = pod(annotations=None)
    nulls["spec"]["initContainers"] = None
    empty = pod(annotations={})
    empty["spec"]["initContainers"] = []
    assert status_of(injected(nulls))["wasNull"] == ["initContainers", "annotations"]
    assert status_of(injected(empty))["wasEmpty"] == ["initContainers", "annotations"]


def test_an_annotation_of_an_earlier_build_still_parses() -> None:
    old = '{"containers":["mesh-proxy"],"initContainers":["mesh-init"],"volumes":[],"version":"0.1.0"}'
    status = InjectionStatus.parse(old)
    assert status.containers == ("mesh-proxy",)
    assert status.annotations == ()
    assert status.digest is None


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("not json", "is not JSON"),
        ("[]", "is not a JSON object"),
        ('{"containers":[]}', "has no version"),
        ('{"version":"1","containers":"mesh-proxy"}', "containers that is not a list"),
        ('{"version":"1","containers":[1]}', "containers that is not a list"),
        ('{"version":"1","digest":5}', "digest that is not a string"),
        ('{"version":"1","wasNull":["spec"]}', "unknown members in wasNull"),
        ('{"version":"1","annotations":["a","a"]}', "names an item twice in annotations"),
        ('{"version":"1","containers":["p","p"]}', "names an item twice in containers"),
    ],
)
def test_a_malformed_status_is_a_status_error(text: str, problem: str) -> None:
    with pytest.raises(StatusError, match=problem):
        InjectionStatus.parse(text)


@pytest.mark.parametrize("others", [{"b": "2"}, {"b": "2", "c": "3"}])
def test_a_status_naming_an_annotation_twice_is_refused_and_nothing_removed(
    others: dict[str, str],
) -> None:
    # Counted naively, ["a","a"] against {status, a, b} looks like "every
    # annotation is ours" and would drop the user's b with the whole map.
    status = '{"version":"1","initContainers":[],"containers":[],"annotations":["a","a"]}'
    given = pod(annotations={STATUS: status, "a": "1", **others})
    with pytest.raises(InjectionRefused, match="names an item twice in annotations"):
        uninject(given)


# --- uninject ----------------------------------------------------------------------------


@pytest.mark.parametrize("native", ["true", "false"])
@pytest.mark.parametrize("hold", ["true", "false"])
def test_uninject_undoes_inject_in_every_mode(native: str, hold: str) -> None:
    original = pod(
        annotations={
            "sidecar.mesh.io/native-sidecar": native,
            "sidecar.mesh.io/hold-application": hold,
        }
    )
    original["spec"]["initContainers"] = [{"name": "fetch", "image": "fetch:1"}]
    original["spec"]["volumes"] = [{"name": "data", "emptyDir": {}}]
    before = copy.deepcopy(original)
    result = uninject(injected(original))
    assert result.removed
    assert patched(result) == before


def test_uninject_of_a_workload_patches_its_template() -> None:
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web"},
        "spec": {"template": {"spec": {"containers": [{"name": "app", "image": "app:1"}]}}},
    }
    result = uninject(injected(deployment))
    assert patched(result) == deployment
    assert {op["path"] for op in result.patch} == {
        "/spec/template/spec/initContainers",
        "/spec/template/metadata",
    }


def test_objects_without_the_annotation_come_back_unchanged_even_with_a_look_alike() -> None:
    look_alike = pod()
    look_alike["spec"]["containers"].append({"name": "mesh-proxy", "image": "mine:1"})
    result = uninject(look_alike)
    assert not result.removed
    assert patched(result) is look_alike
    assert "no sidecar.mesh.io/status annotation" in result.reason
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"}}
    assert patched(uninject(service)) is service


def test_uninject_removes_only_what_is_listed_and_keeps_what_the_user_added() -> None:
    obj = injected(pod(labels={"app": "web"}))
    obj["spec"]["initContainers"].insert(1, {"name": "later", "image": "later:1"})
    obj["spec"]["containers"].append({"name": "debug", "image": "debug:1"})
    obj["metadata"]["annotations"]["later.io/note"] = "mine"
    result = patched(uninject(obj))
    assert [c["name"] for c in result["spec"]["initContainers"]] == ["later"]
    assert [c["name"] for c in result["spec"]["containers"]] == ["app", "debug"]
    assert result["metadata"]["annotations"] == {"later.io/note": "mine"}
    assert result["metadata"]["labels"] == {"app": "web"}


def test_a_default_container_annotation_the_user_set_stays() -> None:
    original = pod(annotations={DEFAULT: "app", "team": "shop"})
    assert patched(uninject(injected(original))) == original


def test_uninject_removes_the_annotation_even_when_its_containers_are_gone() -> None:
    obj = injected(pod())
    del obj["spec"]["initContainers"][1]  # someone took mesh-proxy out by hand
    result = uninject(obj)
    assert patched(result) == pod()
    assert result.warnings == (
        "spec.initContainers has no mesh-proxy, which the status annotation lists as injected",
    )


def test_an_unreadable_annotation_is_refused_rather_than_guessed() -> None:
    obj = pod(annotations={STATUS: "{broken"})
    with pytest.raises(
        InjectionRefused,
        match=r"Pod web: metadata.annotations\[sidecar.mesh.io/status\] is not JSON",
    ):
        uninject(obj)


def test_uninject_never_modifies_its_input() -> None:
    obj = injected(pod())
    before = copy.deepcopy(obj)
    result = uninject(obj)
    patched(result)["metadata"]["name"] = "changed"
    assert obj == before


# --- a status annotation the pod came with ------------------------------------------------

COPIED = (
    '{"containers":["mesh-proxy"],"initContainers":["mesh-init"],"volumes":[],"version":"0.1.0"}'
)


@pytest.mark.parametrize("copied", [COPIED, "{broken", ""])
def test_a_copied_status_is_kept_in_the_new_one_and_put_back_by_uninject(copied: str) -> None:
    original = pod(annotations={STATUS: copied, "team": "shop"})
    once = injected(original)
    assert status_of(once)["replaced"] == copied
    assert status_of(once)["initContainers"] == ["mesh-init", "mesh-proxy"]
    result = uninject(once)
    assert {"op": "replace", "path": "/metadata/annotations/sidecar.mesh.io~1status", "value": copied} in result.patch  # fmt: skip
    assert patched(result) == original


def test_the_usual_status_has_no_replaced_value() -> None:
    assert "replaced" not in status_of(injected(pod()))
    assert "replaced" not in status_of(injected(pod(annotations={"team": "shop"})))


def test_a_copied_status_too_long_to_keep_refuses_the_pod_naming_it() -> None:
    copied = orjson.dumps({"version": "0", "initContainers": ["mesh-init"], "pad": "x" * 16_200})
    with pytest.raises(InjectionRefused) as caught:
        injected(pod(annotations={STATUS: copied.decode()}))
    assert str(caught.value) == (
        "Pod web: metadata.annotations[sidecar.mesh.io/status] does not describe this pod, "
        f"and at {len(copied)} characters it is too long to keep for uninject; remove it"
    )
