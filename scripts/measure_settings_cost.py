"""What the settings limits buy: the engine's cost per pod for the worst accepted settings.

Run: ``.venv/bin/python scripts/measure_settings_cost.py [--rounds N]``

Every round clears the settings cache and the engine's container cache, so
each figure is a cold admission (the case a hostile client can force by
varying its settings on every request). Prints min / median / max over the
rounds for: resolving the settings, building each container, the whole
``inject`` of a one-container pod; the sizes of the results; and what refusing
an oversized value and an absurd quantity costs. Wall-clock on a shared
machine: read the minimum as the cost, the spread as the noise.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from types import MappingProxyType
from typing import Any

import orjson

from webhook.cluster.namespaces_file import NamespaceInfo
from webhook.engine import InjectionRefused, inject
from webhook.engine import inject as inject_module
from webhook.engine.config import InjectorConfig
from webhook.engine.iptables import mesh_init_container
from webhook.engine.proxy import mesh_proxy_container
from webhook.engine.settings import SETTINGS_CACHE, SettingsError, resolve_settings
from webhook.engine.values import MAX_CIDRS, MAX_PORTS

P = "sidecar.mesh.io/"


def worst_annotations() -> dict[str, str]:
    """Every list at its maximum, every item and scalar in its longest spelling."""
    ports = ",".join(str(65535 - i) for i in range(MAX_PORTS))

    def cidrs(kind: int) -> str:
        return ",".join(
            f"{0x1000 + kind:x}:{0x1000 + i:x}:2222:3333:4444:5555:6666:7777/128"
            for i in range(MAX_CIDRS)
        )

    host = ".".join(["a" * 63, "b" * 63, "c" * 63, "d" * 61])  # 253 characters
    return {
        P + "include-inbound-ports": ports,
        P + "exclude-inbound-ports": ports,
        P + "exclude-outbound-ports": ports,
        P + "exclude-outbound-cidrs": cidrs(1),
        P + "include-outbound-cidrs": cidrs(2),
        P + "xds-address": f"{host}:65535",
        P + "proxy-cpu-request": "0." + "0" * 250 + "1",
    }


def clear_caches() -> None:
    SETTINGS_CACHE.clear()
    built: Any = getattr(inject_module, "_built", None)
    if built is not None and hasattr(built, "cache_clear"):
        built.cache_clear()
    containers: Any = getattr(inject_module, "CACHE", None)  # the engine's bounded cache
    if containers is not None:
        containers.clear()


def timed(rounds: int, action: Callable[[], object]) -> tuple[float, float, float]:
    """(min, median, max) milliseconds of ``action`` with cold caches."""
    samples = []
    for _ in range(rounds):
        clear_caches()
        start = time.perf_counter()
        action()
        samples.append((time.perf_counter() - start) * 1000)
    return min(samples), statistics.median(samples), max(samples)


def refused(action: Callable[[], object]) -> Callable[[], object]:
    def run() -> object:
        try:
            action()
        except (SettingsError, InjectionRefused) as err:
            return err
        raise AssertionError("expected a refusal")

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=50)
    rounds = parser.parse_args().rounds

    config = InjectorConfig()
    annotations = worst_annotations()

    def resolve(pod: dict[str, str]) -> Any:
        return resolve_settings(
            config, namespace_labels={}, namespace_annotations={}, pod_annotations=pod
        )

    settings = resolve(annotations)
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "web", "annotations": annotations},
        "spec": {"containers": [{"name": "web", "image": "nginx"}]},
    }
    namespace = NamespaceInfo("demo", MappingProxyType({"sidecar-injection": "enabled"}))
    default_init = mesh_init_container(resolve({}), config)
    worst_init = mesh_init_container(settings, config)
    huge = ",".join(["10.0.0.0/8"] * 264_000)  # 2.9 MB: a hostile multi-megabyte list

    rows = [
        ("resolve worst settings", lambda: resolve(annotations)),
        ("mesh-init (worst)", lambda: mesh_init_container(settings, config)),
        ("mesh-proxy (worst)", lambda: mesh_proxy_container(settings, config)),
        ("inject() a pod, worst settings", lambda: inject(pod, namespace=namespace, config=config)),
        ("inject() a pod, default settings", lambda: inject(
            {**pod, "metadata": {"name": "web"}}, namespace=namespace, config=config)),
        (f"refuse a {len(huge) / 1e6:.1f} MB CIDR list", refused(
            lambda: resolve({P + "exclude-outbound-cidrs": huge}))),
        ("refuse proxy-cpu-request=9e2147483647", refused(
            lambda: resolve({P + "proxy-cpu-request": "9e2147483647"}))),
    ]  # fmt: skip
    print(f"cold-cache cost over {rounds} rounds, ms (min / median / max)")
    for label, action in rows:
        low, mid, high = timed(rounds, action)
        print(f"  {label:<40} {low:8.3f} {mid:8.3f} {high:8.3f}")
    print("sizes, bytes")
    print(f"  default mesh-init container, compact JSON  {len(orjson.dumps(default_init))}")
    print(f"  default mesh-init script                   {len(default_init['command'][2])}")
    print(f"  worst mesh-init container, compact JSON    {len(orjson.dumps(worst_init))}")
    print(f"  worst mesh-init script (the sh -c arg)     {len(worst_init['command'][2])}")
    print(f"  worst settings, raw annotation text        {sum(map(len, annotations.values()))}")


if __name__ == "__main__":
    main()
