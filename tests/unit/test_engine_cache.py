"""The engine caches what it builds per distinct settings; the cache must never leak or grow."""

from __future__ import annotations

import copy
import gc
import tracemalloc
from typing import Any

import pytest

from tests.builders import enabled_namespace
from webhook.cluster.namespaces_file import NamespaceInfo
from webhook.engine import InjectionRefused, inject
from webhook.engine.config import InjectorConfig, ProxyConfig
from webhook.engine.inject import CACHE
from webhook.engine.inject import _build as build_entry
from webhook.engine.inject import _built as built_for
from webhook.engine.settings import resolve_settings
from webhook.manifests.patched import patched

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


def test_different_configs_give_different_containers() -> None:
    older = InjectorConfig(proxy=ProxyConfig(version="v1.39.0"))
    first = inject(POD, namespace=enabled_namespace(), config=InjectorConfig())
    second = inject(POD, namespace=enabled_namespace(), config=older)
    assert proxy_of(patched(first))["image"].endswith(":v1.40.0")
    assert proxy_of(patched(second))["image"].endswith(":v1.39.0")


def test_different_namespace_settings_give_different_containers() -> None:
    plain = inject(POD, namespace=enabled_namespace(), config=InjectorConfig())
    tuned = inject(
        POD,
        namespace=enabled_namespace(**{"sidecar.mesh.io/log-level": "debug"}),
        config=InjectorConfig(),
    )
    assert "debug" not in proxy_of(patched(plain))["args"]
    assert "debug" in proxy_of(patched(tuned))["args"]
    assert plain.settings is not None
    assert tuned.settings is not None
    assert plain.settings.provenance["sidecar.mesh.io/log-level"].source != (
        tuned.settings.provenance["sidecar.mesh.io/log-level"].source
    )


def test_pods_with_the_same_settings_share_equal_containers_and_nothing_else() -> None:
    other = copy.deepcopy(POD)
    other["metadata"]["name"] = "api"
    other["spec"]["containers"][0]["name"] = "api"
    first = inject(POD, namespace=enabled_namespace(), config=InjectorConfig())
    second = inject(other, namespace=enabled_namespace(), config=InjectorConfig())
    first_obj, second_obj = patched(first), patched(second)
    assert proxy_of(first_obj) == proxy_of(second_obj)
    annotations = second_obj["metadata"]["annotations"]
    assert annotations["kubectl.kubernetes.io/default-container"] == "api"
    assert first_obj["metadata"]["annotations"]["kubectl.kubernetes.io/default-container"] == "web"


def test_an_invalid_setting_is_refused_every_time_not_only_the_first() -> None:
    bad = enabled_namespace(**{"sidecar.mesh.io/log-level": "loud"})
    for _ in range(2):
        with pytest.raises(InjectionRefused, match="log-level"):
            inject(POD, namespace=bad, config=InjectorConfig())


def test_mutating_a_result_cannot_change_the_next_one() -> None:
    first = inject(POD, namespace=enabled_namespace(), config=InjectorConfig())
    obj = patched(first)
    pristine = copy.deepcopy(obj)
    # A consumer edits the object it got, deep inside the injected containers ...
    proxy = proxy_of(obj)
    proxy["args"].append("--oops")
    proxy["env"][0]["name"] = "POISON"
    proxy["securityContext"]["runAsUser"] = 0
    obj["spec"]["initContainers"].clear()
    # ... and the containers in its patch (shared with every such pod) are read-only.
    shared = next(op["value"] for op in first.patch if op["path"] == "/spec/initContainers")
    with pytest.raises(TypeError, match="read-only"):
        shared[1]["args"].append("--oops")
    with pytest.raises(TypeError, match="read-only"):
        shared[1]["securityContext"]["runAsUser"] = 0

    second = inject(POD, namespace=enabled_namespace(), config=InjectorConfig())
    assert patched(second) == pristine
    assert second.patch == first.patch


def test_the_object_is_private_to_whoever_asks_and_copies_are_plain() -> None:
    result = inject(POD, namespace=enabled_namespace(), config=InjectorConfig())
    obj = patched(result)
    assert obj is not patched(result), "a new object for every caller"
    assert obj == patched(result)
    assert obj is not result.source
    proxy = proxy_of(obj)
    assert type(proxy) is dict
    assert type(proxy["args"]) is list
    value = next(op["value"] for op in result.patch if op["path"] == "/spec/initContainers")
    copied = copy.deepcopy(value)
    copied[0]["name"] = "changed"  # a deep copy is the consumer's own
    assert type(copied[0]) is dict
    assert value[0]["name"] == "mesh-init"


def settings_for(index: int) -> NamespaceInfo:
    """A namespace whose settings differ from every other index's (one cache entry each)."""
    return enabled_namespace(**{"sidecar.mesh.io/exclude-outbound-ports": str(1000 + index)})


@pytest.fixture
def small_cache() -> Any:
    """The engine's cache with its bounds lowered, restored afterwards."""
    cache = CACHE
    saved = (cache.max_entries, cache.max_bytes)
    cache.clear()
    yield cache
    cache.max_entries, cache.max_bytes = saved
    cache.clear()


def test_the_cache_is_bounded_in_entries(small_cache: Any) -> None:
    small_cache.max_entries = 3
    for index in range(10):
        inject(POD, namespace=settings_for(index), config=InjectorConfig())
    assert small_cache.entries == 3


def test_the_cache_is_bounded_in_bytes_and_an_oversized_entry_is_not_kept(
    small_cache: Any,
) -> None:
    inject(POD, namespace=settings_for(0), config=InjectorConfig())
    one = small_cache.bytes
    assert one > 1000, "an entry is counted by the size of its containers"
    small_cache.max_bytes = 3 * one + one // 2
    for index in range(10):
        inject(POD, namespace=settings_for(index), config=InjectorConfig())
    assert small_cache.entries == 3
    assert small_cache.bytes <= small_cache.max_bytes
    small_cache.max_bytes = one // 2
    small_cache.clear()
    result = inject(POD, namespace=settings_for(0), config=InjectorConfig())
    assert result.injected, "built and used, just not kept"
    assert small_cache.entries == 0
    assert small_cache.bytes == 0


def test_pods_with_the_same_settings_share_the_cached_containers(small_cache: Any) -> None:
    config = InjectorConfig()  # one per process, as serve has
    first = inject(POD, namespace=enabled_namespace(), config=config)
    second = inject(POD, namespace=enabled_namespace(), config=config)
    assert small_cache.entries == 1

    def values(result: Any) -> list[Any]:
        return [op["value"] for op in result.patch if op["path"] == "/spec/initContainers"]

    assert values(first)[0][1] is values(second)[0][1], "the very same (read-only) proxy"


@pytest.mark.parametrize(
    "annotations",
    [
        pytest.param({}, id="defaults"),
        pytest.param(
            {
                "sidecar.mesh.io/exclude-outbound-cidrs": ",".join(
                    f"10.{i // 250}.{i % 250}.0/24" for i in range(128)
                ),
                "sidecar.mesh.io/exclude-inbound-ports": ",".join(str(2000 + i) for i in range(64)),
            },
            id="long-lists",
        ),
    ],
)
def test_an_entry_is_charged_at_least_the_memory_it_keeps(annotations: dict[str, str]) -> None:
    settings = [
        resolve_settings(
            InjectorConfig(),
            namespace_labels={},
            namespace_annotations={},
            pod_annotations={**annotations, "sidecar.mesh.io/exclude-outbound-ports": str(n)},
        )
        for n in range(1000, 1020)
    ]
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        built = [build_entry(item, InjectorConfig()) for item in settings]
        gc.collect()
        kept = sum(
            stat.size_diff for stat in tracemalloc.take_snapshot().compare_to(before, "filename")
        )
    finally:
        tracemalloc.stop()
    assert kept / len(built) <= built[0].size


def test_a_config_reusing_a_dead_configs_id_gets_its_own_containers(small_cache: Any) -> None:
    # The cache keys configs by id(); ids are reused once an object is gone.
    older = InjectorConfig(proxy=ProxyConfig(version="v1.39.0"))
    newer = InjectorConfig()
    settings = resolve_settings(
        newer, namespace_labels={}, namespace_annotations={}, pod_annotations={}
    )
    stale = build_entry(settings, older)
    small_cache.put((settings, id(newer)), stale, size=stale.size)  # as if older had that id
    built = built_for(settings, newer)
    assert built.config is newer
    assert built.init_containers[1]["image"].endswith(":v1.40.0")
