"""Engine cost per pod: decide + build + patch + serialise, as ``/mutate`` pays it.

Every pod creation in an opted-in namespace waits for this, so the figure
that matters is the median per-pod cost, and how it grows with pod size: an
injector that diffs pods grows quadratically (Istio's worst latency bugs),
one that writes the patch from its additions should grow at most linearly.

Method: ``time.perf_counter_ns`` around each call, warm-up first, the garbage
collector disabled while timing (and run between rounds, so its pauses are
neither counted nor accumulated), and the cases interleaved round by round so
a slow phase of the machine hits every case alike. Medians are quoted.
"""

from __future__ import annotations

import base64
import gc
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from bench import workload
from webhook.config import InjectorConfig
from webhook.engine import inject
from webhook.preview import AssumedNamespace

NAMESPACE = AssumedNamespace(workload.NAMESPACE, workload.NAMESPACE_LABELS)


def mutate_once(obj: dict[str, Any], config: InjectorConfig) -> bytes:
    """What ``/mutate`` does per pod after parsing: inject, then the base64 JSON patch."""
    result = inject(obj, namespace=NAMESPACE, config=config)
    if not result.patch:  # a skipped pod would make a meaningless (fast) figure
        raise AssertionError(f"benchmark pod was not injected: {result.decision.reason}")
    return base64.b64encode(orjson.dumps(result.patch))


def parse_and_mutate_once(body: bytes, config: InjectorConfig) -> bytes:
    """The same with the AdmissionReview parse in front, which grows with the body."""
    obj = orjson.loads(body)["request"]["object"]
    return mutate_once(obj, config)


@dataclass(frozen=True, slots=True)
class Subject:
    """One thing to time: a label, the pod's size along the swept axis, the call."""

    label: str
    size: int
    call: Callable[[], object]


@dataclass(frozen=True, slots=True)
class Timing:
    """Per-call samples (ns) of one subject, and their summary in microseconds."""

    label: str
    size: int
    samples: tuple[int, ...]

    @property
    def median_us(self) -> float:
        return statistics.median(self.samples) / 1000

    def percentile_us(self, q: float) -> float:
        return float(np.percentile(self.samples, q)) / 1000

    def as_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "size": self.size,
            "n": len(self.samples),
            "median_us": self.median_us,
            "p10_us": self.percentile_us(10),
            "p90_us": self.percentile_us(90),
            "min_us": min(self.samples) / 1000,
        }


def time_subjects(
    subjects: Sequence[Subject], *, rounds: int, per_round: int, warmup: int
) -> list[Timing]:
    """Time every subject ``per_round`` times per round, subjects alternated each round."""
    for subject in subjects:
        for _ in range(warmup):
            subject.call()
    samples: list[list[int]] = [[] for _ in subjects]
    clock = time.perf_counter_ns
    was_enabled = gc.isenabled()
    try:
        for _ in range(rounds):
            for index, subject in enumerate(subjects):
                call, out = subject.call, samples[index]
                gc.collect()
                gc.disable()
                for _ in range(per_round):
                    start = clock()
                    call()
                    out.append(clock() - start)
                gc.enable()
    finally:
        if was_enabled:
            gc.enable()
    return [
        Timing(subject.label, subject.size, tuple(found))
        for subject, found in zip(subjects, samples, strict=True)
    ]


@dataclass(frozen=True, slots=True)
class Fit:
    """Least-squares line through (size, median us): cost = intercept + slope * size."""

    slope_us: float
    intercept_us: float
    r2: float

    def as_dict(self) -> dict[str, float]:
        return {"slope_us": self.slope_us, "intercept_us": self.intercept_us, "r2": self.r2}


def fit_line(sizes: Sequence[float], values: Sequence[float]) -> Fit:
    """Ordinary least squares; R^2 says how much of the variation the line explains."""
    x, y = np.asarray(sizes, dtype=float), np.asarray(values, dtype=float)
    slope, intercept = np.polyfit(x, y, 1)
    residual = float(np.sum((y - (slope * x + intercept)) ** 2))
    total = float(np.sum((y - y.mean()) ** 2))
    r2 = 1.0 - residual / total if total > 0 else 1.0
    return Fit(float(slope), float(intercept), r2)


def _pair(label: str, size: int, obj: dict[str, Any], config: InjectorConfig) -> list[Subject]:
    body = workload.review(obj)
    return [
        Subject(label, size, lambda: mutate_once(obj, config)),
        Subject(f"{label} +parse", size, lambda: parse_and_mutate_once(body, config)),
    ]


def run(
    *,
    env_sizes: Sequence[int],
    container_sizes: Sequence[int],
    rounds: int,
    per_round: int,
    warmup: int,
) -> dict[str, Any]:
    """The named cases and both sweeps; returns plain data for the report."""
    config = InjectorConfig()
    cases: list[Subject] = []
    for label, shape in workload.CASES.items():
        cases += _pair(label, 0, workload.pod(**shape), config)
    case_timings = time_subjects(cases, rounds=rounds, per_round=per_round, warmup=warmup)

    sweeps: dict[str, Any] = {}
    for axis, sizes in (("env_vars", env_sizes), ("containers", container_sizes)):
        subjects: list[Subject] = []
        for size in sizes:
            subjects += _pair(f"{axis}={size}", size, workload.pod(**{axis: size}), config)
        timings = time_subjects(subjects, rounds=rounds, per_round=per_round, warmup=warmup)
        engine_only = [t for t in timings if not t.label.endswith("+parse")]
        with_parse = [t for t in timings if t.label.endswith("+parse")]
        sweeps[axis] = {
            "points": [t.as_dict() for t in timings],
            "fit": fit_line(
                [t.size for t in engine_only], [t.median_us for t in engine_only]
            ).as_dict(),
            "fit_parse": fit_line(
                [t.size for t in with_parse], [t.median_us for t in with_parse]
            ).as_dict(),
        }
    return {
        "cases": [t.as_dict() for t in case_timings],
        "sweeps": sweeps,
        "method": {"rounds": rounds, "per_round": per_round, "warmup": warmup},
    }


def print_table(results: dict[str, Any]) -> None:
    """The figures on stdout, for someone running the bench by hand."""
    print(f"{'case':<34}{'n':>7}{'median us':>12}{'p10 us':>10}{'p90 us':>10}")
    for row in results["cases"]:
        print(
            f"{row['label']:<34}{row['n']:>7}{row['median_us']:>12.1f}"
            f"{row['p10_us']:>10.1f}{row['p90_us']:>10.1f}"
        )
    for axis, sweep in results["sweeps"].items():
        print(f"\nsweep over {axis}")
        for row in sweep["points"]:
            print(f"  {row['label']:<32}{row['median_us']:>12.1f} us")
        for key in ("fit", "fit_parse"):
            fit = sweep[key]
            print(
                f"  {key}: {fit['slope_us'] * 1000:.1f} ns per unit, "
                f"intercept {fit['intercept_us']:.1f} us, R^2 {fit['r2']:.4f}"
            )
