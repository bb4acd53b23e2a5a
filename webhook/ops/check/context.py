"""What the checks read: the options, and the typed facts the discovery steps found.

``Context`` is frozen. The runner starts from ``Context(options, host, now)``
and, before each check, replaces the fields that the check's discovery steps
fill (``webhook.ops.check.discover_*``); a check only reads it. Every fact has
a default meaning "nothing found" (no configuration, no endpoints, the
built-in injector config), which is what a check sees when the step that
fills it did not run or crashed, and what a unit test starts from.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final, Literal

from cryptography import x509

from webhook.contract import constants
from webhook.contract.namespaces import NamespaceInfo
from webhook.engine.config import InjectorConfig
from webhook.ops.installed import Installed
from webhook.ops.outdated import Report
from webhook.pki import served_cert

Connect = Literal["auto", "direct", "port-forward"]
CONNECT_CHOICES: Final = ("auto", "direct", "port-forward")
DEFAULT_TIMEOUT: Final = 15.0
DEFAULT_MAX_NAMESPACES: Final = 10
# The whole run's budget, in request timeouts: a check not started by then is
# reported as not run rather than left to wait on a slow API server.
BUDGET_TIMEOUTS: Final = 20
# The pod scan for outdated sidecars, in request timeouts.
SCAN_TIMEOUTS: Final = 4
ALWAYS_EXCLUDED: Final = ("kube-system", "kube-public", "kube-node-lease")
MAX_NAMESPACES: Final = 20_000
_EPOCH: Final = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)


@dataclass(frozen=True)
class Options:
    """What to check and how far to go."""

    namespace: str | None = None
    configuration: str = "sidecar-injector"
    # The revision whose install the install checks look at (its
    # configuration is ``configuration``); the revision checks look at all.
    revision: str = constants.DEFAULT_REVISION
    connect: Connect = "auto"
    max_namespaces: int = DEFAULT_MAX_NAMESPACES
    timeout: float = DEFAULT_TIMEOUT
    in_cluster: bool = False

    @property
    def scan_seconds(self) -> float:
        """How long the pod scan for outdated sidecars may take in all."""
        return SCAN_TIMEOUTS * self.timeout

    @property
    def budget_seconds(self) -> float:
        """How long the whole run may take before the checks not yet started are given up."""
        return BUDGET_TIMEOUTS * self.timeout


# --- what the discovery steps find ---------------------------------------------------


@dataclass(frozen=True)
class ApiAnswer:
    """``GET /version``: the server's version, or why it did not answer."""

    version: str = ""
    error: str = ""


@dataclass(frozen=True)
class ServiceRef:
    """The one Service every webhook of the configuration calls."""

    namespace: str
    name: str
    port: int = 443

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def server_name(self) -> str:
        """The name the API server verifies the served certificate for."""
        return f"{self.name}.{self.namespace}.svc"


@dataclass(frozen=True)
class WebhookConfiguration:
    """The MutatingWebhookConfiguration and the Service its webhooks call.

    ``webhooks`` is filled whenever the object exists, even when its webhooks
    call a URL or several Services (``service`` is ``None`` then).
    """

    exists: bool = False
    error: str = ""
    webhooks: tuple[Mapping[str, Any], ...] = ()
    cert_manager: str = ""
    calls_url: str | None = None  # the first webhook that calls a URL, not a Service
    services: tuple[tuple[str, str, int], ...] = ()  # each distinct (namespace, name, port)
    service: ServiceRef | None = None


@dataclass(frozen=True)
class ServiceObject:
    """The webhook's Service as the API server has it (``None`` when it does not exist)."""

    obj: Mapping[str, Any] | None = None
    error: str = ""


@dataclass(frozen=True)
class Injector:
    """The Deployment behind the Service and the config it mounts.

    ``config`` is what the checks below assume: the parsed ConfigMap, or the
    built-in defaults when it cannot be read.
    """

    error: str = ""  # the Deployments (or the Service) could not be read
    deployment: Mapping[str, Any] | None = None
    config_map: str = ""  # the ConfigMap the Deployment passes as --config ("": none)
    config_key: str = ""
    config_map_error: str = ""
    config_text: str | None = None  # None: the ConfigMap or its key does not exist
    config_error: str = ""  # the config does not parse
    config: InjectorConfig = field(default_factory=InjectorConfig)

    @property
    def deployment_name(self) -> str:
        """The Deployment's name (the object must have one)."""
        if self.deployment is None:
            raise ValueError("no Deployment was found")
        return str(self.deployment["metadata"]["name"])


@dataclass(frozen=True)
class PolicyInstall:
    """Policy mode's objects (the policies named like the webhook configuration, a binding
    of each per entry of the revision), and how they compare with what ``sidecar-injector
    policy`` renders for the config they record."""

    exists: bool = False  # any of the objects
    error: str = ""
    missing: tuple[str, ...] = ()  # "MutatingAdmissionPolicyBinding sidecar-injector-rev-pod"
    config_error: str = ""  # the recorded config is missing or does not parse
    config: InjectorConfig | None = None
    revision: str = ""
    differences: tuple[str, ...] = ()  # objects that differ from the rendering, and where
    digest: str = ""  # the installed MutatingAdmissionPolicy's policy digest
    selectors: tuple[Mapping[str, Any], ...] = ()  # the bindings' namespaceSelectors


@dataclass(frozen=True)
class Endpoint:
    """An address (and port) behind the webhook's Service, and the pod it belongs to."""

    address: str
    port: int
    pod: str | None

    def __str__(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        where = f" (pod {self.pod})" if self.pod else ""
        return f"{host}:{self.port}{where}"


@dataclass(frozen=True)
class Endpoints:
    """The Service's port the webhooks call, and its endpoints there (ready, not ready)."""

    port_name: str | None = None  # None: the Service has no such port (or was not read)
    error: str = ""  # the EndpointSlices could not be read
    ready: tuple[Endpoint, ...] = ()
    unready: tuple[Endpoint, ...] = ()


@dataclass(frozen=True)
class BundleProblem:
    """A caBundle nothing can be verified with."""

    webhooks: str  # the webhooks using it, comma-separated
    reason: Literal["not-base64", "empty", "no-certificate"]
    detail: str = ""


@dataclass(frozen=True)
class Bundles:
    """Each distinct caBundle (PEM) and the webhooks using it, with its certificates."""

    problem: BundleProblem | None = None
    pems: tuple[tuple[bytes, str], ...] = ()  # (PEM, the webhooks using it)
    certificates: Mapping[str, tuple[x509.Certificate, ...]] = field(
        default_factory=lambda: MappingProxyType({})
    )


@dataclass(frozen=True)
class Dialled:
    """What one endpoint served, judged by each bundle (by the webhooks using it)."""

    endpoint: Endpoint
    via: str  # "direct" or "port-forward"
    verdicts: tuple[tuple[str, served_cert.Served], ...]


@dataclass(frozen=True)
class Namespaces:
    """The Namespace objects (labels, and the ``sidecar.mesh.io/`` annotations)."""

    by_name: Mapping[str, NamespaceInfo] = field(default_factory=lambda: MappingProxyType({}))
    error: str = ""
    partial: bool = False  # only the first MAX_NAMESPACES were read
    # Being deleted: they take no new pods, so no dry-run pod is tried there.
    terminating: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Reference:
    """What the first dry-run pod that came back injected says of the running injector."""

    version: str = ""
    digests_confirmed: bool | None = None  # None: no dry-run pod came back injected
    note: str = ""


@dataclass(frozen=True)
class DryRuns:
    """The dry-run pods: per namespace, ``""`` when injected, else what happened."""

    opt_in_label: bool = False  # nothing opted in: a pod opted in by label, in default
    outcomes: tuple[tuple[str, str], ...] = ()
    reference: Reference = Reference()


@dataclass(frozen=True)
class Revisions:
    """The installed revisions (what their selectors answer to) and each one's injector config.

    ``found``: the discovery ran and read them; ``notes``: revisions whose
    config could not be read (the built-in defaults stand in) or disagrees
    with their label.
    """

    installed: Installed = field(default_factory=Installed)
    configs: Mapping[str, InjectorConfig] = field(default_factory=lambda: MappingProxyType({}))
    notes: tuple[str, ...] = ()
    error: str = ""
    found: bool = False

    def values_of(self, revision: str) -> list[str]:
        """What ``revision`` answers to (its name and tags; only its name when not read)."""
        installed = self.installed.revisions.get(revision)
        return installed.values if installed is not None else [revision]

    def serving(self, value: str | None) -> str | None:
        """The installed revision a picked ``rev`` value (``picked``) goes to, if any."""
        if value is None:
            value = constants.DEFAULT_REVISION
        if not self.found:
            return value
        owner = self.installed.owner_of(value)
        return owner.name if owner is not None else None


@dataclass(frozen=True)
class PodScan:
    """The scan of the pods for outdated sidecars (``error``: not one page was read)."""

    report: Report = field(default_factory=Report)
    error: str = ""


@dataclass(frozen=True)
class LockedTemplate:
    """A workload whose pod template gives a locked setting another value than the one in force."""

    namespace: str
    kind: str
    name: str
    key: str
    value: str  # the template's annotation
    in_force: str  # what the namespace and the config decide
    source: str  # where that comes from

    def __str__(self) -> str:
        return f"{self.namespace}/{self.kind.lower()}/{self.name}"


@dataclass(frozen=True)
class Templates:
    """The pod templates of the workloads that would be injected, judged against the locks.

    ``error``: no list could be read; ``problems``: lists that could not be
    read, and namespaces whose own settings are invalid (no value in force to
    compare with); ``stopped``: why the scan ended early.
    """

    scanned: int = 0
    conflicts: tuple[LockedTemplate, ...] = ()
    more: int = 0  # conflicts found beyond those kept
    error: str = ""
    problems: tuple[str, ...] = ()
    stopped: str = ""


# --- the context ---------------------------------------------------------------------


@dataclass(frozen=True)
class Context:
    """Everything the checks read: the options, and each discovery step's output by name."""

    options: Options = Options()
    host: str = ""
    now: datetime.datetime = _EPOCH
    api: ApiAnswer = ApiAnswer()
    webhook: WebhookConfiguration = WebhookConfiguration()
    policy: PolicyInstall = PolicyInstall()
    service: ServiceObject = ServiceObject()
    injector: Injector = field(default_factory=Injector)
    endpoints: Endpoints = Endpoints()
    bundles: Bundles = field(default_factory=Bundles)
    served: tuple[Dialled, ...] = ()
    namespaces: Namespaces = field(default_factory=Namespaces)
    dry_runs: DryRuns = DryRuns()
    pods: PodScan = field(default_factory=PodScan)
    templates: Templates = Templates()
    revisions: Revisions = field(default_factory=Revisions)

    @property
    def excluded(self) -> list[str]:
        """Namespaces no webhook may select: the built-in ones, the injector's, the config's."""
        names = [*ALWAYS_EXCLUDED]
        if self.webhook.service is not None:
            names.append(self.webhook.service.namespace)
        names += self.injector.config.excluded_namespaces
        return list(dict.fromkeys(names))

    @property
    def opted_in(self) -> list[NamespaceInfo]:
        """The namespaces the checked revision serves (within ``--namespace``), by name:
        ``sidecar.mesh.io/rev`` one of its values, or (the default revision) no such
        label and ``sidecar-injection=enabled``."""
        values = self.revisions.values_of(self.options.revision)
        return [info for info in self.meshed if self._serving(info) in values]

    @property
    def meshed(self) -> list[NamespaceInfo]:
        """The namespaces some revision would serve (within ``--namespace``), by name."""
        excluded = set(self.excluded)
        wanted = self.options.namespace
        return sorted(
            (
                info
                for info in self.namespaces.by_name.values()
                if self._serving(info) is not None
                and info.name not in excluded
                and (wanted is None or info.name == wanted)
            ),
            key=lambda info: info.name,
        )

    @staticmethod
    def _serving(info: NamespaceInfo) -> str | None:
        """The rev value that picks this namespace's revision, if it is meshed at all."""
        labels = info.labels
        if labels.get(constants.NAMESPACE_INJECTION_LABEL) == constants.DISABLED:
            return None
        value = labels.get(constants.REVISION_LABEL)
        if value is not None:
            return value
        if labels.get(constants.NAMESPACE_INJECTION_LABEL) == constants.ENABLED:
            return constants.DEFAULT_REVISION
        return None

    @property
    def partial_note(self) -> list[str]:
        """A detail line when not every namespace was read."""
        if not self.namespaces.partial:
            return []
        return [f"only the first {MAX_NAMESPACES} namespaces were read (--namespace NS for others)"]
