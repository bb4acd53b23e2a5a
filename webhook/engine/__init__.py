"""The pure injection engine: object + namespace + config -> decision, patch, result; and back.

Imports neither fastapi nor kubernetes (a test keeps it so); everything that
talks to the outside world lives around it, not in it.
"""

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
