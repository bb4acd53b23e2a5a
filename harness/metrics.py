"""Reading a few families out of a large Prometheus text exposition.

kube-apiserver's ``/metrics`` runs to megabytes (every resource, verb and
bucket), and the parser in ``prometheus_client`` reads it character by
character in Python. The callers want one or two families, so only their
lines are handed to the parser.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families


def families(text: str, names: Iterable[str]) -> Iterator[Metric]:
    """The metric families called ``names`` (as the parser names them) in ``text``.

    A family's samples carry its name plus a suffix (``_total``, ``_bucket``,
    ``_sum``, ``_count``), so a line is kept when its metric name starts with
    one of ``names``; the parser then drops any other family that shares the
    prefix, as the callers compare ``family.name``.
    """
    wanted = tuple(names)
    kept = [line for line in text.splitlines() if _metric_name(line).startswith(wanted)]
    selected = set(wanted)
    for family in text_string_to_metric_families("\n".join(kept) + "\n"):
        if family.name in selected:
            yield family


def _metric_name(line: str) -> str:
    """The metric a line is about: a sample's first word, or a comment's third."""
    if line.startswith("#"):
        parts = line.split(None, 3)
        return parts[2] if len(parts) > 2 and parts[1] in ("HELP", "TYPE") else ""
    return line.split("{", 1)[0].split(" ", 1)[0]
