"""Requests the service tests make of a running ``serve``, and what they read from the answers."""

from __future__ import annotations

import base64
from typing import Any

import orjson

from harness.server import WebhookClient


def mutate(client: WebhookClient, doc: Any, **kwargs: Any) -> Any:
    """POST ``doc`` to /mutate; the AdmissionReview answered (the status must be 200)."""
    response = client.post("/mutate", orjson.dumps(doc), params={"timeout": "10s"}, **kwargs)
    assert response.status_code == 200, response.text
    return response.json()


def decoded_patch(answer: Any) -> list[dict[str, Any]]:
    """The JSON Patch of an answered review (empty when it has none)."""
    if "patch" not in answer["response"]:
        return []
    ops: list[dict[str, Any]] = orjson.loads(base64.b64decode(answer["response"]["patch"]))
    return ops


def preview(
    client: WebhookClient, body: str | bytes, content_type: str | None, **params: Any
) -> Any:
    """POST ``body`` to /preview with ``content_type`` (None: no header) and query ``params``."""
    data = body.encode() if isinstance(body, str) else body
    return client.post("/preview", data, content_type=content_type, params=params)
