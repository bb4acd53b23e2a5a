"""Containers the injector refuses to mesh, and the order of every refusal.

Reserved ports (a container declaring one the proxy listens on) and the proxy's
UID (an intercepted container running as it) as tables over ``inject``; then
one pod with several problems at once, to pin which refusal comes first.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

from tests import builders
from webhook.contract import constants
from webhook.contract.namespaces import NamespaceInfo
from webhook.engine import InjectionRefused, inject
from webhook.engine.config import InjectorConfig, ProxyConfig
from webhook.engine.refusals import intercepted
from webhook.manifests.patched import patched

P = "sidecar.mesh.io/"
ENABLED = builders.enabled_namespace("shop")
CONFIG = InjectorConfig()
CLASSIC = {P + "native-sidecar": "false"}


def pod(
    containers: list[dict[str, Any]] | None = None,
    *,
    init: list[dict[str, Any]] | None = None,
    annotations: dict[str, str] | None = None,
    labels: dict[str, str] | None = None,
    **spec: Any,
) -> dict[str, Any]:
    """:func:`tests.builders.pod` with these containers, spec fields, and metadata maps always
    present (the refusal order's fixes edit them in place)."""
    if init is not None:
        spec["initContainers"] = init
    return builders.pod(
        containers=containers or [container("app")],
        spec=spec,
        annotations=annotations or {},
        labels=labels or {},
    )


def container(name: str = "app", *ports: Any, **fields: Any) -> dict[str, Any]:
    found: dict[str, Any] = {"name": name, "image": name, **fields}
    if ports:
        found["ports"] = [p if isinstance(p, dict) else {"containerPort": p} for p in ports]
    return found


def refusal(obj: dict[str, Any], config: InjectorConfig = CONFIG) -> str | None:
    try:
        result = inject(obj, namespace=ENABLED, config=config)
    except InjectionRefused as err:
        return str(err)
    assert result.injected
    return None


# --- reserved ports ---------------------------------------------------------------------

MOVE = (
    ", which the proxy uses (it listens on 15000, 15001, 15006, 15021, 15090); move the"
    " container to another port, or opt the pod out with sidecar.mesh.io/inject=false"
)

# fmt: off
PORT_CASES: list[tuple[str, dict[str, Any], str | None]] = [
    ("app on 15090", pod([container("app", 8080, {"containerPort": 15090, "name": "http-envoy-prom"})]),
     f"Pod web: spec.containers[0] ('app') declares containerPort 15090{MOVE}"),
    ("second app container on 15001", pod([container("app", 8080), container("side", 15001)]),
     "Pod web: spec.containers[1] ('side') declares containerPort 15001"),
    ("15006", pod([container("app", 15006)]), "declares containerPort 15006"),
    ("15000", pod([container("app", 15000)]), "declares containerPort 15000"),
    ("15021", pod([container("app", 15021)]), "declares containerPort 15021"),
    ("explicit TCP", pod([container("app", {"containerPort": 15021, "protocol": "TCP"})]), "15021"),
    ("an init container, native mode", pod(init=[container("setup", 15000)]),
     "Pod web: spec.initContainers[0] ('setup') declares containerPort 15000"),
    ("an init container, classic mode", pod(init=[container("setup", 15000)], annotations=CLASSIC),
     "Pod web: spec.initContainers[0] ('setup') declares containerPort 15000"),
    ("a user sidecar", pod(init=[container("log", 15090, restartPolicy="Always")]), "spec.initContainers[0] ('log')"),
    # no clash
    ("ordinary ports", pod([container("app", 80, 8080, 15002, 15089, 14999)]), None),
    ("UDP on a proxy port", pod([container("app", {"containerPort": 15090, "protocol": "UDP"})]), None),
    ("SCTP on a proxy port", pod([container("app", {"containerPort": 15001, "protocol": "SCTP"})]), None),
    ("a host port only", pod([container("app", {"containerPort": 8080, "hostPort": 15001})]), None),
    ("not a number", pod([container("app", {"containerPort": "15090"}, {"containerPort": 15090.0}, {"containerPort": True})]), None),
    ("ports not a list", pod([container("app", ports=15090), container("side", ports={"containerPort": 15090}), container("x", ports="15090")]), None),
]
# fmt: on


@pytest.mark.parametrize(
    ("obj", "message"), [c[1:] for c in PORT_CASES], ids=[c[0] for c in PORT_CASES]
)
def test_a_container_declaring_a_port_the_proxy_uses_is_refused(
    obj: dict[str, Any], message: str | None
) -> None:
    found = refusal(obj)
    if message is None:
        assert found is None
    else:
        assert found is not None
        assert message in found, found


def test_every_proxy_port_is_reserved_and_they_come_from_one_constant() -> None:
    for port in constants.PROXY_PORTS:
        assert f"declares containerPort {port}," in (refusal(pod([container("app", port)])) or "")


def test_a_workload_template_is_named_by_its_path() -> None:
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "shop"},
        "spec": {"template": {"spec": {"containers": [container("app", 15090)]}}},
    }
    assert (refusal(deployment) or "").startswith(
        "Deployment shop/web: spec.template.spec.containers[0] ('app') declares containerPort 15090"
    )


# --- the proxy's UID ----------------------------------------------------------------------

ANOTHER_UID = (
    "the proxy's UID: mesh-init exempts that UID from redirection, so its traffic would bypass"
    " the proxy; run it as another UID (runAsUser in its securityContext), or opt the pod out"
    " with sidecar.mesh.io/inject=false"
)


def as_user(uid: Any) -> dict[str, Any]:
    return {"securityContext": {"runAsUser": uid}}


# fmt: off
UID_CASES: list[tuple[str, dict[str, Any], str | None]] = [
    ("the app's own runAsUser", pod([container("app", **as_user(1337))]),
     f"Pod web: spec.containers[0] ('app') runs as UID 1337 (spec.containers[0].securityContext.runAsUser), {ANOTHER_UID}"),
    ("the pod's runAsUser", pod(securityContext={"runAsUser": 1337}),
     "Pod web: spec.containers[0] ('app') runs as UID 1337 (the pod's spec.securityContext.runAsUser), the proxy's UID"),
    ("the pod's, for the second container", pod([container("app", **as_user(1000)), container("side")], securityContext={"runAsUser": 1337}),
     "spec.containers[1] ('side') runs as UID 1337 (the pod's spec.securityContext.runAsUser)"),
    ("the container's own overrides the pod's", pod([container("app", **as_user(1000))], securityContext={"runAsUser": 1337}), None),
    ("a null runAsUser falls back to the pod's", pod([container("app", **as_user(None))], securityContext={"runAsUser": 1337}), "(the pod's spec.securityContext.runAsUser)"),
    ("another UID", pod([container("app", **as_user(1338))]), None),
    ("no UID at all (the image decides)", pod(), None),
    ("root", pod(securityContext={"runAsUser": 0}), None),
    ("not a number", pod([container("app", **as_user("1337"))]), None),
    # init containers: intercepted in native mode, and sidecars in either mode
    ("an init container, native mode", pod(init=[container("setup", **as_user(1337))]),
     "Pod web: spec.initContainers[0] ('setup') runs as UID 1337 (spec.initContainers[0].securityContext.runAsUser)"),
    ("an init container, classic mode", pod(init=[container("setup", **as_user(1337))], annotations=CLASSIC), None),
    ("a user sidecar, classic mode", pod(init=[container("log", restartPolicy="Always", **as_user(1337))], annotations=CLASSIC),
     "spec.initContainers[0] ('log') runs as UID 1337"),
    ("native mode said by the pod", pod(init=[container("setup", **as_user(1337))], annotations={P + "native-sidecar": "true"}),
     "spec.initContainers[0] ('setup')"),
]
# fmt: on


@pytest.mark.parametrize(
    ("obj", "message"), [c[1:] for c in UID_CASES], ids=[c[0] for c in UID_CASES]
)
def test_an_intercepted_container_running_as_the_proxy_uid_is_refused(
    obj: dict[str, Any], message: str | None
) -> None:
    found = refusal(obj)
    if message is None:
        assert found is None
    else:
        assert found is not None
        assert message in found, found


def test_the_proxy_uid_is_the_configs() -> None:
    config = InjectorConfig(proxy=ProxyConfig(uid=2000))
    assert refusal(pod(securityContext={"runAsUser": 1337}), config) is None
    assert "runs as UID 2000" in (refusal(pod(securityContext={"runAsUser": 2000}), config) or "")


@pytest.mark.parametrize(
    ("field", "fields", "native", "expected"),
    [
        ("containers", {}, False, True),
        ("containers", {}, True, True),
        ("initContainers", {}, True, True),
        ("initContainers", {}, False, False),
        ("initContainers", {"restartPolicy": "Always"}, False, True),
        ("initContainers", {"restartPolicy": "OnFailure"}, False, False),
    ],
)
def test_which_containers_are_intercepted(
    field: str, fields: dict[str, Any], native: bool, expected: bool
) -> None:
    assert intercepted(field, {"name": "c", **fields}, native_sidecar=native) is expected


# --- mesh-init's own seccomp profile ------------------------------------------------------


@pytest.mark.parametrize("profile", ["Unconfined", "Localhost", None])
def test_mesh_init_has_its_own_runtime_default_profile_whatever_the_pod_sets(
    profile: str | None,
) -> None:
    context = {"seccompProfile": {"type": profile}} if profile else {}
    result = inject(pod(securityContext=context), namespace=ENABLED, config=CONFIG)
    init = patched(result)["spec"]["initContainers"][0]
    assert init["name"] == constants.INIT_CONTAINER
    assert init["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}


# --- the order of refusals ------------------------------------------------------------------

RESTRICTED = builders.enabled_namespace(
    "shop", **{"pod-security.kubernetes.io/enforce": "restricted"}
)
LOCKED = InjectorConfig(locked_settings=frozenset({"xds-address"}))


def everything_wrong() -> dict[str, Any]:
    """A pod with one of each problem; removing them one by one walks the order."""
    return pod(
        [
            container("app", 15090, **as_user(1337)),
            container("mesh-proxy"),
            {"image": "nameless"},
        ],
        annotations={P + "log-level": "loud", P + "xds-address": "attacker.example.com:443"},
    )


def without(obj: dict[str, Any], *fixes: str) -> dict[str, Any]:
    fixed = copy.deepcopy(obj)
    containers = fixed["spec"]["containers"]
    annotations = fixed["metadata"]["annotations"]
    for fix in fixes:
        if fix == "shape":
            containers.pop()
        elif fix == "settings":
            del annotations[P + "log-level"]
        elif fix == "locks":
            del annotations[P + "xds-address"]
        elif fix == "names":
            containers.pop(1)
        elif fix == "ports":
            del containers[0]["ports"]
    return fixed


# Each fix removes the refusal before it; the next one then speaks.
ORDER = [
    ((), RESTRICTED, "Pod web: namespace shop enforces Pod Security level 'restricted'"),
    ((), ENABLED, "Pod web: spec.containers[2] has no name"),
    (("shape",), ENABLED, "Pod web: pod annotation sidecar.mesh.io/log-level='loud' is invalid"),
    (("shape", "settings"), ENABLED, "Pod web: pod annotation sidecar.mesh.io/xds-address="),
    (("shape", "settings", "locks"), ENABLED, "Pod web: spec.containers[1] is named 'mesh-proxy'"),
    (("shape", "settings", "locks", "names"), ENABLED, "declares containerPort 15090"),
    (("shape", "settings", "locks", "names", "ports"), ENABLED, "runs as UID 1337"),
]


@pytest.mark.parametrize(("fixes", "namespace", "first"), ORDER)
def test_refusals_come_in_the_documented_order(
    fixes: tuple[str, ...], namespace: NamespaceInfo, first: str
) -> None:
    with pytest.raises(InjectionRefused) as refused:
        inject(without(everything_wrong(), *fixes), namespace=namespace, config=LOCKED)
    assert first in str(refused.value), str(refused.value)


@pytest.mark.parametrize(
    "skipped",
    [
        {"labels": {P + "inject": "false"}},
        {"spec": {"hostNetwork": True}},
    ],
)
def test_a_pod_that_would_not_be_injected_is_refused_for_none_of_them(
    skipped: dict[str, Any],
) -> None:
    obj = everything_wrong()
    obj["metadata"]["labels"].update(skipped.get("labels", {}))
    obj["spec"].update(skipped.get("spec", {}))
    result = inject(obj, namespace=RESTRICTED, config=LOCKED)
    assert not result.injected
