"""One JSON object per log line, through the standard ``logging`` module.

Log pipelines (Loki, Cloud Logging, ``jq``) parse JSON lines without
configuration. Admission logs carry fields passed as ``extra={"fields": {...}}``;
callers choose those fields, and by design never pass env values or the pod
body (they may hold secrets).
"""

from __future__ import annotations

import logging
import time
from typing import Any, Final

import orjson

ADMISSION_LOGGER: Final = "webhook.admission"


class JsonFormatter(logging.Formatter):
    """``{"time", "level", "logger", "message", "pid", ...fields}`` on one line."""

    def format(self, record: logging.LogRecord) -> str:
        """Render ``record`` as a JSON line (exceptions as a one-string ``exception`` field)."""
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            # Tells worker processes apart (serve --workers N share one stream).
            "pid": record.process,
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry.update(fields)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


def log_config(level: str = "info") -> dict[str, Any]:
    """The same set-up as a ``logging.config`` dict, for uvicorn's worker processes."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": f"{__name__}.JsonFormatter"}},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "formatter": "json",
                "stream": "ext://sys.stderr",
            }
        },
        "root": {"handlers": ["stderr"], "level": level.upper()},
        "loggers": {
            "uvicorn": {"handlers": [], "propagate": True},
            "uvicorn.error": {"handlers": [], "propagate": True},
            "uvicorn.access": {"handlers": [], "propagate": True},
        },
    }
