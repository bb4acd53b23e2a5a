"""Tags against the fake API server: kept in the revisions' selectors, moved add-first."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.fake_kube_api import FakeKubeAPI, ObjectStore
from tests.builders import WEBHOOK_CONFIGURATIONS, webhook_configuration
from tests.unit.check.support import cluster_of
from webhook.cluster.reader import Cluster
from webhook.engine.config import InjectorConfig
from webhook.manifests.revisions import revision_values
from webhook.ops.installed import find_installed
from webhook.ops.tags import TagError, list_tags, remove_tag, set_tag
from webhook.policy.render import render_policy


@pytest.fixture
def store(fake_api: FakeKubeAPI) -> ObjectStore:
    objects = ObjectStore()
    fake_api.route("/", objects)
    return objects


@pytest.fixture
def cluster(fake_api: FakeKubeAPI, tmp_path: Path) -> Cluster:
    return cluster_of(fake_api, tmp_path, timeout=5)


def install(store: ObjectStore, revision: str, *tags: str) -> str:
    obj = webhook_configuration(revision, tags)
    path = f"{WEBHOOK_CONFIGURATIONS}/{obj['metadata']['name']}"
    store.objects[path] = obj
    return path


def values_of(store: ObjectStore, path: str) -> list[list[str]]:
    """Each rev In expression's values, webhook by webhook."""
    found = []
    for hook in store.objects[path]["webhooks"]:
        for key in ("namespaceSelector", "objectSelector"):
            values = revision_values(hook[key])
            if values is not None:
                found.append(values)
    return found


def test_set_adds_the_tag_to_every_rev_expression_of_the_revision(
    store: ObjectStore, cluster: Cluster
) -> None:
    install(store, "default")
    canary = install(store, "canary")
    change = set_tag(cluster, "prod", "canary")
    assert (change.tag, change.revision, change.previous, change.unchanged) == (
        "prod",
        "canary",
        (),
        False,
    )
    assert values_of(store, canary) == [["canary", "prod"], ["canary", "prod"]]
    assert list_tags(cluster).tags() == {"prod": ["canary"]}


def test_moving_a_tag_adds_it_to_the_new_revision_before_taking_it_from_the_old(
    store: ObjectStore, cluster: Cluster, fake_api: FakeKubeAPI
) -> None:
    default = install(store, "default", "prod")
    canary = install(store, "canary")
    change = set_tag(cluster, "prod", "canary")
    assert change.previous == ("default",)
    assert values_of(store, default) == [["default"], ["default"]]
    assert values_of(store, canary) == [["canary", "prod"], ["canary", "prod"]]
    # Added first, taken after: never a moment where no revision answers to it.
    writes = [call.path for call in fake_api.calls if call.method == "PUT"]
    assert writes == [canary, default]
    # The webhooks are otherwise as they were.
    assert [h["name"] for h in store.objects[default]["webhooks"]] == [
        h["name"] for h in webhook_configuration("default")["webhooks"]
    ]


def test_setting_a_tag_where_it_already_points_writes_nothing(
    store: ObjectStore, cluster: Cluster, fake_api: FakeKubeAPI
) -> None:
    install(store, "canary", "prod")
    assert set_tag(cluster, "prod", "canary").unchanged
    assert not [call for call in fake_api.calls if call.method == "PUT"]


def test_a_conflict_reads_again_and_carries_on(store: ObjectStore, cluster: Cluster) -> None:
    default = install(store, "default", "prod")
    canary = install(store, "canary")
    store.conflicts[default] = 1  # someone else wrote it between our read and our write
    set_tag(cluster, "prod", "canary")
    assert list_tags(cluster).tags() == {"prod": ["canary"]}
    assert values_of(store, canary) == [["canary", "prod"], ["canary", "prod"]]


def test_endless_conflicts_give_up_in_one_line(store: ObjectStore, cluster: Cluster) -> None:
    canary = install(store, "canary")
    store.conflicts[canary] = 10
    with pytest.raises(TagError, match=r"kept changing .* run the command again"):
        set_tag(cluster, "prod", "canary")


def test_remove_takes_the_tag_from_the_revision_that_has_it(
    store: ObjectStore, cluster: Cluster
) -> None:
    canary = install(store, "canary", "prod", "next")
    change = remove_tag(cluster, "prod")
    assert change.previous == ("canary",)
    assert values_of(store, canary) == [["canary", "next"], ["canary", "next"]]


@pytest.mark.parametrize(
    ("action", "message"),
    [
        (lambda c: set_tag(c, "canary", "default"), "canary is the name of an installed revision"),
        (lambda c: set_tag(c, "default", "canary"), "default names the revision-less install"),
        (lambda c: set_tag(c, "prod", "stable"), "no revision stable is installed"),
        (lambda c: set_tag(c, "Prod_1", "canary"), "'Prod_1' is not a tag name"),
        (lambda c: set_tag(c, "x" * 47, "canary"), "is not a tag name"),
        (lambda c: remove_tag(c, "prod"), "no revision has the tag prod"),
        (lambda c: remove_tag(c, "canary"), "canary is a revision, not a tag"),
    ],
)
def test_what_cannot_be_done_is_one_line(
    store: ObjectStore, cluster: Cluster, action: object, message: str
) -> None:
    install(store, "default")
    install(store, "canary")
    with pytest.raises(TagError) as caught:
        action(cluster)  # type: ignore[operator]
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_a_revision_without_rev_expressions_cannot_take_a_tag(
    store: ObjectStore, cluster: Cluster
) -> None:
    path = install(store, "canary")
    for hook in store.objects[path]["webhooks"]:
        hook["objectSelector"] = {}
        hook["namespaceSelector"] = {}
    with pytest.raises(TagError, match=r"no sidecar\.mesh\.io/rev In expression"):
        set_tag(cluster, "prod", "canary")


def test_the_revisions_are_found_by_their_label_and_named_by_it(
    store: ObjectStore, cluster: Cluster
) -> None:
    install(store, "default", "prod")
    install(store, "canary")
    stray = webhook_configuration("stable")
    stray["metadata"]["labels"]["sidecar.mesh.io/rev"] = "Not A Name"
    store.objects[f"{WEBHOOK_CONFIGURATIONS}/stray"] = stray
    unlabelled = webhook_configuration("other")
    del unlabelled["metadata"]["labels"]
    store.objects[f"{WEBHOOK_CONFIGURATIONS}/other"] = unlabelled
    installed = find_installed(cluster)
    assert list(installed.revisions) == ["canary", "default"]
    assert installed.revisions["default"].tags == ["prod"]
    assert installed.revisions["default"].mode == "webhook"
    assert installed.owner_of("prod") is installed.revisions["default"]
    assert installed.owner_of("gone") is None
    assert installed.unnamed == [
        "MutatingWebhookConfiguration sidecar-injector-stable: 'Not A Name'"
    ]


def test_an_unreadable_cluster_is_one_line(fake_api: FakeKubeAPI, cluster: Cluster) -> None:
    fake_api.stop()
    with pytest.raises(TagError, match="cannot read the installed revisions"):
        list_tags(cluster)


# --- policy mode: the bindings -------------------------------------------------------------

_API = "/apis/admissionregistration.k8s.io/v1"


def install_policy(store: ObjectStore, revision: str, *tags: str) -> list[str]:
    """A revision in policy mode, as ``sidecar-injector policy`` renders it; its bindings' paths."""
    plurals = {
        "MutatingAdmissionPolicy": "mutatingadmissionpolicies",
        "MutatingAdmissionPolicyBinding": "mutatingadmissionpolicybindings",
        "ValidatingAdmissionPolicy": "validatingadmissionpolicies",
        "ValidatingAdmissionPolicyBinding": "validatingadmissionpolicybindings",
    }
    bindings = []
    for obj in render_policy(InjectorConfig(), revision=revision, tags=tags):
        path = f"{_API}/{plurals[obj['kind']]}/{obj['metadata']['name']}"
        obj["metadata"]["resourceVersion"] = "1"
        store.objects[path] = obj
        if obj["kind"].endswith("Binding"):
            bindings.append(path)
    return bindings


def binding_values(store: ObjectStore, paths: list[str]) -> list[list[str]]:
    """Each rev In expression's values in the bindings at ``paths``."""
    found = []
    for path in paths:
        resources = store.objects[path]["spec"]["matchResources"]
        for key in ("namespaceSelector", "objectSelector"):
            values = revision_values(resources[key])
            if values is not None:
                found.append(values)
    return found


def test_a_tag_moves_between_a_webhook_revision_and_a_policy_revision_s_bindings(
    store: ObjectStore, cluster: Cluster
) -> None:
    default = install(store, "default", "prod")
    canary = install_policy(store, "canary")
    assert list_tags(cluster).revisions["canary"].mode == "policy"
    change = set_tag(cluster, "prod", "canary")
    assert change.previous == ("default",)
    assert values_of(store, default) == [["default"], ["default"]]
    # Both kinds' rev-pod and rev-namespace bindings answer to it now, as rendered with it.
    assert binding_values(store, canary) == 4 * [["canary", "prod"]]
    tagged = render_policy(InjectorConfig(), revision="canary", tags=["prod"])
    for path, want in zip(canary, [o for o in tagged if "Binding" in o["kind"]], strict=True):
        assert store.objects[path]["spec"] == want["spec"]
    assert list_tags(cluster).tags() == {"prod": ["canary"]}
    # And back to the webhook revision.
    set_tag(cluster, "prod", "default")
    assert binding_values(store, canary) == 4 * [["canary"]]
    assert values_of(store, default) == [["default", "prod"], ["default", "prod"]]
