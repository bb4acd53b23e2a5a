"""Hypothesis profiles: quick for the local loop, thorough in CI.

``HYPOTHESIS_PROFILE=ci`` (what ``.ci/run`` sets) runs every property with
the number of examples its test asks for through :func:`examples`; the
default ``dev`` profile runs a tenth of that (at least 20), so ``make
test-fast`` stays quick while CI keeps the full search. A failure in CI
prints the blob that replays it (``@reproduce_failure``).
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "dev")
_SCALE = {"ci": 1.0, "dev": 0.1}

settings.register_profile(
    "ci",
    max_examples=200,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("dev", max_examples=20, deadline=None)
settings.load_profile(PROFILE)


def examples(thorough: int) -> int:
    """How many examples a property gets: ``thorough`` in CI, a tenth of it locally."""
    return max(20, round(thorough * _SCALE.get(PROFILE, 1.0)))
