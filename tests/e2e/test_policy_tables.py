"""Every case of the engine's decision and settings tables, in both modes on a real API server.

The cases come from the unit tests themselves (tests/e2e/recorded.py runs
them with the engine's entry points recorded): tests/unit/test_decision.py
(``decide`` and ``inject``), tests/unit/test_settings.py and
tests/unit/test_value_rules.py (``resolve_settings`` and the value parsers),
tests/unit/test_locked_settings.py and tests/unit/test_container_refusals.py (each with
the config it uses: a policy is rendered and installed per config), and the
hostile values of tests/process/test_settings_edges.py. Each becomes a pod in a
namespace with the case's labels and annotations, dry-run created where the
policy is bound and through the simulated webhook (tests/e2e/policy_modes.py);
a difference is a failure. Cases a namespace cannot hold (label values
Kubernetes refuses, such as ``80,81``) are left out, and counted.
"""

from __future__ import annotations

import pytest

from tests.e2e.policy_modes import Case, Modes, modes, pod_with
from tests.e2e.recorded import (
    from_decide,
    from_inject,
    from_resolve,
    from_value,
    recorded_cases,
)
from webhook.contract import constants

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(1800)]
__all__ = ["modes"]  # the fixture


def _check_all(modes: Modes, cases: list[Case]) -> tuple[int, list[str]]:
    """Run every case; the number left out, and every difference found."""
    left_out, differences = 0, []
    for case in cases:
        if not modes.representable(case):
            left_out += 1
            continue
        try:
            modes.check(case)
        except AssertionError as err:
            differences.append(f"{case.what}: {str(err)[:2000]}")
    return left_out, differences


def test_every_decision_table_case_is_decided_alike(modes: Modes) -> None:
    cases = recorded_cases(
        "tests.unit.test_decision", {"decide": from_decide, "inject": from_inject}
    )
    assert len(cases) >= 60
    left_out, differences = _check_all(modes, cases)
    assert not differences, "\n".join(differences)
    assert left_out <= len(cases) // 4, left_out


def test_every_settings_table_case_is_resolved_alike(modes: Modes) -> None:
    cases = recorded_cases(
        "tests.unit.test_settings",
        {
            "resolve_settings": from_resolve,
            "parse_quantity": from_value("proxy-cpu-request"),
            "parse_cidr": from_value("exclude-outbound-cidrs"),
        },
    ) + recorded_cases(
        "tests.unit.test_value_rules",
        {
            "resolve_settings": from_resolve,
            "parse_quantity": from_value("proxy-cpu-request"),
            "parse_cidr": from_value("exclude-outbound-cidrs"),
        },
    )
    assert len(cases) >= 150
    left_out, differences = _check_all(modes, cases)
    assert not differences, "\n".join(differences)
    assert left_out <= len(cases) // 4, left_out


def test_every_lock_and_container_refusal_case_is_refused_alike(modes: Modes) -> None:
    recorders = {"resolve_settings": from_resolve, "inject": from_inject}
    cases = recorded_cases("tests.unit.test_locked_settings", recorders) + recorded_cases(
        "tests.unit.test_container_refusals", {"inject": from_inject}
    )
    assert len({case.config for case in cases}) >= 3  # several configs: a policy each
    assert len(cases) >= 60
    left_out, differences = _check_all(modes, cases)
    assert not differences, "\n".join(differences)
    assert left_out <= len(cases) // 4, left_out


def test_the_hostile_values_are_refused_alike(modes: Modes) -> None:
    from tests.process.test_settings_edges import HOSTILE

    cases = [
        Case(
            f"{key}={value[:30]!r}",
            {constants.NAMESPACE_INJECTION_LABEL: constants.ENABLED},
            {},
            pod_with(annotations={constants.PREFIX + key: value}),
        )
        for key, value, _message in (row.values for row in HOSTILE)
    ]
    left_out, differences = _check_all(modes, cases)
    assert not differences, "\n".join(differences)
    assert left_out == 0
