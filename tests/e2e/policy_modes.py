"""Both injection modes against one real kube-apiserver, pod by pod.

What the policy-mode tests share (tests/e2e/test_policy_*.py):

* ``Api`` and ``Namespaces`` (tests/e2e/policy_api.py): HTTPS calls to
  kube-apiserver on one kept-alive connection (hundreds of dry runs; a kubectl
  process each would cost more than the API server's work), and namespaces
  made on demand per distinct set of labels and annotations;
* ``by_policy``: the pod dry-run created where the policy is bound;
* ``by_simulated_webhook``: the webhook's work without its process: the pod
  as the API server presents it to a webhook (a dry run where nothing
  mutates it), the engine's patch applied to it, that pod dry-run created;
* ``by_webhook``: a dry run where the installed webhook is called;
* ``Outcome`` and ``assert_same``: equal stored pods but for what the server
  makes up per request and the status annotation's digest; equal refusals
  (both refused with a 4xx, the same message once each mode's framing is
  taken off).
"""

from __future__ import annotations

import contextlib
import copy
import json
import re
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import pytest

from harness.kube.control_plane import ControlPlane
from harness.kube.install import CONFIGURATION, InstalledWebhook, installed_webhook
from tests.e2e.policy_api import MODE_LABEL, Api, ApiError, Namespaces
from webhook.contract import constants
from webhook.contract.namespaces import NamespaceInfo
from webhook.engine import InjectionRefused, inject
from webhook.engine.config import InjectorConfig
from webhook.manifests.config_file import load_config
from webhook.manifests.patched import patched
from webhook.manifests.revisions import DEFAULT_REVISION, NAME, entries, sees
from webhook.policy.render import render_policy

Object = dict[str, Any]

# --- outcomes --------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """What the API server did with a pod: stored it (``pod``) or refused it (``code``, ``message``)."""

    pod: Object | None = None
    code: int = 0
    message: str = ""

    @property
    def refused(self) -> bool:
        return self.pod is None


_POLICY_DENIAL = re.compile(
    r"^.*?(?:ValidatingAdmissionPolicy '[^']*' with binding '[^']*' denied request: )(.*)$", re.S
)
_WEBHOOK_DENIAL = re.compile(r'^admission webhook "[^"]*" denied the request: (.*)$', re.S)
# The engine's refusals start with the object ("Pod demo/web: ..."); the policy's do not.
_ENGINE_SUBJECT = re.compile(
    r"^(?:Pod|Deployment|StatefulSet|DaemonSet|ReplicaSet|Job|CronJob) [^ :]*: "
)


def _refusal(status: int, answer: Object) -> Outcome:
    message = str((answer or {}).get("message", answer))
    code = int((answer or {}).get("code", status))
    return Outcome(code=code, message=message)


def _stored(status: int, answer: Object) -> Outcome:
    if status >= 300:
        return _refusal(status, answer)
    return Outcome(pod=answer)


def by_policy(api: Api, namespace: str, pod: Object) -> Outcome:
    """The pod dry-run created in a namespace the policy is bound to."""
    return _stored(*api.dry_run_pod(namespace, pod))


def by_webhook(api: Api, namespace: str, pod: Object) -> Outcome:
    """The pod dry-run created in a namespace the installed webhook serves."""
    return _stored(*api.dry_run_pod(namespace, pod))


_SERVER_SET: Final = ("uid", "resourceVersion", "creationTimestamp", "managedFields", "namespace")


def presented(api: Api, plain_namespace: str, pod: Object) -> Object | Outcome:
    """The pod as the API server hands it to a webhook: defaulted, with its service account
    admitted (a dry run where nothing mutates it), or the refusal it got."""
    status, seen = api.plain_dry_run_pod(plain_namespace, pod)
    if status >= 300:
        return _refusal(status, seen)
    for key in _SERVER_SET:
        seen["metadata"].pop(key, None)
    seen.pop("status", None)
    if pod.get("metadata", {}).get("generateName"):
        seen["metadata"].pop("name", None)
    return seen


def by_simulated_webhook(
    api: Api,
    plain_namespace: str,
    namespace: NamespaceInfo,
    pod: Object,
    config: InjectorConfig,
    *,
    stored_in: str,
    revision: str = DEFAULT_REVISION,
) -> Outcome:
    """What the webhook makes of ``pod`` in ``namespace``, stored by the API server.

    The pod is shown to the engine as the API server would show it to a
    webhook (``presented``); the patched pod is then dry-run created in
    ``stored_in``, a namespace with the same PodSecurity labels (so
    PodSecurity judges it there) that no policy or webhook mutates. A pod
    that ``revision``'s webhooks do not select (their selectors and
    matchConditions, ``webhook.manifests.revisions``) never reaches it: a
    ``rev`` label that picks another revision, say.
    """
    seen = presented(api, plain_namespace, pod)
    if isinstance(seen, Outcome):
        return seen
    hooks = entries(revision, (), config.excluded_namespaces)
    if not any(sees(hook, pod, dict(namespace.labels)) for hook in hooks):
        return _stored(*api.dry_run_pod(stored_in, pod))
    try:
        result = inject(seen, namespace=namespace, config=config)
    except InjectionRefused as err:
        # The webhook answers a refusal with code 400 and this message.
        return Outcome(code=400, message=str(err))
    return _stored(*api.dry_run_pod(stored_in, patched(result)))


_TOKEN_VOLUME = re.compile(r"kube-api-access-[a-z0-9]{5}")


def normalised(pod: Object) -> Object:
    """What must be equal: the pod without what the server makes up per request, and the
    status annotation without its digest (policy mode: a digest of the policy)."""
    pod = json.loads(_TOKEN_VOLUME.sub("kube-api-access-x", json.dumps(pod)))
    meta = pod["metadata"]
    for key in (*_SERVER_SET, "name"):
        meta.pop(key, None)
    pod.pop("status", None)
    annotations = meta.get("annotations") or {}
    if constants.STATUS_ANNOTATION in annotations:
        with contextlib.suppress(ValueError):
            status = json.loads(annotations[constants.STATUS_ANNOTATION])
            if isinstance(status, dict):
                status.pop("digest", None)
                annotations[constants.STATUS_ANNOTATION] = status
    return pod


def _pod_security_first(webhook: Outcome, policy: Outcome) -> bool:
    return (
        webhook.refused
        and policy.refused
        and "Pod Security level" in webhook.message
        and "violates PodSecurity" in policy.message
    )


def refusal_text(message: str) -> str:
    """A refusal's own words, without the framing of the mode that sent it."""
    for pattern in (_POLICY_DENIAL, _WEBHOOK_DENIAL):
        found = pattern.match(message)
        if found:
            message = found.group(1)
            break
    return _ENGINE_SUBJECT.sub("", message)


def assert_same(by_webhook: Outcome, by_policy: Outcome, *, what: str) -> None:
    """Both stored the same pod, or both refused it (4xx) with the same message.

    (``Modes.check`` allows for the one difference in the API server's order.)
    """
    if by_webhook.refused or by_policy.refused:
        assert by_webhook.refused, f"{what}: policy refused ({by_policy.message}), webhook did not"
        assert by_policy.refused, f"{what}: webhook refused ({by_webhook.message}), policy did not"
        assert 400 <= by_webhook.code < 500, (what, by_webhook)
        assert 400 <= by_policy.code < 500, (what, by_policy)
        assert refusal_text(by_policy.message) == refusal_text(by_webhook.message), (
            what,
            by_webhook.message,
            by_policy.message,
        )
        return
    assert by_webhook.pod is not None
    assert by_policy.pod is not None
    assert normalised(by_policy.pod) == normalised(by_webhook.pod), what


def pod_with(
    *,
    labels: Mapping[str, str] | None = None,
    annotations: Mapping[str, str] | None = None,
    spec: Mapping[str, Any] | None = None,
    name: str = "p",
) -> Object:
    """A small pod (one app container) with these labels, annotations and spec fields."""
    meta: Object = {"name": name}
    if labels:
        meta["labels"] = dict(labels)
    if annotations:
        meta["annotations"] = dict(annotations)
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": meta,
        "spec": {
            "containers": [{"name": "app", "image": "registry.invalid/app:1"}],
            **copy.deepcopy(dict(spec or {})),
        },
    }


def wait_until(predicate: Any, *, what: str, timeout: float = 60.0) -> None:
    """Poll ``predicate`` until it holds (the policy objects take a moment to be served)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


# --- the two modes side by side --------------------------------------------------------

# The config both modes run with: the install's own (the real webhook mounts it).
INSTALL_CONFIG: Final = Path(__file__).resolve().parents[2] / "manifests/base/injector-config.yaml"
_IMAGE: Final = "registry.invalid/app:1"
_POD_SECURITY: Final = "pod-security.kubernetes.io/"


@dataclass(frozen=True)
class Case:
    """One pod in one namespace: what both modes are given."""

    what: str
    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    pod: Object
    namespace: str | None = None  # a name the case needs (the excluded ones), else made up
    config: InjectorConfig | None = None  # the case's own config (None: the install's)


def with_images(pod: Object) -> Object:
    """``pod`` with an image on every container that has none (tables leave them out)."""
    pod = copy.deepcopy(pod)
    spec = pod.get("spec")
    if isinstance(spec, dict):
        for field in ("containers", "initContainers"):
            items = spec.get(field)
            if isinstance(items, list):
                for item in items:
                    if isinstance(item, dict) and "image" not in item:
                        item["image"] = _IMAGE
    return pod


def _renamed(objects: list[Object], suffix: str | None) -> list[Object]:
    """The policies and bindings under names with ``suffix`` (the policy's name first)."""
    if suffix is None:
        return objects
    for obj in objects:
        name = obj["metadata"]["name"]
        obj["metadata"]["name"] = (
            f"{name}-{suffix}" if name == NAME else name.replace(NAME, f"{NAME}-{suffix}", 1)
        )
        if "policyName" in obj["spec"]:
            obj["spec"]["policyName"] = f"{NAME}-{suffix}"
    return objects


class Modes:
    """The policy for one config, bound where ``MODE_LABEL`` is ``self.mode``; the engine's
    answers for the same config beside it. ``for_config`` gives (and installs, once)
    the pair for another config, as another revision of the policy."""

    def __init__(
        self,
        control_plane: ControlPlane,
        config: InjectorConfig,
        *,
        revision: str | None = None,
        shared: Modes | None = None,
    ) -> None:
        self.control_plane = control_plane
        self.config = config
        self.mode = f"policy-{revision}" if revision else "policy"
        self.api = shared.api if shared else Api(control_plane)
        self.namespaces = shared.namespaces if shared else Namespaces(self.api, control_plane)
        self._others: dict[InjectorConfig, Modes] = {}
        self._root = shared
        # Every config is installed as the default revision (so its bindings
        # select what the default revision's do, and its pods record no
        # revision, as the simulated webhook's), each under names of its own.
        self.revision = DEFAULT_REVISION
        self.objects = _renamed(render_policy(config), revision)
        for obj in self.objects:
            if obj["kind"].endswith("Binding"):
                selector = obj["spec"]["matchResources"]["namespaceSelector"]
                selector["matchExpressions"].append(
                    {"key": MODE_LABEL, "operator": "In", "values": [self.mode]}
                )

    def install(self) -> Modes:
        for obj in self.objects:
            self.api.apply(obj)
        probe = self.namespaces.get(
            {constants.NAMESPACE_INJECTION_LABEL: "enabled"}, {}, mode=self.mode
        )

        def injected() -> bool:
            outcome = by_policy(self.api, probe, pod_with(name="probe"))
            annotations = (outcome.pod or {}).get("metadata", {}).get("annotations") or {}
            return constants.STATUS_ANNOTATION in annotations

        def refusing() -> bool:
            bad = pod_with(name="probe", annotations={constants.PREFIX + "log-level": "probe"})
            return by_policy(self.api, probe, bad).refused

        # The two policies are served independently: wait for both.
        wait_until(injected, what="the mutating policy to inject")
        wait_until(refusing, what="the validating policy to refuse")
        return self

    def for_config(self, config: InjectorConfig | None) -> Modes:
        """The pair for ``config`` (this one when equal to its own)."""
        root = self._root or self
        if config is None or config == root.config:
            return root
        found = root._others.get(config)
        if found is None:
            revision = f"c{len(root._others) + 1}"
            found = Modes(self.control_plane, config, revision=revision, shared=root).install()
            root._others[config] = found
        return found

    def close(self) -> None:
        try:
            self.namespaces.delete_all()
            for other in self._others.values():
                for obj in reversed(other.objects):
                    self.api.delete(obj)
            for obj in reversed(self.objects):
                self.api.delete(obj)
        finally:
            self.api.close()

    @property
    def plain(self) -> str:
        """A namespace where nothing mutates pods: how a webhook is shown them."""
        return self.namespaces.get(
            {constants.NAMESPACE_INJECTION_LABEL: "disabled"}, {}, mode="plain"
        )

    def namespace_info(self, name: str) -> NamespaceInfo:
        """The namespace as the API server has it (what the webhook's cache would hold)."""
        status, answer = self.api.call("GET", f"/api/v1/namespaces/{name}")
        assert status == 200, answer
        meta = answer["metadata"]
        return NamespaceInfo(name, meta.get("labels") or {}, meta.get("annotations") or {})

    def namespace(self, case: Case, *, mode: str) -> str:
        return self.namespaces.get(case.labels, case.annotations, mode=mode, name=case.namespace)

    def judged_like(self, case: Case) -> str:
        """A namespace where nothing mutates pods and PodSecurity judges them as in the case's:
        the same ``pod-security.kubernetes.io/`` labels (the only ones an admission plugin
        reads here), so cases that differ in anything else share it."""
        if case.namespace is not None:
            return case.namespace
        judged = {k: v for k, v in case.labels.items() if k.startswith(_POD_SECURITY)}
        return self.namespaces.get(judged, {}, mode="sim")

    def by_policy(self, case: Case) -> Outcome:
        return by_policy(self.api, self.namespace(case, mode=self.mode), case.pod)

    def by_simulated_webhook(self, case: Case) -> Outcome:
        # The policy's namespace names the webhook's too: messages carry the name.
        info = self.namespace_info(self.namespace(case, mode=self.mode))
        stored_in = self.judged_like(case)
        return by_simulated_webhook(
            self.api, self.plain, info, case.pod, self.config, stored_in=stored_in,
            revision=self.revision,
        )  # fmt: skip

    def by_webhook(self, case: Case) -> Outcome:
        """Through the installed webhook (``webhook_namespaces`` must have made it see them)."""
        return by_webhook(self.api, self.namespace(case, mode="webhook"), case.pod)

    def check(self, case: Case, *, real_webhook: bool = False) -> None:
        """Both modes store the same pod, or refuse it alike (``assert_same``), with the
        case's config (``for_config``).

        A pod the API server refuses by itself (where nothing injects) is
        refused in both modes, but which refusal the client reads first may
        differ: a webhook answers before the API server validates the object,
        a ValidatingAdmissionPolicy after. Both must refuse it, with a 4xx.
        """
        if case.config is not None and case.config != self.config:
            self.for_config(case.config).check(case, real_webhook=real_webhook)
            return
        policy = self.by_policy(case)
        webhook = self.by_webhook(case) if real_webhook else self.by_simulated_webhook(case)
        if _pod_security_first(webhook, policy):
            # PodSecurity validates before any ValidatingAdmissionPolicy, so a pod
            # that breaks the namespace's level by itself is refused by PodSecurity
            # in policy mode, where the webhook refuses first naming the mesh. The
            # policy must have left it uninjected: PodSecurity says of it exactly
            # what it says of the pod as written, where nothing injects.
            as_written = by_policy(self.api, self.judged_like(case), case.pod)
            assert refusal_text(as_written.message) == refusal_text(policy.message), (
                case.what,
                as_written,
                policy,
            )
            return
        alone = _stored(*self.api.plain_dry_run_pod(self.plain, case.pod))
        if alone.refused:
            assert policy.refused, (case.what, policy)
            assert webhook.refused, (case.what, webhook)
            assert 400 <= policy.code < 500, (case.what, policy)
            assert 400 <= webhook.code < 500, (case.what, webhook)
            return
        assert_same(webhook, policy, what=case.what)

    def representable(self, case: Case) -> bool:
        """Whether the case's namespace can exist (label values, annotation sizes) as given."""
        try:
            self.namespace(case, mode=self.for_config(case.config).mode)
        except ApiError as err:
            if "is invalid" not in str(err) and "too large" not in str(err):
                raise
            return False
        return True


@pytest.fixture(scope="module")
def modes(control_plane: ControlPlane) -> Iterator[Modes]:
    """The policy installed (the install's config) for this module's tests."""
    both = Modes(control_plane, load_config(INSTALL_CONFIG))
    try:
        yield both.install()
    finally:
        both.close()


@pytest.fixture(scope="module")
def real_webhook(control_plane: ControlPlane, modes: Modes) -> Iterator[InstalledWebhook]:
    """The installed webhook, kept to the namespaces made for it (the policy's are others)."""
    with installed_webhook(control_plane) as install:
        status, current = modes.api.call(
            "GET",
            f"/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/{CONFIGURATION}",
        )
        assert status == 200, current
        patch = [
            {
                "op": "add",
                "path": f"/webhooks/{index}/namespaceSelector/matchExpressions/-",
                "value": {"key": MODE_LABEL, "operator": "In", "values": ["webhook"]},
            }
            for index in range(len(current["webhooks"]))
        ]
        status, answer = modes.api.call(
            "PATCH",
            f"/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/{CONFIGURATION}",
            patch,
            content_type="application/json-patch+json",
        )
        assert status == 200, answer
        probe = modes.namespaces.get(
            {constants.NAMESPACE_INJECTION_LABEL: "enabled"}, {}, mode="webhook"
        )

        def injected() -> bool:
            outcome = by_webhook(modes.api, probe, pod_with(name="probe"))
            annotations = (outcome.pod or {}).get("metadata", {}).get("annotations") or {}
            return constants.STATUS_ANNOTATION in annotations

        wait_until(injected, what="the webhook to inject")
        yield install
