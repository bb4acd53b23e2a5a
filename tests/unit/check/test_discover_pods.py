"""``check``'s discovery steps of namespaces, dry-run pods, pods and pod templates, alone.

Against the fake API server: its own Namespaces (paged lists) for the
namespaces step, its object store (``store``) for the rest, where a dry-run
create is answered as a test decides. The install's steps are in
``test_discover_install.py``.
"""

from __future__ import annotations

import json
from types import MappingProxyType
from typing import Any

from harness.fake_kube_api import FakeKubeAPI, ObjectStore
from tests.builders import ENABLED, enabled_namespace, namespace, pod
from webhook import __version__
from webhook.cluster.reader import Cluster
from webhook.contract.namespaces import NamespaceInfo
from webhook.engine import inject
from webhook.engine.config import InjectorConfig
from webhook.manifests.patched import patched
from webhook.ops.check import Options
from webhook.ops.check import context as c
from webhook.ops.check import discover_pods as dp
from webhook.ops.check import discover_templates as dt
from webhook.ops.outdated import Workload


def ctx(**fields: Any) -> c.Context:
    return c.Context(host="h", **fields)


def posted(api: FakeKubeAPI) -> list[Any]:
    """The bodies ``api`` was sent with POST (the dry-run pods), in order."""
    return [call.body for call in api.calls if call.method == "POST"]


# --- namespaces, dry-run pods, pods ----------------------------------------------------


def test_the_namespaces_step_reads_every_namespace_in_pages(
    fake_api: FakeKubeAPI, cluster: Cluster
) -> None:
    for index in range(600):
        fake_api.add(f"ns-{index:03}")
    fake_api.add(
        "shop",
        {"sidecar-injection": "enabled"},
        {"sidecar.mesh.io/log-level": "debug", "other": "x"},
    )
    found = dp.find_namespaces(cluster, ctx())
    assert len(found.by_name) == 601
    assert fake_api.list_limits == [500, 500]
    assert found.by_name["shop"] == namespace(
        "shop", {"sidecar-injection": "enabled"}, {"sidecar.mesh.io/log-level": "debug"}
    )


def test_the_namespaces_step_reads_only_the_one_asked_for_and_the_excluded(
    fake_api: FakeKubeAPI, cluster: Cluster
) -> None:
    for name in ("shop", "kube-system", "cart"):
        fake_api.add(name)
    found = dp.find_namespaces(cluster, ctx(options=Options(namespace="shop")))
    assert sorted(found.by_name) == ["kube-system", "shop"]
    assert fake_api.requests["list"] == 0
    fake_api.stop()
    assert dp.find_namespaces(cluster, ctx()).error.startswith("cannot read the namespaces: ")


def opted_in(name: str) -> NamespaceInfo:
    """Namespace ``name``, opted in unless it is ``default``."""
    return namespace(name) if name == "default" else enabled_namespace(name)


def opted(*names: str) -> c.Namespaces:
    return c.Namespaces(MappingProxyType({n: opted_in(n) for n in names}))


def injecting(name: str, obj: dict[str, Any]) -> tuple[int, Any]:
    """A dry-run create answered as the injector would: the pod back, injected."""
    return 201, patched(inject(obj, namespace=opted_in(name), config=InjectorConfig()))


def test_the_dry_run_step_learns_the_running_injector_from_the_first_injected_pod(
    store: ObjectStore, cluster: Cluster, fake_api: FakeKubeAPI
) -> None:
    store.dry_run = injecting
    found = dp.find_dry_runs(cluster, ctx(namespaces=opted("shop", "cart")))
    assert found.outcomes == (("cart", ""), ("shop", ""))
    assert found.reference == c.Reference(__version__, True)
    assert posted(fake_api)[0]["metadata"]["generateName"] == "sidecar-injector-check-"


def test_the_dry_run_step_says_what_happened_to_a_pod_that_came_back_otherwise(
    store: ObjectStore, cluster: Cluster
) -> None:
    answers = {
        "a": (201, {"spec": {"containers": [{"name": "app"}]}}),
        "b": (
            400,
            {"kind": "Status", "code": 400, "message": "admission webhook denied the request"},
        ),
        "c": (201, {"spec": {"containers": [{"name": "mesh-proxy"}]}}),
        "d": (
            201,
            {
                "metadata": {"annotations": {"sidecar.mesh.io/status": '{"version": "0.0.1"}'}},
                "spec": {"initContainers": [{"name": "mesh-proxy"}]},
            },
        ),
    }
    store.dry_run = lambda name, _pod: answers[name]
    found = dp.find_dry_runs(cluster, ctx(namespaces=opted("a", "b", "c", "d")))
    assert found.outcomes == (
        ("a", "admitted without mesh-proxy (the webhook was not called, or skipped it)"),
        ("b", "refused: HTTP 400: admission webhook denied the request"),
        ("c", "injected, but without the status annotation"),
        ("d", ""),
    )
    assert found.reference == c.Reference(
        "0.0.1",
        False,
        f"container digests not compared: the injector is 0.0.1, this check {__version__}",
    )


def test_the_namespaces_step_notes_the_namespaces_being_deleted(
    fake_api: FakeKubeAPI, cluster: Cluster
) -> None:
    fake_api.add("shop", ENABLED)
    fake_api.add("gone", ENABLED, phase="Terminating")
    found = dp.find_namespaces(cluster, ctx())
    assert sorted(found.by_name) == ["gone", "shop"]
    assert found.terminating == {"gone"}


def test_no_dry_run_pod_goes_to_a_namespace_being_deleted(
    store: ObjectStore, cluster: Cluster
) -> None:
    # A terminating namespace refuses new pods whatever the injector does.
    namespaces = c.Namespaces(
        MappingProxyType({n: opted_in(n) for n in ("shop", "gone")}),
        terminating=frozenset({"gone"}),
    )
    store.dry_run = injecting
    found = dp.find_dry_runs(cluster, ctx(namespaces=namespaces))
    assert found.outcomes == (("shop", ""),)


def test_the_dry_run_step_opts_a_pod_in_by_label_in_default_when_no_namespace_is(
    store: ObjectStore, cluster: Cluster, fake_api: FakeKubeAPI
) -> None:
    store.dry_run = injecting
    found = dp.find_dry_runs(cluster, ctx(namespaces=opted("default")))
    assert (found.opt_in_label, found.outcomes) == (True, (("default", ""),))
    assert posted(fake_api)[0]["metadata"]["labels"]["sidecar.mesh.io/inject"] == "true"
    assert (
        dp.find_dry_runs(cluster, ctx(options=Options(namespace="x"), namespaces=opted("default")))
        == c.DryRuns()
    )


def test_the_pod_scan_finds_outdated_sidecars_and_the_workloads_that_own_them(
    store: ObjectStore, cluster: Cluster
) -> None:
    current = injecting("shop", pod("now", containers=[{"name": "app"}]))[1]
    old = json.loads(json.dumps(current))
    status = json.loads(old["metadata"]["annotations"]["sidecar.mesh.io/status"])
    old["metadata"]["annotations"]["sidecar.mesh.io/status"] = json.dumps(
        {**status, "version": "0.0.1"}
    )
    old["metadata"].update(
        name="web-1", ownerReferences=[{"kind": "ReplicaSet", "name": "web-7d", "controller": True}]
    )
    unreadable = {"metadata": {"name": "odd", "annotations": {"sidecar.mesh.io/status": "{"}}}
    for obj in (current, old, unreadable, {"metadata": {"name": "plain"}}):
        store.objects[f"/api/v1/namespaces/shop/pods/{obj['metadata']['name']}"] = {
            **obj,
            "metadata": {**obj["metadata"], "namespace": "shop"},
        }
    store.objects["/apis/apps/v1/namespaces/shop/replicasets/web-7d"] = {
        "metadata": {"ownerReferences": [{"kind": "Deployment", "name": "web", "controller": True}]}
    }
    scan = dp.find_outdated(cluster, ctx(namespaces=opted("shop")))
    report = scan.report
    assert (scan.error, report.scanned, report.injected, report.unreadable, report.complete) == (
        "",
        4,
        2,
        1,
        True,
    )
    assert list(report.outdated) == [Workload("shop", "Deployment", "web")]
    assert report.outdated[Workload("shop", "Deployment", "web")].sample == ["web-1"]
    store.errors["/api/v1/pods"] = 403
    assert (
        dp.find_outdated(cluster, ctx()).error == "cannot list pods: HTTP 403: /api/v1/pods says no"
    )


# --- the workloads' pod templates, judged against the locks ------------------------------


def workload(
    kind: str, name: str, annotations: dict[str, str], *, owner: str | None = None, **meta: Any
) -> dict[str, Any]:
    template = {
        "metadata": {"annotations": annotations, **meta},
        "spec": {"containers": [{"name": "app", "image": "app"}]},
    }
    spec = (
        {"jobTemplate": {"spec": {"template": template}}}
        if kind == "CronJob"
        else {"template": template}
    )
    metadata: dict[str, Any] = {"name": name}
    if owner is not None:
        metadata["ownerReferences"] = [{"kind": owner, "name": "x", "controller": True}]
    return {"metadata": metadata, "spec": spec}


def place(store: ObjectStore, namespace: str, obj: dict[str, Any], kind: str) -> None:
    group = "batch/v1" if kind in ("Job", "CronJob") else "apps/v1"
    obj["metadata"]["namespace"] = namespace
    store.objects[
        f"/apis/{group}/namespaces/{namespace}/{kind.lower()}s/{obj['metadata']['name']}"
    ] = obj


def test_the_templates_step_finds_the_workloads_that_change_a_locked_setting(
    store: ObjectStore, cluster: Cluster
) -> None:
    xds = "sidecar.mesh.io/xds-address"
    ports = "sidecar.mesh.io/exclude-inbound-ports"
    shop = namespace("shop", {**ENABLED, ports: "9090_9091"}, {xds: "xds.mesh:15010"})
    plain = namespace("plain")
    place(store, "shop", workload("Deployment", "web", {xds: "evil:443"}), "Deployment")
    place(store, "shop", workload("StatefulSet", "db", {ports: "9091,9090"}), "StatefulSet")
    place(store, "shop", workload("DaemonSet", "agent", {ports: "9090"}), "DaemonSet")
    place(
        store,
        "shop",
        workload("ReplicaSet", "web-7d", {xds: "evil:443"}, owner="Deployment"),
        "ReplicaSet",
    )
    place(store, "shop", workload("ReplicaSet", "lone", {xds: "evil:443"}), "ReplicaSet")
    place(store, "shop", workload("Job", "sweep-1", {xds: "evil:443"}, owner="CronJob"), "Job")
    place(store, "shop", workload("CronJob", "sweep", {xds: "xds.mesh:15010"}), "CronJob")
    place(
        store,
        "shop",
        workload(
            "Deployment", "out", {xds: "evil:443"}, labels={"sidecar.mesh.io/inject": "false"}
        ),
        "Deployment",
    )
    place(
        store,
        "plain",
        workload("Deployment", "in", {xds: "evil:443"}, labels={"sidecar.mesh.io/inject": "true"}),
        "Deployment",
    )
    place(store, "plain", workload("Deployment", "unmeshed", {xds: "evil:443"}), "Deployment")
    config = InjectorConfig(locked_settings=frozenset({"xds-address", "exclude-inbound-ports"}))
    context = ctx(
        injector=c.Injector(config=config),
        namespaces=c.Namespaces(MappingProxyType({"shop": shop, "plain": plain})),
    )
    found = dt.find_templates(cluster, context)
    assert (found.error, found.problems, found.stopped, found.more) == ("", (), "", 0)
    assert found.scanned == 8  # the owned ReplicaSet and Job are judged through their owners
    assert sorted((str(t), t.key, t.value, t.in_force, t.source) for t in found.conflicts) == [
        ("plain/deployment/in", xds, "evil:443", "", "built-in default"),
        ("shop/daemonset/agent", ports, "9090", "9090,9091", "namespace label"),
        ("shop/deployment/web", xds, "evil:443", "xds.mesh:15010", "namespace annotation"),
        ("shop/replicaset/lone", xds, "evil:443", "xds.mesh:15010", "namespace annotation"),
    ]
    assert dt.find_templates(cluster, ctx(namespaces=context.namespaces)) == c.Templates()
    store.errors["/apis/batch/v1/cronjobs"] = 403
    cut = dt.find_templates(cluster, context)
    assert cut.problems == ("cannot list cronjobs: HTTP 403: /apis/batch/v1/cronjobs says no",)
    assert len(cut.conflicts) == 4


def test_the_templates_step_reads_one_namespace_and_keeps_what_it_could_not_read(
    store: ObjectStore, cluster: Cluster
) -> None:
    xds = "sidecar.mesh.io/xds-address"
    bad = namespace("bad", ENABLED, {xds: "nope"})
    place(store, "bad", workload("Deployment", "web", {xds: "evil:443"}), "Deployment")
    place(store, "other", workload("Deployment", "web", {xds: "evil:443"}), "Deployment")
    config = InjectorConfig(locked_settings=frozenset({"xds-address"}))
    context = ctx(
        options=Options(namespace="bad"),
        injector=c.Injector(config=config),
        namespaces=c.Namespaces(MappingProxyType({"bad": bad})),
    )
    found = dt.find_templates(cluster, context)
    assert (found.scanned, found.conflicts) == (1, ())
    assert found.problems == (
        "namespace bad: namespace annotation sidecar.mesh.io/xds-address='nope' is invalid:"
        " 'nope' is not host:port",
    )
    for _kind, group, resource, _owner in dt.KINDS:
        store.errors[f"/apis/{group}/namespaces/bad/{resource}"] = 403
    assert dt.find_templates(cluster, context).error == (
        "cannot list deployments: HTTP 403: /apis/apps/v1/namespaces/bad/deployments says no"
    )
