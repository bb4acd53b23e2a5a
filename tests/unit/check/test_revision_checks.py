"""The revision checks and their discovery: revisions and tags, labels naming nothing,
sidecars per revision; against the fake API server's object store and on built contexts."""

from __future__ import annotations

import json
from dataclasses import replace
from types import MappingProxyType
from typing import Any

from harness.fake_kube_api import ObjectStore
from tests.builders import WEBHOOK_CONFIGURATIONS, namespace, pod, webhook_configuration
from tests.unit.check.contexts import namespaces
from webhook.cluster.reader import Cluster
from webhook.engine import inject
from webhook.engine.config import InjectorConfig
from webhook.manifests.config_file import parse_config
from webhook.manifests.patched import patched
from webhook.ops.check import Options
from webhook.ops.check import context as c
from webhook.ops.check import discover_pods as dp
from webhook.ops.check import revision_checks as rc
from webhook.ops.check.discover_revisions import find_revisions
from webhook.ops.outdated import Report, Workload
from webhook.policy.render import render_policy

CANARY_CONFIG = "revision: canary\nproxy:\n  version: v1.41.0\n"


def install(store: ObjectStore, revision: str, config: str, *tags: str) -> None:
    """A revision's webhook configuration, Service, Deployment and ConfigMap."""
    mwc = webhook_configuration(revision, tags)
    name = mwc["metadata"]["name"]
    store.objects[f"{WEBHOOK_CONFIGURATIONS}/{name}"] = mwc
    base = "/api/v1/namespaces/mesh-system"
    store.objects[f"{base}/services/{name}"] = {
        "metadata": {"name": name, "namespace": "mesh-system"},
        "spec": {"selector": {"app.kubernetes.io/name": name}, "ports": [{"port": 443}]},
    }
    store.objects[f"/apis/apps/v1/namespaces/mesh-system/deployments/{name}"] = {
        "metadata": {"name": name, "namespace": "mesh-system"},
        "spec": {
            "template": {
                "metadata": {"labels": {"app.kubernetes.io/name": name}},
                "spec": {
                    "containers": [
                        {
                            "name": "sidecar-injector",
                            "args": ["--config=/etc/sidecar-injector/config/config.yaml"],
                            "volumeMounts": [
                                {"name": "config", "mountPath": "/etc/sidecar-injector/config"}
                            ],
                        }
                    ],
                    "volumes": [{"name": "config", "configMap": {"name": f"{name}-config"}}],
                },
            }
        },
    }
    store.objects[f"{base}/configmaps/{name}-config"] = {
        "metadata": {"name": f"{name}-config"},
        "data": {"config.yaml": config},
    }


def injected(
    name: str, namespace_name: str, config: InjectorConfig, **metadata: Any
) -> dict[str, Any]:
    """A pod as the API server stores it after ``config``'s revision injected it."""
    info = namespace(namespace_name, {"sidecar-injection": "enabled"})
    obj = patched(inject(pod(name, **metadata), namespace=info, config=config))
    obj["metadata"]["namespace"] = namespace_name
    return obj


def place(store: ObjectStore, obj: dict[str, Any]) -> None:
    meta = obj["metadata"]
    store.objects[f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}"] = obj


# --- discovery --------------------------------------------------------------------------


def test_the_revisions_step_finds_each_revision_its_tags_and_its_config(
    store: ObjectStore, cluster: Cluster
) -> None:
    install(store, "default", "", "prod")
    install(store, "canary", CANARY_CONFIG)
    found = find_revisions(cluster, c.Context())
    assert found.found
    assert not found.error
    assert list(found.installed.revisions) == ["canary", "default"]
    assert found.installed.revisions["default"].tags == ["prod"]
    assert found.configs["canary"].proxy.version == "v1.41.0"
    assert found.configs["default"].proxy.version == InjectorConfig().proxy.version
    assert found.notes == ()
    assert found.serving("prod") == "default"
    assert found.serving(None) == "default"
    assert found.serving("gone") is None


def test_a_policy_revision_s_config_is_the_one_its_policy_records_as_that_revision(
    store: ObjectStore, cluster: Cluster
) -> None:
    plurals = {
        "MutatingAdmissionPolicy": "mutatingadmissionpolicies",
        "MutatingAdmissionPolicyBinding": "mutatingadmissionpolicybindings",
        "ValidatingAdmissionPolicy": "validatingadmissionpolicies",
        "ValidatingAdmissionPolicyBinding": "validatingadmissionpolicybindings",
    }
    install(store, "default", "")
    config = parse_config("proxy:\n  version: v1.41.0\n")
    for obj in render_policy(config, revision="canary", tags=["prod"]):
        path = f"/apis/admissionregistration.k8s.io/v1/{plurals[obj['kind']]}"
        store.objects[f"{path}/{obj['metadata']['name']}"] = obj
    found = find_revisions(cluster, c.Context())
    assert found.installed.revisions["canary"].mode == "policy"
    assert found.installed.revisions["canary"].tags == ["prod"]
    assert found.configs["canary"].proxy.version == "v1.41.0"
    assert found.configs["canary"].revision == "canary"
    assert found.notes == ()
    assert found.serving("prod") == "canary"


def test_a_revision_whose_config_cannot_be_read_or_names_another_revision_is_noted(
    store: ObjectStore, cluster: Cluster
) -> None:
    install(store, "canary", "revision: stable\n")
    install(store, "next", "proxy: [not, a, map]\n")
    found = find_revisions(cluster, c.Context())
    assert found.notes[0].startswith("revision canary: its config names revision stable")
    assert found.notes[1].startswith("revision next: ConfigMap mesh-system/sidecar-injector-next")
    assert "the built-in defaults are assumed" in found.notes[1]


def test_the_pod_scan_judges_each_pod_by_the_revision_its_labels_pick_now(
    store: ObjectStore, cluster: Cluster
) -> None:
    install(store, "default", "", "prod")
    install(store, "canary", CANARY_CONFIG)
    canary = InjectorConfig(revision="canary")
    canary = replace(canary, proxy=replace(canary.proxy, version="v1.41.0"))
    refs = [{"kind": "ReplicaSet", "name": "web-7d", "controller": True}]
    # shop moved to canary by label: its default-injected pod is outdated; the
    # canary-injected one is current. legacy is enabled (the default revision).
    place(store, injected("web-1", "shop", InjectorConfig(), ownerReferences=refs))
    place(store, injected("web-2", "shop", canary))
    place(store, injected("old-1", "legacy", InjectorConfig()))
    # A pod of its own picks a revision nobody installed.
    stray = pod("stray", labels={"sidecar.mesh.io/rev": "gone"})
    place(store, {**stray, "metadata": {**stray["metadata"], "namespace": "legacy"}})
    context = c.Context(
        namespaces=namespaces(
            namespace("shop", {"sidecar.mesh.io/rev": "canary"}),
            namespace("legacy", {"sidecar-injection": "enabled"}),
        ),
        revisions=find_revisions(cluster, c.Context()),
    )
    report = dp.find_outdated(cluster, context).report
    assert dict(report.by_revision) == {"default": 2, "canary": 1}
    assert dict(report.outdated_by_revision) == {"canary": 1}
    (entry,) = report.outdated.values()
    assert entry.sample == ["web-1"]
    assert list(entry.reasons) == ["injected by revision default, its labels now pick canary"]
    assert list(report.outdated) == [Workload("shop", "ReplicaSet", "web-7d")]
    assert dict(report.unknown_revisions) == {"gone": 1}
    assert report.unknown_sample == ["legacy/stray (gone)"]
    # legacy being deleted: its pods are going with it, judged not at all.
    deleting = replace(context.namespaces, terminating=frozenset({"legacy"}))
    report = dp.find_outdated(cluster, replace(context, namespaces=deleting)).report
    assert dict(report.by_revision) == {"default": 1, "canary": 1}
    assert dict(report.unknown_revisions) == {}


# --- the checks --------------------------------------------------------------------------


def revisions(**tags: list[str]) -> c.Revisions:
    """Installed revisions by name, each with its tags (``default=["prod"]``)."""
    from webhook.ops.installed import Installed, Revision, Selecting

    installed = Installed()
    for name, its_tags in tags.items():
        obj = webhook_configuration(name, its_tags)
        installed.revisions[name] = Revision(name, [Selecting("MutatingWebhookConfiguration", obj)])
    configs = {name: InjectorConfig(revision=name) for name in tags}
    return c.Revisions(installed, MappingProxyType(configs), found=True)


def ctx(found: c.Revisions, *infos: Any, report: Report | None = None) -> c.Context:
    return c.Context(
        options=Options(),
        namespaces=namespaces(*infos),
        revisions=found,
        pods=c.PodScan(report or Report()),
    )


SHOP = namespace("shop", {"sidecar.mesh.io/rev": "prod"})
LEGACY = namespace("legacy", {"sidecar-injection": "enabled"})


def test_revisions_lists_each_revision_its_tags_namespaces_and_pods() -> None:
    report = Report()
    report.by_revision.update({"default": 3, "canary": 1})
    result = rc.revisions(ctx(revisions(default=[], canary=["prod"]), SHOP, LEGACY, report=report))
    assert result.status == "pass"
    assert result.message == "2 revisions: canary, default (tags: prod -> canary)"
    assert result.details == (
        "canary (webhook, proxy v1.40.0): tags prod; namespaces shop; 1 pod with its sidecar",
        "default (webhook, proxy v1.40.0): tags none; namespaces legacy; 3 pods with its sidecar",
    )
    assert [r["name"] for r in result.data["revisions"]] == ["canary", "default"]


def test_a_value_two_revisions_answer_to_fails() -> None:
    result = rc.revisions(ctx(revisions(default=["prod"], canary=["prod"])))
    assert result.status == "fail"
    assert result.message.startswith(
        "prod is answered by revisions canary and default: pods it picks are seen by two injectors"
    )
    assert result.hint.startswith("a rev value must be answered by one revision only")


def test_nothing_installed_skips_the_revision_checks() -> None:
    for run in (rc.revisions, rc.revision_labels, rc.revision_sidecars):
        assert run(ctx(c.Revisions(found=True))).status == "skip"


def test_revision_labels_fails_on_namespaces_and_pods_whose_value_names_nothing() -> None:
    report = Report(scanned=9)
    report.unknown_revisions.update({"gone": 2})
    report.unknown_sample += ["legacy/a (gone)", "legacy/b (gone)"]
    stale = namespace("old", {"sidecar.mesh.io/rev": "v1-39"})
    disabled = namespace("off", {"sidecar.mesh.io/rev": "v1-39", "sidecar-injection": "disabled"})
    result = rc.revision_labels(
        ctx(revisions(default=["prod"]), SHOP, stale, disabled, report=report)
    )
    assert result.status == "fail"
    assert result.message == (
        "1 namespace and 2 pods carry sidecar.mesh.io/rev values no installed revision or tag"
        " answers to (gone, v1-39): their pods are created without the sidecar"
        " (installed: default)"
    )
    assert result.details == ("namespace old (v1-39)", "pod legacy/a (gone)", "pod legacy/b (gone)")
    assert result.data["namespaces"] == ["old"]
    passing = rc.revision_labels(ctx(revisions(default=["prod"]), SHOP, LEGACY))
    assert passing.status == "pass"
    being_deleted = ctx(revisions(default=["prod"]), SHOP, stale)
    being_deleted = replace(
        being_deleted, namespaces=replace(being_deleted.namespaces, terminating=frozenset({"old"}))
    )
    assert rc.revision_labels(being_deleted).status == "pass"


def test_revision_sidecars_counts_per_revision_and_warns_for_pods_to_restart() -> None:
    report = Report(scanned=5, injected=4)
    report.by_revision.update({"default": 3, "canary": 1})
    report.outdated_by_revision.update({"canary": 3})
    result = rc.revision_sidecars(ctx(revisions(default=[], canary=["prod"]), report=report))
    assert result.status == "warn"
    assert result.message == "3 pods would get another sidecar on restart (canary: 3)"
    assert result.details == (
        "canary: 1 pod with its sidecar, 3 to restart into it",
        "default: 3 pods with its sidecar, 0 to restart into it",
    )
    done = Report(scanned=5, injected=4)
    done.by_revision.update({"canary": 4})
    assert rc.revision_sidecars(ctx(revisions(canary=[]), report=done)).status == "pass"


def test_the_checked_revision_dry_runs_the_namespaces_it_serves() -> None:
    found = revisions(default=[], canary=["prod"])
    base = ctx(found, SHOP, LEGACY, namespace("plain"))
    assert [i.name for i in base.opted_in] == ["legacy"]
    canary = replace(base, options=Options(revision="canary"))
    assert [i.name for i in canary.opted_in] == ["shop"]
    assert [i.name for i in base.meshed] == ["legacy", "shop"]


def test_a_status_without_a_revision_reads_as_the_default_revisions() -> None:
    obj = injected("web", "shop", InjectorConfig())
    status = json.loads(obj["metadata"]["annotations"]["sidecar.mesh.io/status"])
    assert "revision" not in status
