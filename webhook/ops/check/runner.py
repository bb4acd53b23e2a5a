"""Runs checks in order over one context: discovery first, each check guarded, one budget.

- Before a check, the discovery steps it needs (and theirs) run, each once
  for the whole run, and their outputs go into the (frozen) ``Context``.
- A check or step that raises (an object shaped unlike any the API server
  sends) makes one failed line, ``could not be checked: <one line>``, never
  a traceback: a step's crash is reported by the check that first needed it,
  its output stays at "nothing found", and later checks that read it directly
  are skipped and say where the reason is.
- A failed ``fatal`` check skips every check after it (``skip_message``).
- The run has a time budget (``Options.budget_seconds``): a check not started
  when it runs out is a warning saying so. A started check ends within its own
  bounds (each request has a timeout; lists and loops are capped).
"""

from __future__ import annotations

import dataclasses
import datetime
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from webhook.cluster import kube
from webhook.cluster.reader import Cluster
from webhook.ops.check.context import Context, Options
from webhook.ops.check.model import Check, Discovery, Result
from webhook.pki import served_cert

CRASH_HINT = "run check again"


def run(
    cluster: Cluster,
    options: Options,
    checks: Sequence[Check],
    *,
    now: Callable[[], datetime.datetime] = served_cert.now,
    clock: Callable[[], float] = time.monotonic,
) -> list[Result]:
    """Every check of ``checks``, in order, against ``cluster``."""
    return _Run(cluster, Context(options, cluster.host, now()), clock).all(checks)


def skipped_after(first: Result, checks: Sequence[Check], message: str) -> list[Result]:
    """``first`` (a fatal failure found before any check ran), then every other check skipped."""
    return [first] + [Result(c.name, "skip", message) for c in checks if c.name != first.name]


class _Run:
    def __init__(self, cluster: Cluster, context: Context, clock: Callable[[], float]) -> None:
        self.cluster = cluster
        self.context = context
        self.clock = clock
        self.deadline = clock() + context.options.budget_seconds
        self.done: set[str] = set()
        # step name -> (its error, the check that reported it)
        self.broken: dict[str, tuple[str, str]] = {}

    def all(self, checks: Sequence[Check]) -> list[Result]:
        results: list[Result] = []
        blocked = ""
        for check in checks:
            if blocked:
                results.append(Result(check.name, "skip", blocked))
                continue
            if self.clock() > self.deadline:
                results.append(self._out_of_time(check))
                continue
            result = self.one(check)
            results.append(result)
            if check.fatal and result.status == "fail":
                blocked = check.skip_message
        return results

    def one(self, check: Check) -> Result:
        """One check, after the discovery steps it needs."""
        crash = ""
        for step in _closure(check.needs):
            if step.name in self.done:
                continue
            self.done.add(step.name)
            try:
                found = step.find(self.cluster, self.context)
            except Exception as err:  # e.g. a field of the wrong type in what the server sent
                self.broken[step.name] = (kube.one_line(err), check.name)
                crash = crash or kube.one_line(err)
                continue
            self.context = dataclasses.replace(self.context, **{step.name: found})
        if crash:
            return _crashed(check, crash)
        for step in check.needs:
            if step.name in self.broken:
                _, reported_by = self.broken[step.name]
                return Result(
                    check.name, "skip", f"{step.what} could not be read (see {reported_by})"
                )
        try:
            return check(self.context)
        except Exception as err:  # the same, in the check's own reading
            return _crashed(check, kube.one_line(err))

    def _out_of_time(self, check: Check) -> Result:
        budget = self.context.options.budget_seconds
        return Result(
            check.name,
            "warn",
            f"not run: the run's time budget ({budget:g}s) ran out",
            "the API server is slow to answer: narrow it down with --namespace NS,"
            " or give each request longer with --timeout",
        )


def _crashed(check: Check, error: str) -> Result:
    return Result(check.name, "fail", f"could not be checked: {error}", CRASH_HINT)


def _closure(needs: Sequence[Discovery[Any]]) -> Iterator[Discovery[Any]]:
    """The steps ``needs`` names and the steps they need, each before the steps needing it."""
    seen: set[str] = set()

    def visit(step: Discovery[Any]) -> Iterator[Discovery[Any]]:
        if step.name in seen:
            return
        seen.add(step.name)
        for need in step.needs:
            yield from visit(need)
        yield step

    for step in needs:
        yield from visit(step)
