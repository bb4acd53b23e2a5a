"""Policy mode within CEL's limits: the worst accepted settings are admitted, on a real API server.

The API server does not estimate a MutatingAdmissionPolicy's cost when it is
created, so the limits are tested by evaluating: the policy for the worst
config (every setting locked, so the pod's values are judged as well as the
namespace's) and for the default one, and a pod with the most expensive
settings the limits accept (tests/worst_settings.py), dry-run
created: it must be admitted, injected, and equal to what the webhook stores
(a cost error would be a 403 naming the policy). Then each expression's cost,
counted by the API server's own admission CEL code (celcost, built like the
control plane), must leave the runtime budget a wide margin.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.policy_modes import Case, Modes, modes
from tests.worst_settings import LOCKED_EVERYTHING, worst_pod, worst_settings
from webhook.contract import constants

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(1800)]
__all__ = ["modes"]  # the fixture

ROOT = Path(__file__).resolve().parents[2]
ENABLED = {constants.NAMESPACE_INJECTION_LABEL: constants.ENABLED}


def _admitted_and_injected(modes: Modes, case: Case) -> None:
    outcome = modes.for_config(case.config).by_policy(case)
    assert not outcome.refused, outcome.message[:2000]
    assert outcome.pod is not None
    assert constants.STATUS_ANNOTATION in outcome.pod["metadata"]["annotations"]
    names = [c["name"] for c in outcome.pod["spec"].get("containers", [])]
    names += [c["name"] for c in outcome.pod["spec"].get("initContainers", [])]
    assert set(constants.INJECTED_NAMES) <= set(names)
    modes.check(case)


def test_the_worst_settings_on_the_pod_are_admitted_and_injected(modes: Modes) -> None:
    case = Case("worst on the pod", ENABLED, {}, worst_pod(worst_settings()))
    _admitted_and_injected(modes, case)


def test_every_setting_locked_and_the_worst_values_twice_are_admitted_and_injected(
    modes: Modes,
) -> None:
    worst = worst_settings()
    case = Case("worst, locked", ENABLED, worst, worst_pod(worst), config=LOCKED_EVERYTHING)
    _admitted_and_injected(modes, case)


def _measure() -> Any:
    spec = importlib.util.spec_from_file_location(
        "measure_policy_cost", ROOT / "scripts" / "measure_policy_cost.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_each_expression_and_each_admission_stays_far_inside_the_cost_budget() -> None:
    cached = subprocess.run(
        ["bash", str(ROOT / "tests/e2e/build_celcost.sh"), "--cached"],
        check=False,
        capture_output=True,
    )
    if cached.returncode != 0 and shutil.which("go") is None:
        pytest.skip("celcost is built with Go, which is not on PATH (and it is not cached)")
    measure = _measure()
    binary = measure.celcost()
    for title, config, pod, namespace in measure.cases():
        for kind, results in measure.costs(binary, config, pod, namespace).items():
            total = results[-1]
            assert not total.get("error"), (title, kind, total)
            # A fifth of the API server's limits: room for larger pods and later settings.
            assert total["cost"] < measure.PER_EVALUATION // 5, (title, kind, total)
            assert max(r["cost"] for r in results[:-1]) < measure.PER_EXPRESSION // 5, (title, kind)
