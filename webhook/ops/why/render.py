"""``why``'s answer for people (text) and for scripts (``-o json``).

Text from the cluster (names are validated by the API server, but annotation
values and messages are anything) is shown with what a terminal acts on
escaped, in both forms: ``jq -r`` prints JSON strings raw.
"""

from __future__ import annotations

from typing import Any

from webhook.engine.values import escape_controls
from webhook.manifests.render import to_json_bytes
from webhook.ops.why.explain import Explanation, Setting


def render_text(answer: Explanation, *, host: str) -> str:
    """The answer as lines: the verdict first, then why and what to do."""
    target = answer.target
    shown = escape_controls
    lines = [f"{target} in namespace {target.namespace} (API server {shown(host)})"]
    verdict = answer.verdict
    lines.append(f"injected now: {'yes' if verdict.injected else 'no'}: {shown(verdict.reason)}")
    lines.append(f"webhook: {_webhook_line(answer)}")
    revision = answer.revision
    recorded = (
        f"; its running pods record {', '.join(map(shown, revision.recorded))}"
        if revision.recorded
        else ""
    )
    lines.append(f"revision: {shown(revision.name)} ({revision.source}){recorded}")
    lines.append(f"injector config: {shown(answer.config_source)}")
    lines += _settings_lines(answer.settings, answer.settings_note)
    lines += _pod_lines(answer)
    lines += [f"warning: {shown(warning)}" for warning in answer.warnings]
    lines += [f"note: {shown(note)}" for note in answer.notes]
    return "\n".join(lines) + "\n"


def _webhook_line(answer: Explanation) -> str:
    call = answer.webhook
    if not call.known:
        return f"unknown: the webhook configuration {call.configuration} could not be read"
    if call.called_by:
        text = f"{', '.join(call.called_by)} ({call.configuration}) is called for it"
    else:
        text = f"none of {call.configuration} is called for it: {'; '.join(call.left_out)}"
    if call.match_conditions:
        text += f" (its {call.match_conditions} other matchConditions are not evaluated here)"
    return text


def _settings_lines(settings: tuple[Setting, ...], note: str) -> list[str]:
    if not settings:
        return [f"settings: {escape_controls(note)}"]
    header = f"settings ({escape_controls(note)}):" if note else "settings:"
    width = max(len(s.key) for s in settings)
    values = [escape_controls(s.value) or "(none)" for s in settings]
    value_width = min(40, max(len(v) for v in values))
    lines = [header]
    for setting, value in zip(settings, values, strict=True):
        locked = "  locked" if setting.locked else ""
        lines.append(
            f"  {setting.key:<{width}}  {value:<{value_width}}  {setting.source}{locked}".rstrip()
        )
    return lines


def _pod_lines(answer: Explanation) -> list[str]:
    pods = answer.pods
    shown = escape_controls
    if pods.examined == 0:
        return [f"pods: none running{f' ({shown(pods.note)})' if pods.note else ''}"]
    summary = f"{pods.injected} with the sidecar"
    if pods.outdated_count:
        summary += f" ({pods.outdated_count} outdated)"
    if pods.without_count:
        summary += f", {pods.without_count} without"
    if pods.unreadable:
        summary += f", {pods.unreadable} with a status annotation that is not the injector's"
    lines = [f"pods: {pods.examined} examined: {summary}"]
    if pods.note:
        lines.append(f"  ({shown(pods.note)})")
    for name, why in pods.outdated:
        lines.append(f"  {shown(name)}: outdated: {shown(why)}")
    if pods.outdated_count > len(pods.outdated):
        lines.append(f"  ... and {pods.outdated_count - len(pods.outdated)} more outdated")
    for name in pods.without:
        lines.append(f"  {shown(name)}: no sidecar")
    if pods.without_count > len(pods.without):
        lines.append(f"  ... and {pods.without_count - len(pods.without)} more without")
    if pods.fix is not None:
        lines.append(f"fix: {shown(pods.fix)}")
    return lines


def as_json(answer: Explanation, *, host: str) -> dict[str, Any]:
    """The answer as a JSON object (messages escaped as in the text)."""
    shown = escape_controls
    call = answer.webhook
    pods = answer.pods
    settings: dict[str, Any] = {}
    for setting in answer.settings:
        item: dict[str, Any] = {"value": setting.value, "source": setting.source}
        if setting.locked:
            item["locked"] = True
        settings[setting.key] = item
    return {
        "apiServer": host,
        "kind": answer.target.kind.kind,
        "name": answer.target.name,
        "namespace": answer.target.namespace,
        "injected": answer.verdict.injected,
        "code": answer.verdict.code,
        "reason": shown(answer.verdict.reason),
        "webhook": {
            "configuration": call.configuration,
            "found": call.known,
            "calledBy": list(call.called_by),
            "leftOut": list(call.left_out),
            "matchConditions": call.match_conditions,
        },
        "revision": {
            "name": answer.revision.name,
            "source": answer.revision.source,
            "recorded": list(answer.revision.recorded),
        },
        "config": shown(answer.config_source),
        "settings": settings,
        "settingsNote": shown(answer.settings_note),
        "pods": {
            "examined": pods.examined,
            "injected": pods.injected,
            "withoutSidecar": pods.without_count,
            "withoutSidecarSample": list(pods.without),
            "outdated": pods.outdated_count,
            "outdatedSample": [{"pod": name, "reason": why} for name, why in pods.outdated],
            "unreadable": pods.unreadable,
            "complete": pods.complete,
            "note": shown(pods.note),
        },
        "fix": pods.fix,
        "warnings": [shown(warning) for warning in answer.warnings],
        "notes": [shown(note) for note in answer.notes],
    }


def render_json(answer: Explanation, *, host: str) -> str:
    """:func:`as_json`, as indented JSON text."""
    return to_json_bytes(as_json(answer, host=host)).decode()
