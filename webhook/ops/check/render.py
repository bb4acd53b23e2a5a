"""``check``'s output: text for people, JSON for scripts, and the summary counts."""

from __future__ import annotations

from collections.abc import Sequence

import orjson

from webhook.ops.check.model import Result, plural


def render_text(results: Sequence[Result], *, host: str) -> str:
    """One line per check, hints and details indented under it, a summary at the end."""
    width = max(len(r.name) for r in results)
    lines = [f"sidecar-injector check of {host}", ""]
    for result in results:
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
        "host": host,
        "summary": counts,
        "checks": [r.as_json() for r in results],
    }
    return orjson.dumps(document, option=orjson.OPT_INDENT_2).decode() + "\n"


def summary(results: Sequence[Result]) -> dict[str, int]:
    """How many checks ended in each status."""
    counts = {"pass": 0, "warn": 0, "fail": 0, "skip": 0}
    for result in results:
        counts[result.status] += 1
    return counts
