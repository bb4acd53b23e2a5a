"""``GET /healthz``, ``/readyz`` and ``/metrics``: what the kubelet and Prometheus ask."""

from __future__ import annotations

from webhook.service import expiry
from webhook.service.answers import Answer, json_answer
from webhook.service.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from webhook.service.state import AppState


def healthz() -> Answer:
    """Alive: the event loop answers. Says nothing about certificates or namespaces."""
    return json_answer({"status": "ok"})


def readyz(service: AppState) -> Answer:
    """Ready to admit: a certificate is loaded and the namespace source has synced."""
    reasons = []
    if service.tls is not None and not service.tls.loaded:
        reasons.append("no serving certificate loaded")
    elif service.tls is not None and expiry.expired(service.tls.not_after, expiry.utcnow()):
        reasons.append(
            f"the serving certificate expired on {service.tls.not_after:%Y-%m-%d %H:%M} UTC"
        )
    if not service.started:
        reasons.append("starting")
    elif not service.namespaces.is_ready():
        reasons.append("namespace source not synced yet")
    if reasons:
        return json_answer({"status": "not ready", "reasons": reasons}, 503)
    return json_answer({"status": "ready"})


def metrics(service: AppState) -> Answer:
    """Prometheus text exposition of this app's registry."""
    return Answer(200, service.metrics.render(), media_type=METRICS_CONTENT_TYPE)
