"""``check``'s runner alone, with checks and discovery steps made up for the test.

Order, each step once, the standing hint, a crash as one failed line (and what
depends on it skipped), the fatal skip, the time budget.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest

from harness.fake_kube_api import FakeKubeAPI
from tests.unit.check.support import cluster_of
from webhook.cluster.reader import Cluster
from webhook.ops.check import CHECK_NAMES, CHECKS, Check, Discovery, Options, run
from webhook.ops.check import context as c
from webhook.ops.check.model import check, failed, passed


def test_the_checks_print_in_their_documented_order() -> None:
    assert CHECK_NAMES == (
        "kubernetes-api", "webhook-configuration", "admission-policies", "injector-config",
        "service-endpoints",
        "ca-bundle", "certificate-expiry", "replicas", "excluded-namespaces", "revisions",
        "revision-labels", "pod-security", "dry-run-injection", "locked-settings",
        "outdated-sidecars", "revision-sidecars",
    )  # fmt: skip


def test_a_failed_fatal_check_skips_every_check_after_it(
    fake_api: FakeKubeAPI, tmp_path: Path
) -> None:
    cluster = cluster_of(fake_api, tmp_path, timeout=5)
    fake_api.stop()  # nothing listens on its port any more
    first, *rest = run(cluster, Options(), CHECKS)
    assert (first.name, first.status) == ("kubernetes-api", "fail")
    assert "Connection refused" in first.message
    assert {(r.status, r.message) for r in rest} == {("skip", "the API server cannot be reached")}
    assert [r.name for r in rest] == list(CHECK_NAMES[1:])


NOBODY = cast(Cluster, SimpleNamespace(host="https://api"))


def made_up(calls: list[str], *, crash: str = "") -> Discovery[c.ApiAnswer]:
    def find(cluster: Cluster, context: c.Context) -> c.ApiAnswer:
        calls.append("find")
        if crash:
            raise RuntimeError(crash)
        return c.ApiAnswer("v9")

    return Discovery("api", "the made-up fact", find)


def test_each_step_runs_once_and_the_standing_hint_goes_to_warnings_and_failures() -> None:
    calls: list[str] = []
    step = made_up(calls)

    @check("first", hint="the fix", needs=[step])
    def first(context: c.Context) -> Any:
        return failed(f"saw {context.api.version}")

    @check("second", hint="the fix", needs=[step])
    def second(context: c.Context) -> Any:
        return failed("no hint here", "")

    @check("third", hint="the fix")
    def third(context: c.Context) -> Any:
        return passed("fine")

    results = run(NOBODY, Options(), [first, second, third])
    assert [(r.status, r.message, r.hint) for r in results] == [
        ("fail", "saw v9", "the fix"),
        ("fail", "no hint here", ""),
        ("pass", "fine", ""),
    ]
    assert calls == ["find"]


def test_a_crash_is_one_failed_line_and_what_depends_on_it_is_skipped() -> None:
    step = made_up([], crash="boom\nsecond line")

    @check("reader", needs=[step])
    def reader(context: c.Context) -> Any:
        return passed("never")

    @check("later", needs=[step])
    def later(context: c.Context) -> Any:
        return passed("never")

    @check("broken")
    def broken(context: c.Context) -> Any:
        found: dict[str, Any] = {}
        return found["missing"]

    @check("independent")
    def independent(context: c.Context) -> Any:
        return passed("still runs")

    results = run(NOBODY, Options(), [reader, later, broken, independent])
    assert [(r.status, r.message, r.hint) for r in results] == [
        ("fail", "could not be checked: RuntimeError: boom second line", "run check again"),
        ("skip", "the made-up fact could not be read (see reader)", ""),
        ("fail", "could not be checked: KeyError: 'missing'", "run check again"),
        ("pass", "still runs", ""),
    ]


def test_a_step_that_crashes_under_another_is_reported_by_the_check_that_ran_them() -> None:
    calls: list[str] = []
    crashing = made_up(calls, crash="boom")

    def after(cluster: Cluster, context: c.Context) -> c.WebhookConfiguration:
        calls.append(f"after saw {context.api}")
        return c.WebhookConfiguration(exists=True)

    following = Discovery("webhook", "the following fact", after, (crashing,))

    @check("uses-the-following", needs=[following])
    def uses(context: c.Context) -> Any:
        return passed("never")

    @check("also-uses-it", needs=[following])
    def also(context: c.Context) -> Any:
        return passed(f"exists={context.webhook.exists}")

    results = run(NOBODY, Options(), [uses, also])
    assert [(r.status, r.message) for r in results] == [
        ("fail", "could not be checked: RuntimeError: boom"),
        ("pass", "exists=True"),  # the step under it crashed; its own output is there
    ]
    assert calls == ["find", "after saw ApiAnswer(version='', error='')"]


def test_checks_not_started_within_the_time_budget_are_reported_not_run() -> None:
    ticks = iter([0.0, 1.0, 21.0, 22.0])

    @check("quick")
    def quick(context: c.Context) -> Any:
        return passed("done")

    late = Check("late", quick.run)
    results = run(NOBODY, Options(timeout=1), [quick, late, late], clock=lambda: next(ticks))
    assert [r.status for r in results] == ["pass", "warn", "warn"]
    assert results[1].message == "not run: the run's time budget (20s) ran out"
    assert "--namespace NS" in results[1].hint


def test_checks_and_steps_are_declared_consistently() -> None:
    with pytest.raises(ValueError, match="names no field of Context"):
        Discovery("nowhere", "x", lambda _cluster, _context: None)
    with pytest.raises(ValueError, match="needs a skip_message"):
        Check("x", lambda _context: passed("x"), fatal=True)
    # Every check reads a context where nothing was found without crashing.
    for each in CHECKS:
        assert each(c.Context()).name == each.name
