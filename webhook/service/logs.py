"""One JSON object per log line, through the standard ``logging`` module.

Log pipelines (Loki, Cloud Logging, ``jq``) parse JSON lines without
configuration. Admission logs carry fields passed as ``extra={"fields": {...}}``;
callers choose those fields, and by design never pass env values or the pod
body (they may hold secrets).
"""

from __future__ import annotations

import logging
import logging.config
import time
from typing import Any, Final

import orjson

from webhook.engine.values import escape_json_controls

ADMISSION_LOGGER: Final = "webhook.admission"


class JsonFormatter(logging.Formatter):
    """``{"time", "level", "logger", "message", "pid", ...fields}`` on one line."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # (whole second, its ISO text): formatting the date once a second
        # rather than once a line (a line per admission). One tuple, replaced
        # whole, so threads logging at once never see a torn pair.
        self._second: tuple[int, str] = (-1, "")

    def format(self, record: logging.LogRecord) -> str:
        """Render ``record`` as a JSON line (exceptions as a one-string ``exception`` field)."""
        second = int(record.created)
        cached = self._second
        if cached[0] != second:
            cached = self._second = (
                second,
                time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)),
            )
        entry: dict[str, Any] = {
            "time": f"{cached[1]}.{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            # Tells a restarted process's lines from its predecessor's.
            "pid": record.process,
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry.update(fields)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        # Lines end up on terminals (kubectl logs): what JSON allows raw (C1
        # controls, bidi overrides from a pod's name) is written as escapes.
        return escape_json_controls(orjson.dumps(entry, default=str)).decode()


def configure(level: str = "info") -> None:
    """Set up the process's logging: JSON lines on stderr at ``level``, cheap to emit.

    Every admission writes one line, so the per-record work matters. By
    default ``logging`` walks the stack to find the caller's file and line
    (``findCaller``) and looks up the thread and process names for every
    record; these lines show none of that, so it is switched off, which
    roughly halves the cost of the admission line (BENCHMARKS.md,
    "Profiling").
    """
    logging.config.dictConfig(log_config(level))
    logging._srcfile = None  # the documented switch that turns findCaller off
    logging.logThreads = False
    logging.logMultiprocessing = False


def log_config(level: str = "info") -> dict[str, Any]:
    """The set-up of :func:`configure` as a ``logging.config`` dict."""
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
