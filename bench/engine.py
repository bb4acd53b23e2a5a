"""Engine cost per pod, as ``/mutate`` pays it, and the size of what it makes.

Every pod creation in an opted-in namespace waits for the engine, so the
figure that matters is the median per-pod cost on pods of different shapes:
an injector that diffed pods would grow quadratically with them (Istio's
worst latency bugs); one that writes the patch from its additions does not.
The size of the injected pod matters too: every watcher of every meshed pod
receives it again on each status update.

Method: ``time.perf_counter_ns`` around each call, warm-up first, the garbage
collector disabled while timing (and run between rounds), and the cases
interleaved round by round so a slow phase of the machine hits every case
alike. Medians are quoted.
"""

from __future__ import annotations

import base64
import gc
import statistics
import time
from collections.abc import Callable
from typing import Any

import jsonpatch
import orjson

from bench import workload
from webhook.cluster.namespaces_file import NamespaceInfo
from webhook.engine import inject
from webhook.engine.config import InjectorConfig

NAMESPACE = NamespaceInfo(workload.NAMESPACE, workload.NAMESPACE_LABELS)


def mutate_once(obj: dict[str, Any], config: InjectorConfig) -> bytes:
    """What ``/mutate`` does per pod after parsing: inject, then the base64 JSON patch."""
    result = inject(obj, namespace=NAMESPACE, config=config)
    if not result.patch:  # a skipped pod would make a meaningless (fast) figure
        raise AssertionError(f"benchmark pod was not injected: {result.decision.reason}")
    return base64.b64encode(orjson.dumps(result.patch))


def injected_bytes(obj: dict[str, Any], config: InjectorConfig) -> int:
    """Size of the injected pod as compact JSON: ``obj`` with the patch ``/mutate`` returns."""
    patch = inject(obj, namespace=NAMESPACE, config=config).patch
    return len(orjson.dumps(jsonpatch.apply_patch(obj, list(patch))))


def _time(
    subjects: dict[str, Callable[[], object]], *, rounds: int, per_round: int, warmup: int
) -> dict[str, list[int]]:
    for call in subjects.values():
        for _ in range(warmup):
            call()
    samples: dict[str, list[int]] = {label: [] for label in subjects}
    clock = time.perf_counter_ns
    try:
        for _ in range(rounds):
            for label, call in subjects.items():
                out = samples[label]
                gc.collect()
                gc.disable()
                for _ in range(per_round):
                    start = clock()
                    call()
                    out.append(clock() - start)
                gc.enable()
    finally:
        gc.enable()
    return samples


def run(*, rounds: int, per_round: int, warmup: int) -> dict[str, Any]:
    """Every case of ``workload.CASES``, with and without the parse; plain data for the report."""
    config = InjectorConfig()
    subjects: dict[str, Callable[[], object]] = {}
    for label, shape in workload.CASES.items():
        obj = workload.pod(**shape)
        body = workload.review(obj)
        subjects[label] = lambda obj=obj: mutate_once(obj, config)  # type: ignore[misc]
        subjects[f"{label} +parse"] = lambda body=body: mutate_once(  # type: ignore[misc]
            orjson.loads(body)["request"]["object"], config
        )
    samples = _time(subjects, rounds=rounds, per_round=per_round, warmup=warmup)
    cases = []
    for label, found in samples.items():
        deciles = statistics.quantiles(found, n=10)
        cases.append(
            {
                "label": label,
                "n": len(found),
                "median_us": statistics.median(found) / 1000,
                "p10_us": deciles[0] / 1000,
                "p90_us": deciles[-1] / 1000,
            }
        )
    plain = workload.one_container_pod()
    return {
        "cases": cases,
        "method": {"rounds": rounds, "per_round": per_round, "warmup": warmup},
        "pod_bytes": {
            "one_container": len(orjson.dumps(plain)),
            "one_container_injected": injected_bytes(plain, config),
            "typical": len(orjson.dumps(workload.pod())),
            "typical_injected": injected_bytes(workload.pod(), config),
        },
    }


def print_table(results: dict[str, Any]) -> None:
    """The figures on stdout, for someone running the bench by hand."""
    print(f"{'case':<34}{'n':>7}{'median us':>12}{'p10 us':>10}{'p90 us':>10}")
    for row in results["cases"]:
        print(
            f"{row['label']:<34}{row['n']:>7}{row['median_us']:>12.1f}"
            f"{row['p10_us']:>10.1f}{row['p90_us']:>10.1f}"
        )
    for name, size in results["pod_bytes"].items():
        print(f"{name:<34}{size:>7} bytes")
