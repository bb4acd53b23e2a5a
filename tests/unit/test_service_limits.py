"""The service's limits that need no server: the reserve for small bodies, the pin note."""

from __future__ import annotations

import contextlib

import pytest

from tests.builders import REPO
from webhook.service.body import BodyBudget
from webhook.service.limits import Limits
from webhook.service.server import MAX_OPEN_FILES


def test_the_reserve_for_small_bodies_cannot_be_used_up_by_any_number_of_connections() -> None:
    """The budget's arithmetic (webhook.service.limits.Limits): small bodies always fit.

    Every connection may hold one small body, the large ones together at most
    their share; all of that fits the budget, so a review of up to 64 KiB is
    never refused for memory. Checked on the budget itself at the edge: the
    large share full, every other connection holding a small body to the byte.
    """
    limits = Limits()
    assert (
        limits.large_budget_bytes + MAX_OPEN_FILES * limits.large_body_bytes
        <= limits.body_budget_bytes
    )
    budget = BodyBudget(limits)
    with contextlib.ExitStack() as stack:
        large = stack.enter_context(budget.reservation())
        large.announce(7 * 1024 * 1024)
        large.grow_to(limits.large_budget_bytes)  # as far as large bodies may go
        with pytest.raises(Exception, match="retry shortly"):
            stack.enter_context(budget.reservation()).grow_to(limits.large_body_bytes + 1)
        for _ in range(MAX_OPEN_FILES):
            small = stack.enter_context(budget.reservation())
            small.announce(limits.large_body_bytes)
            small.grow_to(limits.large_body_bytes)
        assert budget.in_use <= limits.body_budget_bytes
    assert budget.in_use == 0


def test_the_deadline_protocols_pin_note_names_the_versions_pyproject_pins() -> None:
    """The read deadlines subclass uvicorn's internals; whoever moves the pin reads the note."""
    import tomllib

    from webhook.service import h11_deadlines

    root = REPO
    pins = tomllib.loads((root / "pyproject.toml").read_text())["project"]["dependencies"]
    note = " ".join((h11_deadlines.__doc__ or "").split())
    for package in ("uvicorn", "h11"):
        (pin,) = [p for p in pins if p.startswith(f"{package}>=")]
        assert f"{package} to ``{pin.removeprefix(package)}``" in note
