"""The pure engine: object + namespace + config -> decision, patch, result; and back."""

# Standard library only (pyproject's import contracts): everything that talks
# to the outside world lives around the engine, not in it.

from webhook.engine.decision import (
    LABEL_FREE_SKIPS,
    LABEL_SKIPS,
    Decision,
    NamespaceLike,
    decide,
)
from webhook.engine.inject import InjectionRefused, InjectionResult, inject
from webhook.engine.patch import Op
from webhook.engine.status import InjectionStatus, StatusError, containers_digest
from webhook.engine.uninject import UninjectionResult, uninject

__all__ = [
    "LABEL_FREE_SKIPS",
    "LABEL_SKIPS",
    "Decision",
    "InjectionRefused",
    "InjectionResult",
    "InjectionStatus",
    "NamespaceLike",
    "Op",
    "StatusError",
    "UninjectionResult",
    "containers_digest",
    "decide",
    "inject",
    "uninject",
]
