"""Each namespace check alone, against a context built for it: pass, fail (and warn, skip),
with the message and hint people see.

Excluded namespaces, PodSecurity, the dry-run pods, outdated sidecars and
locked settings; the install checks are in ``test_install_checks.py``.
"""

from __future__ import annotations

from dataclasses import replace

from tests.builders import enabled_namespace, namespace
from tests.unit.check.contexts import ctx, hook, namespaces, webhook
from webhook import __version__
from webhook.engine.config import InjectorConfig
from webhook.ops.check import Options
from webhook.ops.check import context as c
from webhook.ops.check import namespace_checks as nc
from webhook.ops.outdated import Report, Workload

SYSTEM = [
    namespace(n, {"kubernetes.io/metadata.name": n})
    for n in ("kube-system", "kube-public", "mesh-system")
]
NOT_SYSTEM = {
    "matchExpressions": [
        {
            "key": "kubernetes.io/metadata.name",
            "operator": "NotIn",
            "values": ["kube-system", "kube-public", "kube-node-lease", "mesh-system"],
        }
    ]
}


def test_excluded_namespaces_passes_when_no_selector_selects_them() -> None:
    result = nc.excluded_namespaces(
        ctx(webhook=webhook(hook(namespaceSelector=NOT_SYSTEM)), namespaces=namespaces(*SYSTEM))
    )
    assert (result.status, result.message) == (
        "pass",
        "no webhook selects kube-system, kube-public, kube-node-lease, mesh-system",
    )
    assert result.details == ("kube-node-lease does not exist; judged by its name label",)


def test_excluded_namespaces_fails_naming_the_webhook_and_the_namespace_it_selects() -> None:
    result = nc.excluded_namespaces(
        ctx(webhook=webhook(hook(matchConditions=[{}])), namespaces=namespaces(*SYSTEM))
    )
    assert result.status == "fail"
    assert result.message == (
        "webhook pods.sidecar.mesh.io selects kube-system (its matchConditions were not evaluated):"
        " its pods call the injector, and with failurePolicy Fail an outage blocks them (+3 more)"
    )
    assert result.hint == (
        "every webhook's namespaceSelector needs kubernetes.io/metadata.name NotIn"
        " [kube-system, kube-public, kube-node-lease, mesh-system] (manifests/base/mutatingwebhook.yaml)"
    )


def test_checks_that_read_namespaces_warn_when_they_cannot_be_read() -> None:
    broken = ctx(namespaces=c.Namespaces(error="cannot read the namespaces: HTTP 403"))
    for each in (nc.excluded_namespaces, nc.pod_security, nc.dry_run_injection):
        assert (each(broken).status, each(broken).message, each(broken).hint) == (
            "warn",
            "cannot read the namespaces: HTTP 403",
            "",
        )


def test_pod_security_fails_for_opted_in_namespaces_that_enforce_baseline_or_restricted() -> None:
    strict = enabled_namespace("strict", **{nc.ENFORCE_LABEL: "restricted"})
    loose = enabled_namespace("loose", **{nc.ENFORCE_LABEL: "privileged"})
    off = namespace("off", {nc.ENFORCE_LABEL: "baseline"})
    result = nc.pod_security(ctx(namespaces=namespaces(strict, loose, off, partial=True)))
    assert result.status == "fail"
    assert (
        result.message
        == "1 opted-in namespace enforce PodSecurity baseline/restricted, which refuses mesh-init (NET_ADMIN, NET_RAW): strict enforces restricted"
    )
    assert (
        result.hint
        == "label it pod-security.kubernetes.io/enforce=privileged, or opt it out (sidecar-injection=disabled)"
    )
    assert result.details == (
        "strict enforces restricted",
        "only the first 20000 namespaces were read (--namespace NS for others)",
    )
    assert result.data == {"namespaces": ["strict"]}
    fine = nc.pod_security(ctx(namespaces=namespaces(loose, off)))
    assert (fine.status, fine.message) == (
        "pass",
        "none of 1 opted-in namespace enforces PodSecurity baseline or restricted",
    )


def test_dry_run_injection_passes_or_fails_with_what_each_namespace_answered() -> None:
    shop, cart = enabled_namespace("shop"), enabled_namespace("cart")
    injected = c.DryRuns(outcomes=(("cart", ""),))
    one = nc.dry_run_injection(ctx(namespaces=namespaces(shop, cart), dry_runs=injected))
    assert (one.status, one.message) == (
        "pass",
        "dry-run pods come back injected (1 of 2 opted-in namespaces)",
    )
    assert one.details == (
        "cart: injected",
        "1 more not tried (--max-namespaces, or --namespace NS)",
    )
    refused = c.DryRuns(outcomes=(("cart", ""), ("shop", "refused: HTTP 400: no")))
    bad = nc.dry_run_injection(ctx(namespaces=namespaces(shop, cart), dry_runs=refused))
    assert (bad.status, bad.message) == (
        "fail",
        "a dry-run pod is not injected in 1 of 2 namespaces: shop: refused: HTTP 400: no",
    )
    assert bad.hint.startswith("see the other checks; kubectl create --dry-run=server")
    being_deleted = replace(namespaces(shop, cart), terminating=frozenset({"shop"}))
    deleted = nc.dry_run_injection(ctx(namespaces=being_deleted, dry_runs=injected))
    assert deleted.status == "pass"
    assert deleted.details == ("cart: injected", "1 namespace being deleted, not tried")
    label = nc.dry_run_injection(
        ctx(
            namespaces=namespaces(namespace("default")),
            dry_runs=c.DryRuns(True, (("default", ""),)),
        )
    )
    assert (
        label.message
        == "dry-run pods come back injected (no namespace is opted in; a pod labelled sidecar.mesh.io/inject=true in default)"
    )


def test_dry_run_injection_is_skipped_with_nothing_to_try() -> None:
    assert (
        nc.dry_run_injection(ctx()).message == "no namespace is opted in, and there is no default"
    )
    result = nc.dry_run_injection(ctx(options=Options(namespace="shop")))
    assert (result.status, result.message) == (
        "skip",
        "namespace shop is not opted in (sidecar-injection=enabled) or does not exist",
    )


def outdated_report(*, complete: bool = True) -> Report:
    report = Report(
        scanned=5,
        injected=3,
        unreadable=1,
        complete=complete,
        stopped_because="" if complete else "stopped after 60s",
    )
    report.add(
        Workload("shop", "Deployment", "web"), "web-1", "injected by 0.0.1, the injector is 0.2.0"
    )
    return report


def test_outdated_sidecars_warns_with_the_workloads_to_restart() -> None:
    reference = c.Reference("0.2.0", False, "container digests not compared: the injector is 0.2.0")
    result = nc.outdated_sidecars(
        ctx(dry_runs=c.DryRuns(reference=reference), pods=c.PodScan(outdated_report()))
    )
    assert (result.status, result.hint) == (
        "warn",
        "restart the workloads listed below to inject the current sidecar",
    )
    assert result.message == "1 pod run an outdated sidecar (shop: 1); 3 injected pods of 5 scanned"
    assert result.details == (
        "container digests not compared: the injector is 0.2.0",
        "1 pod with an unreadable status annotation",
        "shop: deployment/web (1 pod, injected by 0.0.1, the injector is 0.2.0): kubectl rollout restart -n shop deployment/web",
    )
    assert result.data["namespaces"] == {"shop": 1}
    assert (
        result.data["workloads"][0]["restart"] == "kubectl rollout restart -n shop deployment/web"
    )


def test_outdated_sidecars_passes_and_warns_when_the_scan_was_cut_short() -> None:
    assumed = f"the running injector's version is assumed to be {__version__} (no dry-run pod came back injected)"
    clean = nc.outdated_sidecars(ctx(pods=c.PodScan(Report(scanned=2))))
    assert (clean.status, clean.message, clean.hint, clean.details) == (
        "pass",
        "no outdated sidecar (0 injected pods of 2 scanned)",
        "",
        (assumed,),
    )
    cut = nc.outdated_sidecars(
        ctx(pods=c.PodScan(Report(scanned=2, complete=False, stopped_because="stopped after 60s")))
    )
    assert (cut.status, cut.hint) == ("warn", "narrow it down with --namespace NS")
    assert cut.details[-1] == "scan incomplete: stopped after 60s"
    failed_scan = nc.outdated_sidecars(ctx(pods=c.PodScan(error="cannot list pods: HTTP 403")))
    assert (failed_scan.status, failed_scan.message, failed_scan.hint) == (
        "warn",
        "cannot list pods: HTTP 403",
        "",
    )


LOCKING = c.Injector(config=InjectorConfig(locked_settings=frozenset({"xds-address", "log-level"})))
WEB = c.LockedTemplate(
    "shop", "Deployment", "web", "sidecar.mesh.io/xds-address", "evil:443", "", "built-in default"
)
JOB = c.LockedTemplate(
    "cart", "CronJob", "sweep", "sidecar.mesh.io/log-level", "trace", "info", "namespace label"
)
LOCK_HINT = (
    "remove the annotation from each pod template listed (or set it to the value in force),"
    " or unlock the setting (lockedSettings in the injector config)"
)


def test_locked_settings_fails_naming_the_workloads_whose_new_pods_will_be_refused() -> None:
    found = c.Templates(scanned=7, conflicts=(WEB, JOB), more=2)
    result = nc.locked_settings(ctx(injector=LOCKING, templates=found))
    assert (result.name, result.status, result.hint) == ("locked-settings", "fail", LOCK_HINT)
    assert result.message == (
        "2 workloads set a locked setting to another value than the one in force, so their new"
        " pods will be refused: cart/cronjob/sweep, shop/deployment/web"
        " (locked: log-level, xds-address; 7 pod templates scanned)"
    )
    assert result.details == (
        "shop/deployment/web: sidecar.mesh.io/xds-address='evil:443', locked to '' (built-in default)",
        "cart/cronjob/sweep: sidecar.mesh.io/log-level='trace', locked to 'info' (namespace label)",
        "2 more not listed",
    )
    assert result.data["workloads"][0] == {
        "namespace": "shop",
        "kind": "Deployment",
        "name": "web",
        "key": "sidecar.mesh.io/xds-address",
        "value": "evil:443",
        "inForce": "",
        "source": "built-in default",
    }


def test_locked_settings_passes_without_locks_or_without_conflicts() -> None:
    unlocked = nc.locked_settings(ctx())
    assert (unlocked.status, unlocked.message) == (
        "pass",
        "no setting is locked (lockedSettings in the injector config)",
    )
    clean = nc.locked_settings(ctx(injector=LOCKING, templates=c.Templates(scanned=3)))
    assert (clean.status, clean.message, clean.hint) == (
        "pass",
        "no workload changes a locked setting (locked: log-level, xds-address; 3 pod templates"
        " scanned)",
        "",
    )


def test_locked_settings_warns_when_it_could_not_look_everywhere() -> None:
    cut = nc.locked_settings(
        ctx(injector=LOCKING, templates=c.Templates(scanned=3, stopped="stopped after 60s"))
    )
    assert (cut.status, cut.hint, cut.details) == (
        "warn",
        "narrow it down with --namespace NS",
        ("scan incomplete: stopped after 60s",),
    )
    forbidden = nc.locked_settings(
        ctx(
            injector=LOCKING,
            templates=c.Templates(scanned=3, problems=("cannot list cronjobs: HTTP 403",)),
        )
    )
    assert (forbidden.status, forbidden.hint, forbidden.details) == (
        "warn",
        "",
        ("cannot list cronjobs: HTTP 403",),
    )
    unread = nc.locked_settings(
        ctx(injector=LOCKING, templates=c.Templates(error="cannot list deployments: HTTP 403"))
    )
    assert (unread.status, unread.message) == ("warn", "cannot list deployments: HTTP 403")
    no_namespaces = nc.locked_settings(
        ctx(injector=LOCKING, namespaces=c.Namespaces(error="cannot read the namespaces: HTTP 403"))
    )
    assert (no_namespaces.status, no_namespaces.message) == (
        "warn",
        "cannot read the namespaces: HTTP 403",
    )
