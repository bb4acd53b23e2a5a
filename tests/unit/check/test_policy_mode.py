"""``check`` in policy mode: the policies found and rendered again, the checks around them,
and outdated pods told by the policy digest. (The whole command against a real API server
with the policies installed: tests/e2e/test_policy_check.py.)"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from types import MappingProxyType
from typing import Any

import pytest

from webhook import __version__
from webhook.contract import constants
from webhook.contract.namespaces import NamespaceInfo
from webhook.engine.config import InjectorConfig
from webhook.manifests.config_file import dump_config, parse_config
from webhook.ops.check import Options
from webhook.ops.check import context as c
from webhook.ops.check import install_checks as ic
from webhook.ops.check import namespace_checks as nc
from webhook.ops.check.discover_pods import POLICY_STALE, find_outdated
from webhook.ops.check.discover_policy import PLURALS, find_policy
from webhook.ops.check.policy_checks import admission_policies
from webhook.policy.render import CONFIG_ANNOTATION, DIGEST_ANNOTATION, render_policy

CONFIG = parse_config("proxy:\n  version: v1.39.0\nlockedSettings: [xds-address]\n")
API = "/apis/admissionregistration.k8s.io/v1"


class StubCluster:
    """What the discovery steps read: objects by path, and pods to list."""

    host = "https://api:6443"

    def __init__(self, objects: list[dict[str, Any]], pods: list[dict[str, Any]] = ()) -> None:  # type: ignore[assignment]
        self.objects = {
            f"{API}/{PLURALS[o['kind']]}/{o['metadata']['name']}": copy.deepcopy(o) for o in objects
        }
        self.pods = list(pods)

    def get(self, path: str, **_kw: Any) -> dict[str, Any] | None:
        return self.objects.get(path)

    def list(self, _path: str, **_kw: Any) -> Iterator[dict[str, Any]]:
        yield from self.pods


def installed(**changes: Any) -> c.PolicyInstall:
    return c.PolicyInstall(exists=True, config=CONFIG, revision="default", **changes)


def context(**fields: Any) -> c.Context:
    fields.setdefault("webhook", c.WebhookConfiguration())
    return c.Context(options=Options(), host="https://api:6443", **fields)


# --- the config the policies record -----------------------------------------------------


@pytest.mark.parametrize(
    "text",
    ["", "ipv6: false\n", "proxy:\n  resources:\n    cpuLimit: 2\n  xdsAddress: xds:1\n",
     "lockedSettings: [log-level, xds-address]\ninit:\n  resources:\n    cpuRequest: 5m\n"],
)  # fmt: skip
def test_a_dumped_config_reads_back_equal_and_with_the_same_provenance(text: str) -> None:
    config = parse_config(text)
    again = parse_config(dump_config(config))
    assert again == config
    assert again.from_file == config.from_file
    assert again.proxy.from_file == config.proxy.from_file
    assert again.proxy.resources.from_file == config.proxy.resources.from_file


# --- discovery ---------------------------------------------------------------------------


def test_the_policies_as_rendered_are_found_without_differences() -> None:
    objects = render_policy(CONFIG)
    found = find_policy(StubCluster(objects), context())  # type: ignore[arg-type]
    assert found.exists
    assert found.missing == ()
    assert found.differences == ()
    assert found.config == CONFIG
    assert found.digest == objects[0]["metadata"]["annotations"][DIGEST_ANNOTATION]
    assert len(found.selectors) == 8  # a binding of each policy per entry


def test_a_tagged_revision_s_policies_are_found_with_their_tags_and_no_differences() -> None:
    objects = render_policy(CONFIG, revision="canary", tags=["prod"])
    options = Options(configuration="sidecar-injector-canary", revision="canary")
    canary = c.Context(options=options, host="https://api:6443", webhook=c.WebhookConfiguration())
    found = find_policy(StubCluster(objects), canary)  # type: ignore[arg-type]
    assert (found.revision, found.missing, found.differences) == ("canary", (), ())
    assert len(found.selectors) == 4
    # Without its bindings (say, a binding named like the policy instead), each is missing.
    policies = [o for o in objects if "Binding" not in o["kind"]]
    found = find_policy(StubCluster(policies), canary)  # type: ignore[arg-type]
    assert "MutatingAdmissionPolicyBinding sidecar-injector-canary-rev-pod" in found.missing
    assert len(found.missing) == 4


def test_an_edited_policy_differs_where_it_was_edited() -> None:
    objects = render_policy(CONFIG)
    objects[0]["spec"]["variables"][3]["expression"] = "{}"
    objects[6]["spec"]["validationActions"] = ["Warn"]  # sidecar-injector-namespace
    found = find_policy(StubCluster(objects), context())  # type: ignore[arg-type]
    name = objects[0]["spec"]["variables"][3]["name"]
    assert found.differences == (
        f"MutatingAdmissionPolicy sidecar-injector: spec.variables[{name}].expression differs",
        "ValidatingAdmissionPolicyBinding sidecar-injector-namespace:"
        " spec.validationActions[0] differs",
    )
    outcome = admission_policies.run(context(policy=found))
    assert outcome.status == "fail"
    assert "another version rendered them, or they were edited" in outcome.message


def test_a_missing_binding_and_a_missing_config_are_failures() -> None:
    objects = render_policy(CONFIG)
    found = find_policy(StubCluster(objects[:-1]), context())  # type: ignore[arg-type]
    assert found.missing == ("ValidatingAdmissionPolicyBinding sidecar-injector-rev-namespace",)
    assert admission_policies.run(context(policy=found)).status == "fail"
    del objects[0]["metadata"]["annotations"][CONFIG_ANNOTATION]
    found = find_policy(StubCluster(objects), context())  # type: ignore[arg-type]
    assert found.config is None
    assert CONFIG_ANNOTATION in found.config_error
    assert ic.injector_config.run(context(policy=found)).status == "fail"


# --- the checks --------------------------------------------------------------------------


def test_policy_mode_passes_admission_policies_and_skips_the_webhook_configuration() -> None:
    found = installed()
    assert admission_policies.run(context(policy=found)).status == "pass"
    skipped = ic.webhook_configuration.run(context(policy=found))
    assert skipped.status == "skip"
    assert "policy mode" in skipped.message
    config = ic.injector_config.run(context(policy=found))
    assert config.status == "pass"
    assert CONFIG_ANNOTATION in config.message


def test_neither_mode_installed_fails_naming_both() -> None:
    outcome = admission_policies.run(context())
    assert outcome.status == "fail"
    assert "neither MutatingWebhookConfiguration" in outcome.message
    webhook = c.WebhookConfiguration(exists=True, webhooks=({"name": "x"},))
    assert admission_policies.run(context(webhook=webhook)).status == "pass"


def test_a_binding_that_selects_an_excluded_namespace_fails_excluded_namespaces() -> None:
    selector = {"matchExpressions": [{"key": "x", "operator": "DoesNotExist"}]}
    namespaces = c.Namespaces(
        MappingProxyType(
            {
                "kube-system": NamespaceInfo(
                    "kube-system", MappingProxyType({"kubernetes.io/metadata.name": "kube-system"})
                )
            }
        )
    )
    found = installed(selectors=(selector,))
    injector = c.Injector(config=InjectorConfig())
    outcome = nc.excluded_namespaces.run(
        context(policy=found, namespaces=namespaces, injector=injector)
    )
    assert outcome.status == "fail"
    assert "binding 1 of sidecar-injector selects kube-system" in outcome.message
    rendered = render_policy(InjectorConfig())
    good = installed(
        selectors=tuple(
            o["spec"]["matchResources"]["namespaceSelector"]
            for o in rendered
            if "Binding" in o["kind"]
        )
    )
    assert (
        nc.excluded_namespaces.run(
            context(policy=good, namespaces=namespaces, injector=injector)
        ).status
        == "pass"
    )


# --- outdated pods ------------------------------------------------------------------------


def _pod(name: str, digest: str) -> dict[str, Any]:
    status = {"version": __version__, "initContainers": ["mesh-init", "mesh-proxy"],
              "containers": [], "volumes": [], "annotations": [], "digest": digest}  # fmt: skip
    return {
        "metadata": {
            "name": name,
            "namespace": "shop",
            "annotations": {constants.STATUS_ANNOTATION: json.dumps(status)},
        }
    }


def test_pods_the_installed_policy_injected_are_current_and_others_outdated() -> None:
    digest = "sha256:" + "a" * 64
    pods = [_pod("current", digest), _pod("old", "sha256:" + "b" * 64)]
    shop = NamespaceInfo("shop", MappingProxyType({"sidecar-injection": "enabled"}))
    scan = find_outdated(
        StubCluster([], pods),  # type: ignore[arg-type]
        context(
            policy=installed(digest=digest),
            namespaces=c.Namespaces(MappingProxyType({"shop": shop})),
            dry_runs=c.DryRuns(reference=c.Reference(__version__, True)),
        ),
    )
    report = scan.report
    assert report.injected == 2
    assert report.outdated_pods == 1
    (entry,) = report.outdated.values()
    assert entry.sample == ["old"]
    assert list(entry.reasons) == [POLICY_STALE]
