"""The checks ``sidecar-injector check`` runs, in the order it prints them.

To add one, write its function next to its kind (``install_checks`` or
``namespace_checks``, or a new module) with ``@check(...)``, and add it here.
"""

from __future__ import annotations

from typing import Final

from webhook.ops.check.install_checks import (
    ca_bundle,
    certificate_expiry,
    injector_config,
    kubernetes_api,
    replicas,
    service_endpoints,
    webhook_configuration,
)
from webhook.ops.check.model import Check
from webhook.ops.check.namespace_checks import (
    dry_run_injection,
    excluded_namespaces,
    locked_settings,
    outdated_sidecars,
    pod_security,
)
from webhook.ops.check.policy_checks import admission_policies
from webhook.ops.check.revision_checks import revision_labels, revision_sidecars, revisions

CHECKS: Final[tuple[Check, ...]] = (
    kubernetes_api,
    webhook_configuration,
    admission_policies,
    injector_config,
    service_endpoints,
    ca_bundle,
    certificate_expiry,
    replicas,
    excluded_namespaces,
    revisions,
    revision_labels,
    pod_security,
    dry_run_injection,
    locked_settings,
    outdated_sidecars,
    revision_sidecars,
)
CHECK_NAMES: Final = tuple(c.name for c in CHECKS)
