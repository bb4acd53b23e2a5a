"""Kubernetes ``resources`` for the injected containers: ``mesh-init`` and ``mesh-proxy`` alike."""

from __future__ import annotations

from webhook.engine.config import Resources


def container_resources(resources: Resources) -> dict[str, dict[str, str]]:
    """Kubernetes ``resources`` from config values; unset values and empty maps are left out."""
    requests = {
        name: value
        for name, value in (("cpu", resources.cpu_request), ("memory", resources.memory_request))
        if value is not None
    }
    limits = {
        name: value
        for name, value in (("cpu", resources.cpu_limit), ("memory", resources.memory_limit))
        if value is not None
    }
    out: dict[str, dict[str, str]] = {}
    if limits:
        out["limits"] = limits
    if requests:
        out["requests"] = requests
    return out
