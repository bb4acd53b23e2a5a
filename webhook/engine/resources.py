"""Kubernetes ``resources`` for the injected containers: ``mesh-init`` and ``mesh-proxy`` alike."""

from __future__ import annotations

from typing import Any

from webhook.engine.config import Resources
from webhook.engine.expr import Present, is_none, lift, not_, or_, render


def resources_template(
    *, cpu_request: Any, cpu_limit: Any, memory_request: Any, memory_limit: Any
) -> tuple[Any, Any]:
    """(whether there is anything to set, the ``resources`` map) for these values or expressions.

    Unset values (None) and empty maps are left out. Written as a template so
    that the proxy's resources, which come from the settings, are built by the
    same definition in both modes (``expr``).
    """
    limits = {"cpu": lift(cpu_limit), "memory": lift(memory_limit)}
    requests = {"cpu": lift(cpu_request), "memory": lift(memory_request)}
    any_limit = or_(not_(is_none(limits["cpu"])), not_(is_none(limits["memory"])))
    any_request = or_(not_(is_none(requests["cpu"])), not_(is_none(requests["memory"])))
    template = {
        "limits": Present(
            any_limit, {name: Present(not_(is_none(v)), v) for name, v in limits.items()}
        ),
        "requests": Present(
            any_request, {name: Present(not_(is_none(v)), v) for name, v in requests.items()}
        ),
    }
    return or_(any_limit, any_request), template


def container_resources(resources: Resources) -> dict[str, dict[str, str]]:
    """Kubernetes ``resources`` from config values; unset values and empty maps are left out."""
    _, template = resources_template(
        cpu_request=resources.cpu_request,
        cpu_limit=resources.cpu_limit,
        memory_request=resources.memory_request,
        memory_limit=resources.memory_limit,
    )
    out: dict[str, dict[str, str]] = render(template, {})
    return out
