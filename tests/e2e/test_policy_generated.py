"""Generated pods and namespace settings, in both modes on a real API server (hypothesis).

Each example is a namespace (opt-in label, PodSecurity level, settings as
labels and annotations) and a pod (opt-in label and annotation, settings,
status annotations copied or not, container lists, host network, Windows),
values drawn from valid and invalid spellings of every setting and from
printable text. Both modes must store the same pod or refuse it alike
(tests/e2e/policy_modes.py). Deterministic and without a database: the same
examples every run; ``EXAMPLES`` per run (tests/profiles.py: 40 locally, 400 in CI).
"""

from __future__ import annotations

import re
import string
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.e2e.policy_modes import Case, Modes, modes
from tests.profiles import examples
from webhook.contract import constants
from webhook.engine.settings import SETTING_SPECS

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(3600)]
__all__ = ["modes"]  # the fixture

# A tenth locally (40), all of them in CI (HYPOTHESIS_PROFILE=ci): tests/profiles.py.
EXAMPLES = examples(400)
P = constants.PREFIX

_QUANTITIES = ["100m", "1", "0.5", "2Gi", "128Mi", "", "lots", "-1", "1e3", "8Ei", ".", "1e-999"]
_PORTS = ["", "80", "80,443", "8080, 9090", "70000", "80,,81", "http", "15001", "1,2,3"]
_CIDRS = ["", "10.0.0.0/8", "10.0.0.0/8,fd00::/8", "192.168.1.7", "10.0.0.1/8", "::ffff:1.2.3.4",
          "::1.2.3.4", "10.0.0.0/8, 10.0.0.0/08", "FD00:0::/8", "fd00::/129", "10.0.0.0/8,,"]  # fmt: skip
VALUES: dict[str, list[str]] = {
    "proxy-version": ["v1.40.0", "latest", "v1 beta", "", "-x", "a" * 130],
    "proxy-cpu-request": _QUANTITIES,
    "proxy-cpu-limit": _QUANTITIES,
    "proxy-memory-request": _QUANTITIES,
    "proxy-memory-limit": _QUANTITIES,
    "log-level": ["info", "DEBUG", "verbose", " warning ", ""],
    "include-inbound-ports": ["*", *_PORTS],
    "exclude-inbound-ports": _PORTS,
    "exclude-outbound-ports": _PORTS,
    "include-outbound-cidrs": ["*", *_CIDRS],
    "exclude-outbound-cidrs": _CIDRS,
    "native-sidecar": ["true", "false", "True", "yes"],
    "hold-application": ["true", "false", "FALSE", "1"],
    "xds-address": [
        "xds.mesh:15010",
        "10.0.0.1:15010",
        "[fd00::1]:15010",
        "on:15010",
        "xds",
        "xds:0",
        "",
        "1xds.svc:80",
    ],
}
assert set(VALUES) == {spec.name for spec in SETTING_SPECS}

_LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")
_printable = st.text(st.sampled_from(string.printable[:95]), max_size=12)
_names = st.from_regex(r"[a-z]([a-z0-9-]{0,6}[a-z0-9])?", fullmatch=True)


def _value(name: str) -> st.SearchStrategy[str]:
    return st.sampled_from(VALUES[name]) | _printable


def _as_label(value: str) -> str | None:
    value = value.replace(",", "_").replace(" ", "")
    return value if len(value) <= 63 and _LABEL_VALUE.fullmatch(value) else None


@st.composite
def _settings(draw: st.DrawFn, *, labels: bool) -> dict[str, str]:
    names = [spec.name for spec in SETTING_SPECS if spec.label_ok or not labels]
    chosen = draw(st.lists(st.sampled_from(names), max_size=4, unique=True))
    out = {}
    for name in chosen:
        value: str | None = draw(_value(name))
        if labels:
            value = _as_label(value or "")
        if value is not None:
            out[P + name] = value
    return out


@st.composite
def namespaces(draw: st.DrawFn) -> tuple[dict[str, str], dict[str, str]]:
    labels = draw(_settings(labels=True))
    opt_in = draw(st.sampled_from([None, "enabled", "enabled", "disabled", "yes"]))
    if opt_in:
        labels[constants.NAMESPACE_INJECTION_LABEL] = opt_in
    level = draw(st.sampled_from([None, None, None, "privileged", "baseline", "restricted"]))
    if level:
        labels["pod-security.kubernetes.io/enforce"] = level
        if draw(st.booleans()):
            labels["pod-security.kubernetes.io/enforce-version"] = "v1.30"
    return labels, draw(_settings(labels=False))


_STATUSES = [
    '{"version":"0.1.0","initContainers":["mesh-init","mesh-proxy"],"containers":[],'
    '"volumes":[],"annotations":[],"digest":"sha256:00"}',
    '{"version":"0","initContainers":["mesh-init"],"replaced":"x\\"y"}',
    "not json",
    "",
]


def _container(name: str, *, restricted: bool) -> dict[str, Any]:
    container: dict[str, Any] = {"name": name, "image": "registry.invalid/app:1"}
    if restricted:
        container["securityContext"] = {
            "runAsNonRoot": True,
            "runAsUser": 1000,
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        }
    return container


@st.composite
def pods(draw: st.DrawFn) -> dict[str, Any]:
    annotations = draw(_settings(labels=False))
    labels: dict[str, str] = {}
    for where in (labels, annotations):
        choice = draw(st.sampled_from([None, None, "true", "false", "no"]))
        if choice is not None:
            where[constants.INJECT_KEY] = choice
    status = draw(st.sampled_from([None, None, *_STATUSES]))
    if status is not None:
        annotations[constants.STATUS_ANNOTATION] = status
    if draw(st.booleans()):
        annotations[constants.DEFAULT_CONTAINER_ANNOTATION] = "app"
    restricted = draw(st.booleans())
    pool = _names | st.sampled_from(sorted(constants.INJECTED_NAMES))
    names = draw(st.lists(pool, min_size=1, max_size=5, unique=True))
    split = draw(st.integers(0, len(names) - 1))
    spec: dict[str, Any] = {
        "containers": [_container(n, restricted=restricted) for n in names[split:]],
    }
    if split:
        spec["initContainers"] = [_container(n, restricted=restricted) for n in names[:split]]
    extra = draw(st.sampled_from([None, None, None, "hostNetwork", "windows"]))
    if extra == "hostNetwork":
        spec["hostNetwork"] = True
    elif extra == "windows":
        spec["os"] = {"name": "windows"}
    meta: dict[str, Any] = {"name": "p", "annotations": annotations}
    if labels:
        meta["labels"] = labels
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec}


@settings(
    max_examples=EXAMPLES,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(namespace=namespaces(), pod=pods())
def test_generated_pods_and_namespaces_fare_alike_in_both_modes(
    modes: Modes, namespace: tuple[dict[str, str], dict[str, str]], pod: dict[str, Any]
) -> None:
    labels, annotations = namespace
    case = Case("generated", labels, annotations, pod)
    assert modes.representable(case), case
    modes.check(case)
