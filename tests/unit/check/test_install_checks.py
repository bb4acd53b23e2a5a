"""Each install check alone, against a context built for it: pass, fail (and warn, skip),
with the message and hint people see.

The namespace checks are in ``test_namespace_checks.py``, the discovery steps
in ``test_discover_install.py`` and ``test_discover_pods.py``, the runner in
``test_runner.py``; the whole command runs against the real install in
``tests/e2e/check/``.
"""

from __future__ import annotations

import datetime
from typing import Any

import pytest

from tests.unit.check.contexts import (
    CA,
    LEAF,
    NAME,
    NOW,
    STATIC_HINT,
    A,
    B,
    bundles,
    ctx,
    deployment,
    dialled,
    webhook,
)
from webhook.ops.check import context as c
from webhook.ops.check import install_checks as ic
from webhook.ops.check import namespace_checks as nc
from webhook.pki import certs, served_cert


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
