"""Injection of whole manifests, for people: shared by ``inject`` (CLI) and ``/preview``.

Both take a batch of objects, a way to look up namespaces, and the namespace
labels/annotations the user wants to assume; both render the results in the
same four formats. Keeping this in one place is what makes the CLI and the
preview print the same patch for the same input.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import Any

from webhook.contract import constants
from webhook.contract.namespaces import NamespaceInfo
from webhook.engine import InjectionRefused, InjectionResult, NamespaceLike, inject
from webhook.engine.config import InjectorConfig
from webhook.engine.settings import Provenance
from webhook.engine.values import escape_controls
from webhook.engine.workloads import describe
from webhook.manifests.patched import Patched, patched
from webhook.manifests.render import as_list, to_json_bytes, to_yaml, unified_diff


class Output(StrEnum):
    """The output formats of ``inject -o`` and ``/preview?output=``."""

    JSON = "json"
    YAML = "yaml"
    PATCH = "patch"
    DIFF = "diff"


@dataclass(frozen=True, slots=True)
class Assumptions:
    """What the user said about namespaces: a default name and labels/annotations to assume."""

    namespace: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)


NamespaceLookup = Callable[[str], NamespaceLike | None]


def parse_pairs(pairs: Sequence[str], *, what: str) -> dict[str, str]:
    """``KEY=VALUE`` items (from flags or query parameters) into a dict."""
    parsed: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"{what} {pair!r} is not KEY=VALUE")
        parsed[key] = value
    return parsed


def namespace_of(obj: dict[str, Any], assumed: str | None) -> str:
    """The namespace an object would be created in (as ``kubectl apply -n`` decides)."""
    meta = obj.get("metadata")
    own = meta.get("namespace") if isinstance(meta, dict) else None
    if own is not None and not isinstance(own, str):
        raise InjectionRefused(f"{describe(obj)}: metadata.namespace is not a string")
    if own and assumed and own != assumed:
        raise InjectionRefused(
            f"{describe(obj)}: its namespace {own!r} does not match the requested {assumed!r}"
        )
    return own or assumed or constants.DEFAULT_NAMESPACE


def resolve_namespace(
    name: str, *, lookup: NamespaceLookup, assumptions: Assumptions
) -> NamespaceInfo:
    """The source's view of ``name`` with the assumed labels/annotations laid over it."""
    known = lookup(name)
    labels = dict(known.labels) if known is not None else {}
    annotations = dict(known.annotations) if known is not None else {}
    labels.update(assumptions.labels)
    annotations.update(assumptions.annotations)
    return NamespaceInfo(name, MappingProxyType(labels), MappingProxyType(annotations))


def inject_all(
    objects: Sequence[dict[str, Any]],
    *,
    lookup: NamespaceLookup,
    assumptions: Assumptions,
    config: InjectorConfig,
) -> list[InjectionResult]:
    """Inject every object; the first refusal raises (so nothing is half-printed)."""
    cache: dict[str, NamespaceInfo] = {}
    results = []
    for obj in objects:
        name = namespace_of(obj, assumptions.namespace)
        namespace = cache.get(name)
        if namespace is None:
            namespace = cache[name] = resolve_namespace(
                name, lookup=lookup, assumptions=assumptions
            )
        results.append(inject(obj, namespace=namespace, config=config))
    return results


def summary(result: InjectionResult) -> dict[str, Any]:
    """The preview's JSON view of one result: decision, settings with sources, patch, object.

    A setting the injector config locks carries ``"locked": true`` (pod
    annotations cannot change it); the others have no ``locked`` key.
    """
    settings = (
        {key: _setting(item) for key, item in result.settings.provenance.items()}
        if result.settings is not None
        else {}
    )
    return {
        "injected": result.injected,
        # Messages for people: escaped even in JSON, which ``jq -r`` prints raw.
        "reason": escape_controls(result.decision.reason),
        "settings": settings,
        "patch": list(result.patch),
        "object": patched(result),
        "warnings": [escape_controls(warning) for warning in result.warnings],
    }


def _setting(item: Provenance) -> dict[str, Any]:
    shown: dict[str, Any] = {"value": item.value, "source": str(item.source)}
    if item.locked:
        shown["locked"] = True
    return shown


def render(
    results: Sequence[Patched],
    originals: Sequence[dict[str, Any]],
    output: Output,
    *,
    summaries: bool = False,
    after: str = "injected",
) -> str:
    """Render results; ``summaries`` selects the preview's decision view for JSON.

    ``after`` names the right-hand side of a diff ("injected", "uninjected").
    """
    rendered = _render(results, originals, output, summaries=summaries, after=after)
    return rendered.decode() if isinstance(rendered, bytes) else rendered


def render_bytes(
    results: Sequence[Patched],
    originals: Sequence[dict[str, Any]],
    output: Output,
    *,
    summaries: bool = False,
) -> bytes:
    """:func:`render` as UTF-8 bytes, made once: ``/preview`` sends them as they are.

    JSON comes out of orjson as bytes; YAML and diffs are text, encoded once.
    """
    rendered = _render(results, originals, output, summaries=summaries, after="injected")
    return rendered if isinstance(rendered, bytes) else rendered.encode()


def _render(
    results: Sequence[Patched],
    originals: Sequence[dict[str, Any]],
    output: Output,
    *,
    summaries: bool,
    after: str,
) -> str | bytes:
    """JSON outputs as bytes (orjson's own form), YAML and diffs as text."""
    if output is Output.YAML:
        return to_yaml([patched(result) for result in results])
    if output is Output.JSON:
        if summaries:
            views = [summary(result) for result in results if isinstance(result, InjectionResult)]
            return to_json_bytes(views[0] if len(views) == 1 else views)
        return to_json_bytes(as_list([patched(result) for result in results]))
    if output is Output.PATCH:
        if len(results) == 1:
            return to_json_bytes(list(results[0].patch))
        return to_json_bytes(
            [
                {"object": describe(obj), "patch": list(result.patch)}
                for obj, result in zip(originals, results, strict=True)
            ]
        )
    return unified_diff(
        (
            (describe(obj), obj, patched(result))
            for obj, result in zip(originals, results, strict=True)
        ),
        side=after,
    )
