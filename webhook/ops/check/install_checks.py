"""The checks of the install itself: API server, webhook configuration, config,
endpoints, caBundle, certificate expiry, replicas.

Each is a function from the ``Context`` to an ``Outcome``, declared with
``@check``: its name, standing hint and the discovery steps it reads.
"""

from __future__ import annotations

from typing import Final

from cryptography import x509

from webhook.ops.check.context import Context
from webhook.ops.check.discover_install import (
    API,
    BUNDLES,
    ENDPOINTS,
    INJECTOR,
    MAX_ENDPOINTS,
    SERVED,
    SERVICE,
    WEBHOOK,
    targets,
)
from webhook.ops.check.discover_policy import POLICY
from webhook.ops.check.model import (
    Outcome,
    check,
    failed,
    outcome,
    passed,
    plural,
    skipped,
    warned,
)
from webhook.pki import served_cert
from webhook.policy.render import CONFIG_ANNOTATION

EXPIRY_WARN_DAYS: Final = 30
POLICY_HINT: Final = (
    "render and apply the policies again: sidecar-injector policy --config FILE"
    " | kubectl apply --server-side -f - (docs/policy.md)"
)
NO_WEBHOOK: Final = "no webhook configuration to follow"
REAPPLY: Final = "re-apply the install"


@check(
    "kubernetes-api",
    hint="check the kubeconfig (--kubeconfig, $KUBECONFIG) and that the API server is up",
    needs=[API],
    fatal=True,
    skip_message="the API server cannot be reached",
)
def kubernetes_api(context: Context) -> Outcome:
    """The API server answers."""
    if context.api.error:
        return failed(f"{context.host}: {context.api.error}")
    version = context.api.version
    return passed(f"{context.host} answers ({version})", version=version)


@check("webhook-configuration", hint=REAPPLY, needs=[WEBHOOK, POLICY])
def webhook_configuration(context: Context) -> Outcome:
    """The MutatingWebhookConfiguration exists and its webhooks call one Service."""
    wanted = context.options.configuration
    found = context.webhook
    if found.error:
        return failed(f"cannot read MutatingWebhookConfiguration {wanted}: {found.error}", "")
    if not found.exists and context.policy.exists:
        return skipped(f"policy mode: MutatingAdmissionPolicy {wanted} injects, no webhook")
    if not found.exists:
        return failed(
            f"MutatingWebhookConfiguration {wanted} does not exist",
            "install it: make deploy, or kubectl apply -k manifests/cert-manager "
            "(docs/operations.md)",
        )
    if not found.webhooks:
        return failed(f"{wanted} has no webhooks")
    if found.calls_url is not None:
        return failed(
            f"webhook {found.calls_url} calls a URL, not a Service",
            "the install's webhooks call the Service mesh-system/sidecar-injector; re-apply it",
        )
    if found.service is None:
        listed = ", ".join(f"{ns}/{svc}:{port}" for ns, svc, port in found.services)
        return failed(f"the webhooks call different Services: {listed}")
    service = found.service
    policies = sorted({str(hook.get("failurePolicy", "Fail")) for hook in found.webhooks})
    flavour = (
        f"caBundle from cert-manager ({found.cert_manager})"
        if found.cert_manager
        else "static caBundle"
    )
    return passed(
        f"{wanted}: {plural(len(found.webhooks), 'webhook')} call {service}:{service.port}"
        f" (failurePolicy {'/'.join(policies)}; {flavour})",
        webhooks=[hook.get("name") for hook in found.webhooks],
        service=str(service),
        port=service.port,
    )


@check(
    "injector-config",
    hint="re-apply the install: the injector cannot start without its config",
    needs=[WEBHOOK, INJECTOR, POLICY],
)
def injector_config(context: Context) -> Outcome:
    """The config the injector's Deployment mounts, or in policy mode the one the
    policies record (the checks below use it)."""
    service = context.webhook.service
    if service is None and not context.webhook.exists and context.policy.exists:
        name = context.options.configuration
        if context.policy.config is None:
            return failed(
                f"MutatingAdmissionPolicy {name}: {context.policy.config_error or 'not found'};"
                " the checks below assume the built-in defaults",
                POLICY_HINT,
            )
        return passed(f"the config MutatingAdmissionPolicy {name} records ({CONFIG_ANNOTATION})")
    if service is None:
        return skipped(NO_WEBHOOK)
    namespace = service.namespace
    found = context.injector
    defaults = "the checks below assume the built-in defaults"
    if found.error:
        return warned(f"cannot read the Deployments in {namespace}: {found.error}; {defaults}", "")
    if found.deployment is None:
        return warned(
            f"no Deployment in {namespace} serves Service {service.name}; {defaults}",
            "check reads the config from the ConfigMap the injector's Deployment mounts",
        )
    deployment = found.deployment_name
    if not found.config_map:
        return passed(f"deployment/{deployment} passes no --config: the built-in defaults apply")
    config_map = found.config_map
    if found.config_map_error:
        return warned(
            f"cannot read ConfigMap {namespace}/{config_map}: {found.config_map_error}; {defaults}",
            "",
        )
    if found.config_text is None:
        return failed(
            f"deployment/{deployment} mounts {found.config_key} of ConfigMap"
            f" {namespace}/{config_map}, which does not exist"
        )
    if found.config_error:
        return failed(found.config_error, "fix the config and re-apply the install")
    return passed(
        f"ConfigMap {namespace}/{config_map} ({found.config_key}), mounted by"
        f" deployment/{deployment}",
        configMap=config_map,
    )


@check("service-endpoints", hint=REAPPLY, needs=[WEBHOOK, SERVICE, ENDPOINTS])
def service_endpoints(context: Context) -> Outcome:
    """The Service exists and has ready endpoints on the webhooks' port."""
    service = context.webhook.service
    if service is None:
        return skipped(NO_WEBHOOK)
    if context.service.error:
        return failed(f"cannot read Service {service}: {context.service.error}", "")
    if context.service.obj is None:
        return failed(f"Service {service} does not exist: every call to the webhook fails")
    found = context.endpoints
    if found.port_name is None:
        return failed(f"Service {service} has no port {service.port}, which the webhooks call")
    if found.error:
        return failed(f"cannot read the EndpointSlices of {service}: {found.error}", "")
    not_ready = len(found.unready)
    if not found.ready:
        return failed(
            f"Service {service} has no ready endpoints"
            + (f" ({plural(not_ready, 'endpoint')} not ready)" if not_ready else "")
            + ": pods that call the webhook are refused (failurePolicy Fail)",
            f"kubectl -n {service.namespace} get pods,endpointslices; "
            f"kubectl -n {service.namespace} describe deployment",
        )
    return passed(
        f"Service {service} has {plural(len(found.ready), 'ready endpoint')}"
        + (f" ({not_ready} not ready)" if not_ready else ""),
        [str(e) for e in found.ready],
        endpoints=[str(e) for e in found.ready],
    )


def bundle_hint(context: Context) -> str:
    """How to fix a caBundle, for the install's flavour (cert-manager or static)."""
    if context.webhook.cert_manager:
        namespace = context.webhook.service.namespace if context.webhook.service else ""
        return (
            f"cert-manager's cainjector fills caBundle from {context.webhook.cert_manager}:"
            f" check the Certificate is Ready (kubectl -n {namespace} get certificate) and the"
            " cainjector runs (docs/operations.md)"
        )
    return (
        "render and apply the install from the certificates the injector serves:"
        " make manifests && make deploy (docs/operations.md)"
    )


@check(
    "ca-bundle",
    hint="from outside the cluster check falls back to a port-forward through the API"
    " server (needs create on pods/portforward); run check in the cluster"
    " or with --connect port-forward",
    needs=[WEBHOOK, ENDPOINTS, BUNDLES, SERVED],
)
def ca_bundle(context: Context) -> Outcome:
    """Every webhook's caBundle verifies what each endpoint serves, for the Service's name."""
    if not targets(context):
        return skipped("no endpoint to dial")
    problem = context.bundles.problem
    if problem is not None:
        what = {
            "not-base64": "caBundle is not base64",
            "empty": "caBundle is empty, so the API server trusts only the system roots and"
            " refuses the injector's certificate",
            "no-certificate": problem.detail,
        }[problem.reason]
        return failed(f"webhook {problem.webhooks}: {what}", bundle_hint(context))
    server_name = context.webhook.service.server_name if context.webhook.service else ""
    problems: list[str] = []
    unreachable: list[str] = []
    details: list[str] = []
    if not context.endpoints.ready:
        details.append("no endpoint is ready: dialled the endpoints that are not")
    for dialled in context.served:
        endpoint, via = dialled.endpoint, dialled.via
        for label, served in dialled.verdicts:
            if served.error and served.leaf is None:
                unreachable.append(f"{endpoint} via {via}: {served.error}")
            elif not served.signed_by_bundle:
                bundle = list(context.bundles.certificates[label])
                why = served_cert.explain(served, server_name=server_name, bundle=bundle)
                problems.append(f"{endpoint}: {why}")
            if served.leaf is not None:
                details.append(
                    f"{endpoint} via {via}: {served_cert.common_name(served.leaf.subject)}"
                    f" issued by {served_cert.common_name(served.leaf.issuer)},"
                    f" sha256 {served_cert.fingerprint(served.leaf)[:16]}"
                )
    skipped_endpoints = len(targets(context)) - MAX_ENDPOINTS
    if skipped_endpoints > 0:
        details.append(f"{skipped_endpoints} more endpoints not dialled (at most {MAX_ENDPOINTS})")
    checked = len(context.served)
    if problems:
        return failed(
            f"caBundle does not verify what {len(problems)} of {checked} endpoints serve"
            f" for {server_name}: {problems[0]}",
            bundle_hint(context),
            sorted(set(details + problems[1:])),
        )
    if unreachable:
        reached = checked - len(unreachable)
        return outcome(
            "warn" if reached else "fail",
            f"cannot complete a TLS handshake with {len(unreachable)} of {checked} endpoints:"
            f" {unreachable[0]}",
            None,
            sorted(set(details + unreachable[1:])),
        )
    return passed(
        f"caBundle verifies the certificate {'both' if checked == 2 else 'all'}"
        f" {plural(checked, 'endpoint')} serve for {server_name}"
        if checked > 1
        else f"caBundle verifies the certificate the endpoint serves for {server_name}",
        sorted(set(details)),
    )


def renew_hint(context: Context, *, ca: bool) -> str:
    """How to renew the certificate that expires first, for the install's flavour."""
    if ca:
        return "rotate the CA in the order docs/operations.md gives (trust both, then switch)"
    if context.webhook.cert_manager:
        namespace = context.webhook.service.namespace if context.webhook.service else ""
        return (
            f"cert-manager renews before expiry; to force it: cmctl renew -n {namespace}"
            " <certificate> (docs/operations.md)"
        )
    return (
        "sidecar-injector certs --renew --out certs, then update the Secret:"
        " make manifests && make deploy (docs/operations.md)"
    )


def served_leaves(context: Context) -> dict[str, tuple[x509.Certificate, list[str]]]:
    """Each distinct served certificate by fingerprint, with the endpoints serving it."""
    leaves: dict[str, tuple[x509.Certificate, list[str]]] = {}
    for dialled in context.served:
        for _, served in dialled.verdicts:
            if served.leaf is not None:
                fp = served_cert.fingerprint(served.leaf)
                entry = leaves.setdefault(fp, (served.leaf, []))
                if str(dialled.endpoint) not in entry[1]:
                    entry[1].append(str(dialled.endpoint))
    return leaves


@check("certificate-expiry", needs=[WEBHOOK, BUNDLES, SERVED])
def certificate_expiry(context: Context) -> Outcome:
    """Days until the served certificates (and the bundles' CAs) expire."""
    now = context.now
    leaves = served_leaves(context)
    if not leaves:
        return skipped("no served certificate to look at")
    details = []
    worst: tuple[float, str] | None = None
    for fp, (leaf, where) in sorted(leaves.items(), key=lambda i: i[1][0].not_valid_after_utc):
        days = served_cert.days_left(leaf, now)
        details.append(
            f"sha256 {fp[:16]} served by {', '.join(where)}: expires"
            f" {leaf.not_valid_after_utc:%Y-%m-%d %H:%M} UTC ({days:.0f} days)"
        )
        if worst is None or days < worst[0]:
            worst = (days, f"the certificate served by {where[0]}")
    for label, certs in context.bundles.certificates.items():
        for cert in certs:
            days = served_cert.days_left(cert, now)
            details.append(
                f"caBundle CA {served_cert.common_name(cert.subject)} ({label}): expires"
                f" {cert.not_valid_after_utc:%Y-%m-%d} ({days:.0f} days)"
            )
            if worst is None or days < worst[0]:
                worst = (days, f"the CA {served_cert.common_name(cert.subject)} in caBundle")
    if worst is None:  # pragma: no cover - leaves is not empty
        return skipped("no certificate to look at")
    days, what = worst
    renew = renew_hint(context, ca="CA" in what)
    if days <= 0:
        return failed(
            f"{what} expired {-days:.0f} days ago: the API server refuses every call",
            renew,
            details,
            days=round(days, 1),
        )
    if days < EXPIRY_WARN_DAYS:
        return warned(
            f"{what} expires in {days:.0f} days (under {EXPIRY_WARN_DAYS})",
            renew,
            details,
            days=round(days, 1),
        )
    return passed(
        f"the first to expire, {what}, has {days:.0f} days left", details, days=round(days, 1)
    )


@check("replicas", needs=[WEBHOOK, INJECTOR, ENDPOINTS])
def replicas(context: Context) -> Outcome:
    """Enough ready endpoints for ``failurePolicy: Fail``: a warning at 1, a failure at 0."""
    service = context.webhook.service
    if service is None:
        return skipped(NO_WEBHOOK)
    policies = {str(h.get("failurePolicy", "Fail")) for h in context.webhook.webhooks}
    policy = "failurePolicy Fail" if "Fail" in policies else "failurePolicy Ignore"
    count = len(context.endpoints.ready)
    namespace = service.namespace
    deployment = context.injector.deployment
    desired = ""
    deploy_name = "sidecar-injector"
    wanted = 1
    if deployment is not None:
        deploy_name = context.injector.deployment_name
        wanted = (deployment.get("spec") or {}).get("replicas", 1)
        desired = f" (deployment/{deploy_name} wants {wanted})"
    message = f"{plural(count, 'ready replica')} behind the Service{desired}"
    describe = (
        f"kubectl -n {namespace} get pods; kubectl -n {namespace} describe deployment/{deploy_name}"
    )
    if count == 0:
        return failed(
            f"{message}: with {policy}, meshed pods cannot be created", describe, ready=count
        )
    if count == 1:
        return warned(
            f"{message}: with {policy}, one restart or node drain blocks meshed pods",
            f"why are the others not ready? {describe}"
            if deployment is not None and wanted > 1
            else f"kubectl -n {namespace} scale deployment/{deploy_name} --replicas=2"
            " (and keep the PodDisruptionBudget)",
            ready=count,
        )
    return passed(message, ready=count)
