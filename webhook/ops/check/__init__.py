"""``sidecar-injector check``: is the install healthy, as the API server sees it?

In the spirit of ``linkerd check`` and ``istioctl x precheck``: one line per
check, ``pass``/``warn``/``fail`` (or ``skip`` when an earlier failure leaves
nothing to look at), a hint for each line that is not a pass, and a non-zero
exit when anything fails. The checks read what the API server really uses
rather than what the manifests say:

- ``kubernetes-api``: the API server answers (fatal: the others are skipped);
- ``webhook-configuration``: the MutatingWebhookConfiguration exists and its
  webhooks call one Service (skipped in policy mode);
- ``admission-policies``: policy mode's MutatingAdmissionPolicy,
  ValidatingAdmissionPolicy and bindings (named like the webhook
  configuration) exist and are what this build renders for the config they
  record (skipped in webhook mode; ``webhook.ops.check.policy_checks``);
- ``injector-config``: the config the injector's Deployment mounts, or in
  policy mode the one the policies record (its excluded namespaces and proxy
  settings feed the checks below);
- ``service-endpoints``: the Service exists and has ready endpoints on the
  webhook's port;
- ``ca-bundle``: every webhook's ``caBundle`` verifies the certificate each
  ready endpoint actually serves, for ``<service>.<namespace>.svc``
  (``webhook.pki.served_cert``);
- ``certificate-expiry``: days until the served certificates (and the
  bundle's CAs) expire: a warning under 30, a failure once expired;
- ``replicas``: ready endpoints for ``failurePolicy: Fail``: a warning at 1,
  a failure at 0;
- ``excluded-namespaces``: the webhooks' (or the policy bindings') namespace
  selectors, evaluated against the real Namespace objects, leave out kube-system, kube-public,
  kube-node-lease, the injector's own namespace and the config's exclusions;
- ``pod-security``: no opted-in namespace enforces PodSecurity ``baseline``
  or ``restricted`` (``mesh-init`` needs NET_ADMIN and NET_RAW);
- ``dry-run-injection``: a server-side dry-run Pod (``dryRun=All``, nothing
  is stored) in each opted-in namespace comes back injected;
- ``locked-settings``: no workload that would be injected (Deployments,
  StatefulSets, DaemonSets, ReplicaSets and Jobs of their own, CronJobs)
  gives a setting the config locks (``lockedSettings``) another value in its
  pod template than the one in force: its new pods would be refused;
- ``outdated-sidecars``: pods whose status annotation records another
  injector version or other containers than would be injected now
  (``webhook.ops.outdated``), or in policy mode another policy digest than the
  installed policy's, grouped by workload with the command to restart it.

How the endpoints are reached: each ready endpoint address is dialled
directly (what the API server does); that works in the cluster and from a
node. From a workstation, where pod addresses are usually not routable, a
connection that cannot be opened within 3 s makes ``check`` fall back to a
port-forward through the API server (``pods/portforward``, as ``kubectl
port-forward``), which reaches the same container port and so the same
certificate. ``--connect`` forces either way.

Bounded: every request has a timeout (``--timeout``, 15 s) and a body limit
(4 MiB for an object, 8 MiB for a list page, asked again with fewer items
when over: ``webhook.cluster.reader``); a whole list is at most 64 MiB and
1,000 pages, read within one timeout; the kubeconfig and the files it names
are read within bounds first (``webhook.cluster.kubeconfig``); lists of pods
are read as metadata only, in pages, for at most four request timeouts (and
within a list's bytes and pages), and so are the workloads (whole objects,
read only when settings are locked); at most 16 endpoints are
dialled, ``--max-namespaces`` (10) namespaces get a dry-run Pod, 200
ReplicaSets or Jobs are looked up for their owners, and 20,000 namespaces are
read; a check not started within twenty request timeouts of the start is
reported as not run. What was cut short is said.

Checks as data (as Linkerd's ``pkg/healthcheck``):

- ``context``: ``Options`` and the frozen ``Context`` the checks read, one
  typed field per discovery step;
- ``discover_install``, ``discover_pods``, ``discover_templates``: the
  discovery steps, which read the cluster (``webhook.cluster.reader.Cluster``)
  and fill the context;
- ``install_checks``, ``namespace_checks``: the checks, each a function from
  the context to an ``Outcome``, declared with ``@check(name, hint=...,
  needs=[...], fatal=...)``; ``checks.CHECKS`` is their order;
- ``runner``: discovery, order, guarding, the fatal skip and the time budget;
- ``render``: text, JSON and the summary; ``command``: ``check_cluster``.

Adding a check:

1. If it needs something not in the context yet, add a field with a
   "nothing found" default to ``Context`` (and a frozen dataclass for it),
   a ``find_...(cluster, context)`` function that reads it (read errors kept
   as text, never raised) and a ``Discovery("field", "what it is", find_...,
   needs)`` next to the others.
2. Write the check next to its kind: ``@check("name", hint="the fix",
   needs=[STEP, ...])`` on a function ``(context) -> Outcome`` returning
   ``passed(...)``, ``warned(...)``, ``failed(...)`` or ``skipped(...)``
   (``hint=None``, the default, gives a warning or failure the standing hint;
   ``""`` gives none). It only reads the context. ``needs`` names the steps
   whose output it reads (the steps those need run first on their own); if
   one of them crashed, the check is skipped, pointing at the check that
   reported the crash.
3. Add it to ``CHECKS`` in ``checks.py`` where its line should print.
4. Test it alone (``tests/unit/check/test_install_checks.py`` or
   ``test_namespace_checks.py``): build the context it reads, call the
   check, assert on status, message and hint.
"""

from __future__ import annotations

from webhook.cluster.reader import (
    OBJECT_LIMIT,
    PAGE_LIMIT,
    PAGE_SIZE,
    Cluster,
    ClusterError,
    TimeUp,
)
from webhook.manifests.revisions import selector_matches
from webhook.ops.check.checks import CHECK_NAMES, CHECKS
from webhook.ops.check.command import check_cluster
from webhook.ops.check.context import (
    CONNECT_CHOICES,
    DEFAULT_MAX_NAMESPACES,
    DEFAULT_TIMEOUT,
    Connect,
    Context,
    Endpoint,
    Options,
)
from webhook.ops.check.discover_pods import probe_pod
from webhook.ops.check.model import Check, Discovery, Outcome, Result, Status
from webhook.ops.check.render import render_json, render_text, summary
from webhook.ops.check.runner import run

__all__ = [
    "CHECKS",
    "CHECK_NAMES",
    "CONNECT_CHOICES",
    "DEFAULT_MAX_NAMESPACES",
    "DEFAULT_TIMEOUT",
    "OBJECT_LIMIT",
    "PAGE_LIMIT",
    "PAGE_SIZE",
    "Check",
    "Cluster",
    "ClusterError",
    "Connect",
    "Context",
    "Discovery",
    "Endpoint",
    "Options",
    "Outcome",
    "Result",
    "Status",
    "TimeUp",
    "check_cluster",
    "probe_pod",
    "render_json",
    "render_text",
    "run",
    "selector_matches",
    "summary",
]
