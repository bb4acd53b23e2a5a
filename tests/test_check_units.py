"""Each ``check`` alone, against a context built for it: pass, fail (and warn, skip), with
the message and hint people see.

The discovery steps and the runner are tested alone in ``tests/test_check_discovery.py``;
the whole command runs against the real install in ``tests/e2e/test_cluster_check.py``.
"""

from __future__ import annotations

import datetime
from types import MappingProxyType
from typing import Any

import pytest

from webhook import __version__
from webhook.contract.namespaces import NamespaceInfo
from webhook.engine.config import InjectorConfig
from webhook.ops.check import Options
from webhook.ops.check import context as c
from webhook.ops.check import install_checks as ic
from webhook.ops.check import namespace_checks as nc
from webhook.ops.outdated import Report, Workload
from webhook.pki import certs, served_cert

NOW = datetime.datetime(2030, 6, 1, tzinfo=datetime.UTC)
SERVICE = c.ServiceRef("mesh-system", "sidecar-injector", 443)
NAME = SERVICE.server_name
CA = certs.make_ca(now=NOW - datetime.timedelta(days=10))
LEAF = certs.make_serving_cert(
    CA, dns_names=[NAME], days=100, now=NOW - datetime.timedelta(days=10)
)
A = c.Endpoint("10.0.0.1", 8443, "injector-a")
B = c.Endpoint("10.0.0.2", 8443, "injector-b")
STATIC_HINT = "render and apply the install from the certificates the injector serves"

# --- builders -------------------------------------------------------------------------


def hook(name: str = "pods.sidecar.mesh.io", **extra: Any) -> dict[str, Any]:
    return {"name": name, "failurePolicy": "Fail", **extra}


def webhook(*hooks: dict[str, Any], service: c.ServiceRef | None = SERVICE, **kw: Any) -> Any:
    return c.WebhookConfiguration(exists=True, webhooks=hooks or (hook(),), service=service, **kw)


def ns(name: str, **labels: str) -> NamespaceInfo:
    return NamespaceInfo(name, MappingProxyType(labels), MappingProxyType({}))


def namespaces(*infos: NamespaceInfo, **kw: Any) -> c.Namespaces:
    return c.Namespaces(MappingProxyType({i.name: i for i in infos}), **kw)


def ctx(**fields: Any) -> c.Context:
    """A context with the webhook found unless said otherwise."""
    fields.setdefault("webhook", webhook())
    return c.Context(host="https://api:6443", now=NOW, **fields)


def deployment(name: str = "sidecar-injector", replicas: int = 2) -> dict[str, Any]:
    return {"metadata": {"name": name}, "spec": {"replicas": replicas}}


def bundles(*pems: tuple[bytes, str]) -> c.Bundles:
    pems = pems or ((CA.cert_pem(), "pods.sidecar.mesh.io"),)
    certificates = {label: tuple(served_cert.bundle_certificates(pem)) for pem, label in pems}
    return c.Bundles(pems=pems, certificates=MappingProxyType(certificates))


def dialled(endpoint: c.Endpoint, served: served_cert.Served, via: str = "direct") -> c.Dialled:
    return c.Dialled(endpoint, via, (("pods.sidecar.mesh.io", served),))


ENABLED = {"sidecar-injection": "enabled"}

# --- each check alone -----------------------------------------------------------------


def test_kubernetes_api_passes_with_the_version_and_fails_with_the_kubeconfig_hint() -> None:
    ok = ic.kubernetes_api(ctx(api=c.ApiAnswer(version="v1.33.1")))
    assert (ok.name, ok.status, ok.message) == (
        "kubernetes-api",
        "pass",
        "https://api:6443 answers (v1.33.1)",
    )
    assert ok.data == {"version": "v1.33.1"}
    down = ic.kubernetes_api(ctx(api=c.ApiAnswer(error="connection refused")))
    assert (down.status, down.message) == ("fail", "https://api:6443: connection refused")
    assert down.hint.startswith("check the kubeconfig")
    assert ic.kubernetes_api.fatal


# fmt: off
WEBHOOK_CONFIGURATION_CASES = [
    (c.WebhookConfiguration(error="HTTP 403: forbidden"), "cannot read MutatingWebhookConfiguration sidecar-injector: HTTP 403: forbidden", ""),
    (c.WebhookConfiguration(), "MutatingWebhookConfiguration sidecar-injector does not exist", "install it: make deploy, or kubectl apply -k manifests/cert-manager (docs/operations.md)"),
    (c.WebhookConfiguration(exists=True), "sidecar-injector has no webhooks", "re-apply the install"),
    (webhook(service=None, calls_url="pods"), "webhook pods calls a URL, not a Service", "the install's webhooks call the Service mesh-system/sidecar-injector; re-apply it"),
    (webhook(service=None, services=(("a", "s", 443), ("b", "s", 443))), "the webhooks call different Services: a/s:443, b/s:443", "re-apply the install"),
]
# fmt: on


@pytest.mark.parametrize(("found", "message", "hint"), WEBHOOK_CONFIGURATION_CASES)
def test_webhook_configuration_fails_for_each_way_it_can_be_wrong(
    found: Any, message: str, hint: str
) -> None:
    result = ic.webhook_configuration(ctx(webhook=found))
    assert (result.status, result.message, result.hint) == ("fail", message, hint)


def test_webhook_configuration_passes_naming_the_service_and_the_bundles_flavour() -> None:
    result = ic.webhook_configuration(ctx(webhook=webhook(cert_manager="mesh-system/serving")))
    assert result.status == "pass"
    assert result.message == (
        "sidecar-injector: 1 webhook call mesh-system/sidecar-injector:443"
        " (failurePolicy Fail; caBundle from cert-manager (mesh-system/serving))"
    )
    assert result.data == {
        "webhooks": ["pods.sidecar.mesh.io"],
        "service": "mesh-system/sidecar-injector",
        "port": 443,
    }


DEFAULTS = "the checks below assume the built-in defaults"
WITH_CONFIG: dict[str, Any] = {
    "deployment": deployment(),
    "config_map": "injector-config",
    "config_key": "config.yaml",
}


# fmt: off
INJECTOR_CONFIG_CASES = [
    (c.Injector(error="HTTP 403: no"), "warn", f"cannot read the Deployments in mesh-system: HTTP 403: no; {DEFAULTS}", ""),
    (c.Injector(), "warn", f"no Deployment in mesh-system serves Service sidecar-injector; {DEFAULTS}", "check reads the config from the ConfigMap the injector's Deployment mounts"),
    (c.Injector(deployment=deployment()), "pass", "deployment/sidecar-injector passes no --config: the built-in defaults apply", ""),
    (c.Injector(**WITH_CONFIG, config_map_error="timed out"), "warn", f"cannot read ConfigMap mesh-system/injector-config: timed out; {DEFAULTS}", ""),
    (c.Injector(**WITH_CONFIG), "fail", "deployment/sidecar-injector mounts config.yaml of ConfigMap mesh-system/injector-config, which does not exist", "re-apply the install: the injector cannot start without its config"),
    (c.Injector(**WITH_CONFIG, config_text="x: 1", config_error="ConfigMap mesh-system/injector-config: x: unknown"), "fail", "ConfigMap mesh-system/injector-config: x: unknown", "fix the config and re-apply the install"),
    (c.Injector(**WITH_CONFIG, config_text=""), "pass", "ConfigMap mesh-system/injector-config (config.yaml), mounted by deployment/sidecar-injector", ""),
]
# fmt: on


@pytest.mark.parametrize(("injector", "status", "message", "hint"), INJECTOR_CONFIG_CASES)
def test_injector_config_says_which_config_the_checks_below_assume(
    injector: c.Injector, status: str, message: str, hint: str
) -> None:
    result = ic.injector_config(ctx(injector=injector))
    assert (result.status, result.message, result.hint) == (status, message, hint)


def test_checks_that_follow_the_service_are_skipped_without_one() -> None:
    nothing = ctx(webhook=c.WebhookConfiguration())
    for each in (ic.injector_config, ic.service_endpoints, ic.replicas):
        assert (each(nothing).status, each(nothing).message) == (
            "skip",
            "no webhook configuration to follow",
        )
    assert nc.excluded_namespaces(nothing).message == "no webhook configuration to evaluate"
    assert ic.ca_bundle(nothing).message == "no endpoint to dial"
    assert ic.certificate_expiry(nothing).message == "no served certificate to look at"


SERVICE_OBJ = c.ServiceObject({"spec": {"ports": [{"name": "https", "port": 443}]}})


# fmt: off
SERVICE_ENDPOINTS_CASES = [
    (c.ServiceObject(error="HTTP 500"), c.Endpoints(), "cannot read Service mesh-system/sidecar-injector: HTTP 500", ""),
    (c.ServiceObject(), c.Endpoints(), "Service mesh-system/sidecar-injector does not exist: every call to the webhook fails", "re-apply the install"),
    (SERVICE_OBJ, c.Endpoints(), "Service mesh-system/sidecar-injector has no port 443, which the webhooks call", "re-apply the install"),
    (SERVICE_OBJ, c.Endpoints("https", error="HTTP 403"), "cannot read the EndpointSlices of mesh-system/sidecar-injector: HTTP 403", ""),
    (SERVICE_OBJ, c.Endpoints("https", unready=(A,)), "Service mesh-system/sidecar-injector has no ready endpoints (1 endpoint not ready): pods that call the webhook are refused (failurePolicy Fail)", "kubectl -n mesh-system get pods,endpointslices; kubectl -n mesh-system describe deployment"),
]
# fmt: on


@pytest.mark.parametrize(("service", "endpoints", "message", "hint"), SERVICE_ENDPOINTS_CASES)
def test_service_endpoints_fails_without_a_ready_endpoint(
    service: c.ServiceObject, endpoints: c.Endpoints, message: str, hint: str
) -> None:
    result = ic.service_endpoints(ctx(service=service, endpoints=endpoints))
    assert (result.status, result.message, result.hint) == ("fail", message, hint)


def test_service_endpoints_passes_listing_the_ready_ones() -> None:
    result = ic.service_endpoints(
        ctx(
            service=SERVICE_OBJ,
            endpoints=c.Endpoints(
                "https", ready=(A, B), unready=(c.Endpoint("10.0.0.3", 8443, None),)
            ),
        )
    )
    assert (result.status, result.hint) == ("pass", "")
    assert (
        result.message == "Service mesh-system/sidecar-injector has 2 ready endpoints (1 not ready)"
    )
    assert result.details == ("10.0.0.1:8443 (pod injector-a)", "10.0.0.2:8443 (pod injector-b)")


def test_ca_bundle_passes_when_every_endpoint_serves_what_the_bundle_verifies() -> None:
    good = served_cert.Served(LEAF.cert)
    one = ic.ca_bundle(
        ctx(
            endpoints=c.Endpoints("https", ready=(A,)),
            bundles=bundles(),
            served=(dialled(A, good),),
        )
    )
    assert (one.status, one.message) == (
        "pass",
        f"caBundle verifies the certificate the endpoint serves for {NAME}",
    )
    assert one.details[0].startswith(
        f"10.0.0.1:8443 (pod injector-a) via direct: {NAME} issued by sidecar-injector CA"
    )
    two = ic.ca_bundle(
        ctx(
            endpoints=c.Endpoints("https", ready=(A, B)),
            bundles=bundles(),
            served=(dialled(A, good), dialled(B, good)),
        )
    )
    assert two.message == f"caBundle verifies the certificate both 2 endpoints serve for {NAME}"


# fmt: off
CA_BUNDLE_CASES = [
    (c.BundleProblem("pods", "not-base64"), "webhook pods: caBundle is not base64"),
    (c.BundleProblem("pods", "empty"), "webhook pods: caBundle is empty, so the API server trusts only the system roots and refuses the injector's certificate"),
    (c.BundleProblem("pods", "no-certificate", "caBundle holds no PEM certificate"), "webhook pods: caBundle holds no PEM certificate"),
]
# fmt: on


@pytest.mark.parametrize(("problem", "message"), CA_BUNDLE_CASES)
def test_ca_bundle_fails_on_a_bundle_nothing_can_be_verified_with(
    problem: c.BundleProblem, message: str
) -> None:
    result = ic.ca_bundle(
        ctx(endpoints=c.Endpoints("https", ready=(A,)), bundles=c.Bundles(problem))
    )
    assert (result.status, result.message) == ("fail", message)
    assert result.hint.startswith(STATIC_HINT)
    managed = ic.ca_bundle(
        ctx(
            webhook=webhook(cert_manager="mesh-system/serving"),
            endpoints=c.Endpoints("https", ready=(A,)),
            bundles=c.Bundles(problem),
        )
    )
    assert managed.hint.startswith(
        "cert-manager's cainjector fills caBundle from mesh-system/serving"
    )


def test_ca_bundle_fails_when_the_bundle_does_not_verify_what_is_served() -> None:
    other = certs.make_serving_cert(certs.make_ca(), dns_names=[NAME])
    served = served_cert.Served(
        other.cert, verify_code=20, verify_message="unable to get local issuer certificate"
    )
    result = ic.ca_bundle(
        ctx(
            endpoints=c.Endpoints("https", unready=(A,)),
            bundles=bundles(),
            served=(dialled(A, served),),
        )
    )
    assert result.status == "fail"
    assert result.message.startswith(
        f"caBundle does not verify what 1 of 1 endpoints serve for {NAME}: 10.0.0.1:8443 (pod injector-a): caBundle (sidecar-injector CA "
    )
    assert result.message.endswith("unable to get local issuer certificate")
    assert result.hint.startswith(STATIC_HINT)
    assert "no endpoint is ready: dialled the endpoints that are not" in result.details


def test_ca_bundle_warns_when_some_endpoints_cannot_be_reached_and_fails_when_none_can() -> None:
    good, lost = served_cert.Served(LEAF.cert), served_cert.Served(None, error="connection refused")
    endpoints = c.Endpoints("https", ready=(A, B))
    some = ic.ca_bundle(
        ctx(
            endpoints=endpoints,
            bundles=bundles(),
            served=(dialled(A, good), dialled(B, lost, "port-forward")),
        )
    )
    assert (some.status, some.message) == (
        "warn",
        "cannot complete a TLS handshake with 1 of 2 endpoints: 10.0.0.2:8443 (pod injector-b) via port-forward: connection refused",
    )
    assert some.hint.startswith("from outside the cluster check falls back to a port-forward")
    none = ic.ca_bundle(
        ctx(endpoints=endpoints, bundles=bundles(), served=(dialled(A, lost), dialled(B, lost)))
    )
    assert (none.status, none.hint) == ("fail", some.hint)


# fmt: off
CERTIFICATE_EXPIRY_CASES = [
    (100, "pass", "the first to expire, the certificate served by 10.0.0.1:8443 (pod injector-a), has 90 days left", ""),
    (20, "warn", "the certificate served by 10.0.0.1:8443 (pod injector-a) expires in 10 days (under 30)", "sidecar-injector certs --renew --out certs, then update the Secret: make manifests && make deploy (docs/operations.md)"),
    (5, "fail", "the certificate served by 10.0.0.1:8443 (pod injector-a) expired 5 days ago: the API server refuses every call", "sidecar-injector certs --renew"),
]
# fmt: on


@pytest.mark.parametrize(("days", "status", "message", "hint"), CERTIFICATE_EXPIRY_CASES)
def test_certificate_expiry_warns_under_30_days_and_fails_once_expired(
    days: int, status: str, message: str, hint: str
) -> None:
    leaf = certs.make_serving_cert(
        CA, dns_names=[NAME], days=days, now=NOW - datetime.timedelta(days=10)
    )
    result = ic.certificate_expiry(
        ctx(bundles=bundles(), served=(dialled(A, served_cert.Served(leaf.cert)),))
    )
    assert (result.status, result.message) == (status, message)
    assert result.hint.startswith(hint)
    assert len(result.details) == 2  # the served certificate, the bundle's CA


def test_certificate_expiry_names_a_ca_that_expires_first_and_how_to_rotate_it() -> None:
    short = certs.make_ca(days=15, now=NOW - datetime.timedelta(days=10))
    served = (dialled(A, served_cert.Served(LEAF.cert)),)
    result = ic.certificate_expiry(ctx(bundles=bundles((short.cert_pem(), "pods")), served=served))
    assert result.status == "warn"
    assert result.message.startswith("the CA sidecar-injector CA ")
    assert result.message.endswith(" in caBundle expires in 5 days (under 30)")
    assert (
        result.hint
        == "rotate the CA in the order docs/operations.md gives (trust both, then switch)"
    )


# fmt: off
REPLICAS_CASES = [
    ((), 2, "fail", "0 ready replicas behind the Service (deployment/sidecar-injector wants 2): with failurePolicy Fail, meshed pods cannot be created", "kubectl -n mesh-system get pods; kubectl -n mesh-system describe deployment/sidecar-injector"),
    ((A,), 2, "warn", "1 ready replica behind the Service (deployment/sidecar-injector wants 2): with failurePolicy Fail, one restart or node drain blocks meshed pods", "why are the others not ready? kubectl -n mesh-system get pods; kubectl -n mesh-system describe deployment/sidecar-injector"),
    ((A,), 1, "warn", "1 ready replica behind the Service (deployment/sidecar-injector wants 1): with failurePolicy Fail, one restart or node drain blocks meshed pods", "kubectl -n mesh-system scale deployment/sidecar-injector --replicas=2 (and keep the PodDisruptionBudget)"),
    ((A, B), 2, "pass", "2 ready replicas behind the Service (deployment/sidecar-injector wants 2)", ""),
]
# fmt: on


@pytest.mark.parametrize(("ready", "wanted", "status", "message", "hint"), REPLICAS_CASES)
def test_replicas_needs_two_ready_for_failure_policy_fail(
    ready: tuple[c.Endpoint, ...], wanted: int, status: str, message: str, hint: str
) -> None:
    result = ic.replicas(
        ctx(
            injector=c.Injector(deployment=deployment(replicas=wanted)),
            endpoints=c.Endpoints("https", ready=ready),
        )
    )
    assert (result.status, result.message, result.hint) == (status, message, hint)
    assert result.data == {"ready": len(ready)}


SYSTEM = [
    ns(n, **{"kubernetes.io/metadata.name": n})
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
    strict = ns("strict", **ENABLED, **{nc.ENFORCE_LABEL: "restricted"})
    loose = ns("loose", **ENABLED, **{nc.ENFORCE_LABEL: "privileged"})
    off = ns("off", **{nc.ENFORCE_LABEL: "baseline"})
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
    shop, cart = ns("shop", **ENABLED), ns("cart", **ENABLED)
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
    label = nc.dry_run_injection(
        ctx(namespaces=namespaces(ns("default")), dry_runs=c.DryRuns(True, (("default", ""),)))
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
