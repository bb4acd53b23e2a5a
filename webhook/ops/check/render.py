"""``check``'s output: text for people, JSON for scripts, and the summary counts.

Messages, hints and details quote what the cluster says (object names,
error bodies): both renderers escape what a terminal would act on
(``escape_controls``), JSON too, since ``jq -r`` prints strings raw; the
JSON document's other strings (``data``) keep their values, with what JSON
allows raw written as ``\\u`` escapes (``escape_json_controls``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import orjson

from webhook.engine.values import escape_controls, escape_json_controls
from webhook.ops.check.model import Result, plural


def render_text(results: Sequence[Result], *, host: str) -> str:
    """One line per check, hints and details indented under it, a summary at the end."""
    width = max(len(r.name) for r in results)
    lines = [f"sidecar-injector check of {escape_controls(host)}", ""]
    for result in map(_escaped, results):
        lines.append(f"{result.status.upper():<4}  {result.name:<{width}}  {result.message}")
        if result.hint:
            lines.append(f"{'':<4}  {'':<{width}}  hint: {result.hint}")
        lines.extend(f"{'':<4}  {'':<{width}}  - {detail}" for detail in result.details)
    counts = summary(results)
    lines += [
        "",
        f"{counts['pass']} passed, {plural(counts['warn'], 'warning')},"
        f" {counts['fail']} failed, {counts['skip']} skipped",
    ]
    return "\n".join(lines) + "\n"


def render_json(results: Sequence[Result], *, host: str) -> str:
    """The results for scripts: ``{"ok", "host", "summary", "checks": [...]}``."""
    counts = summary(results)
    document = {
        "ok": counts["fail"] == 0,
        "host": escape_controls(host),
        "summary": counts,
        "checks": [_escaped(r).as_json() for r in results],
    }
    text = orjson.dumps(document, option=orjson.OPT_INDENT_2)
    return escape_json_controls(text).decode() + "\n"


def _escaped(result: Result) -> Result:
    return dataclasses.replace(
        result,
        message=escape_controls(result.message),
        hint=escape_controls(result.hint),
        details=tuple(escape_controls(detail) for detail in result.details),
    )


def summary(results: Sequence[Result]) -> dict[str, int]:
    """How many checks ended in each status."""
    counts = {"pass": 0, "warn": 0, "fail": 0, "skip": 0}
    for result in results:
        counts[result.status] += 1
    return counts
