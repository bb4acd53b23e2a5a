"""The engine caches what it builds per distinct settings; the cache must never leak."""

from __future__ import annotations

import copy
from types import MappingProxyType
from typing import Any

import pytest

from webhook.config import InjectorConfig, ProxyConfig
from webhook.engine import InjectionRefused, inject
from webhook.preview import AssumedNamespace

POD: dict[str, Any] = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {"name": "web"},
    "spec": {"containers": [{"name": "web", "image": "nginx"}]},
}


def proxy_of(obj: dict[str, Any]) -> dict[str, Any]:
    spec = obj["spec"]
    return next(
        c for c in [*spec["initContainers"], *spec["containers"]] if c["name"] == "mesh-proxy"
    )


def namespace(**labels: str) -> AssumedNamespace:
    return AssumedNamespace("demo", MappingProxyType({"sidecar-injection": "enabled", **labels}))


def test_different_configs_give_different_containers() -> None:
    older = InjectorConfig(proxy=ProxyConfig(version="v1.39.0"))
    first = inject(POD, namespace=namespace(), config=InjectorConfig())
    second = inject(POD, namespace=namespace(), config=older)
    assert proxy_of(first.obj)["image"].endswith(":v1.40.0")
    assert proxy_of(second.obj)["image"].endswith(":v1.39.0")


def test_different_namespace_settings_give_different_containers() -> None:
    plain = inject(POD, namespace=namespace(), config=InjectorConfig())
    tuned = inject(
        POD, namespace=namespace(**{"sidecar.mesh.io/log-level": "debug"}), config=InjectorConfig()
    )
    assert "debug" not in proxy_of(plain.obj)["args"]
    assert "debug" in proxy_of(tuned.obj)["args"]
    assert plain.settings is not None
    assert tuned.settings is not None
    assert plain.settings.provenance["sidecar.mesh.io/log-level"].source != (
        tuned.settings.provenance["sidecar.mesh.io/log-level"].source
    )


def test_pods_with_the_same_settings_share_equal_containers_and_nothing_else() -> None:
    other = copy.deepcopy(POD)
    other["metadata"]["name"] = "api"
    other["spec"]["containers"][0]["name"] = "api"
    first = inject(POD, namespace=namespace(), config=InjectorConfig())
    second = inject(other, namespace=namespace(), config=InjectorConfig())
    assert proxy_of(first.obj) == proxy_of(second.obj)
    annotations = second.obj["metadata"]["annotations"]
    assert annotations["kubectl.kubernetes.io/default-container"] == "api"
    assert first.obj["metadata"]["annotations"]["kubectl.kubernetes.io/default-container"] == "web"


def test_an_invalid_setting_is_refused_every_time_not_only_the_first() -> None:
    bad = namespace(**{"sidecar.mesh.io/log-level": "loud"})
    for _ in range(2):
        with pytest.raises(InjectionRefused, match="log-level"):
            inject(POD, namespace=bad, config=InjectorConfig())
