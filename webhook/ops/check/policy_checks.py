"""The check of policy mode's install: the admission policies and their bindings.

In policy mode (``docs/policy.md``) a MutatingAdmissionPolicy injects and a
ValidatingAdmissionPolicy refuses, each bound by a binding per entry of its
revision (the webhook's disjoint entries); there is no webhook, Service or
certificate. This check says whether those objects are there and are what
``sidecar-injector policy`` renders, with this build, for the config they
record: a policy rendered by another version, or edited by hand, stores other
pods than the webhook would, which the contract rules out.
"""

from __future__ import annotations

from webhook.ops.check.context import Context
from webhook.ops.check.discover_install import WEBHOOK
from webhook.ops.check.discover_policy import POLICY
from webhook.ops.check.install_checks import POLICY_HINT
from webhook.ops.check.model import Outcome, check, failed, passed, plural


@check("admission-policies", hint=POLICY_HINT, needs=[WEBHOOK, POLICY])
def admission_policies(context: Context) -> Outcome:
    """The policies and bindings exist and match what ``policy`` renders for their config."""
    name = context.options.configuration
    found = context.policy
    if found.error:
        return failed(f"cannot read the admission policies {name}: {found.error}", "")
    if not found.exists:
        if context.webhook.exists:
            return passed("webhook mode: no admission policies (none needed)")
        return failed(
            f"neither MutatingWebhookConfiguration {name} nor MutatingAdmissionPolicy {name}"
            " exists: nothing injects",
            "install one mode: make deploy (webhook), or kubectl apply --server-side -k"
            " manifests/policy (policy mode; docs/policy.md)",
        )
    if found.missing:
        return failed(
            f"{plural(len(found.missing), 'object')} of policy mode missing: "
            + ", ".join(found.missing)
        )
    if found.config is None:
        return failed(f"MutatingAdmissionPolicy {name}: {found.config_error}")
    revision = f"revision {found.revision}" if found.revision else "no revision label"
    if found.differences:
        return failed(
            f"the admission policies differ from what this build renders for their config"
            f" ({plural(len(found.differences), 'difference')}; another version rendered"
            f" them, or they were edited): {found.differences[0]}",
            None,
            found.differences[1:],
        )
    also = (
        "; the webhook configuration exists too: pods in namespaces both select are injected"
        " by the policy, and the webhook finds them injected"
        if context.webhook.exists
        else ""
    )
    return passed(
        f"MutatingAdmissionPolicy, ValidatingAdmissionPolicy {name} and their bindings"
        f" ({revision}) are what this build renders for their config{also}",
        digest=found.digest,
        revision=found.revision,
    )
