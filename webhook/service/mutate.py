"""``POST /mutate``: the admission endpoint, as bare ASGI.

The one hot path (every pod creation in a meshed namespace waits for it), so
the app (``webhook.service.app``) calls it before FastAPI's middleware and
routing, which cost as much per request as the admission itself (``make
bench``, Profiling). It answers exactly as a FastAPI route would. It reads
the raw body itself (``webhook.service.body``), checks the content type,
and hands bytes to ``webhook.service.admission.admit``: FastAPI never sees a
model of the review. Validating a pod with pydantic would cost more than
injecting it and would answer 422 where Kubernetes clients expect 400.
"""

from __future__ import annotations

import logging
import time

from webhook.engine.values import shorten
from webhook.service import admission, logs
from webhook.service.admission import BadRequest
from webhook.service.answers import (
    JSON,
    Aborted,
    Answer,
    HTTPError,
    json_answer,
    ms,
    observe_failure,
)
from webhook.service.asgi import Receive, Scope, Send
from webhook.service.body import check_charset, content_headers, media_type, read_body
from webhook.service.state import AppState

log = logging.getLogger("webhook.app")
admission_log = logging.getLogger(logs.ADMISSION_LOGGER)


class Mutate:
    """``POST /mutate`` as a bare ASGI endpoint (see the module docstring).

    ``?timeout=`` from the apiserver is accepted and ignored. A class rather
    than a function so that the ``Route`` registered with it (see
    ``webhook.service.app.create_app``) takes it for an ASGI app rather than
    a request handler.
    """

    def __init__(self, service: AppState) -> None:
        self.service = service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer one AdmissionReview."""
        answer = await self._answer(scope, receive)
        await answer.send(send)

    async def _answer(self, scope: Scope, receive: Receive) -> Answer:
        service = self.service
        start = time.perf_counter()
        with service.budget.reservation() as held:
            try:
                content_type, declared = content_headers(scope)
                media, charset = media_type(content_type)
                if media != JSON:
                    raise HTTPError(
                        415,
                        "unsupported_media_type",
                        f"Content-Type must be {JSON}, not {media or '(none)'}",
                    )
                check_charset(charset)
                body = await read_body(receive, declared, held, service.limits.max_body_bytes)
                big = len(body) > service.limits.thread_body_bytes
                client = scope.get("client")
                reviewed = await admission.admit(
                    body,
                    # Namespace reads are bounded per client address.
                    namespaces=service.lookup.for_client(client[0] if client else None),
                    config=service.config,
                    run=service.in_thread if big else admission.inline,
                )
            except (HTTPError, BadRequest, Aborted) as err:
                return observe_failure(service.metrics, "mutate", err, start)
            except Exception:
                # Only a bug gets here; the tests' fuzzing checks that no input does.
                log.exception("internal error in /mutate")
                service.metrics.observe("mutate", "error", time.perf_counter() - start)
                return json_answer({"error": "internal error"}, 500)

        response = reviewed.response
        outcome = "ok" if response["allowed"] else "refused"
        service.metrics.observe("mutate", outcome, time.perf_counter() - start)
        service.metrics.decision(reviewed.code)
        # Off the request path: counted here, written by the sender's thread.
        service.events.record(reviewed)
        summary = reviewed.request
        admission_log.info(
            "admission",
            extra={
                "fields": {
                    "uid": summary.uid,
                    "namespace": summary.namespace,
                    "name": summary.name,
                    "operation": summary.operation,
                    "dry_run": summary.dry_run,
                    "allowed": response["allowed"],
                    "patched": "patch" in response,
                    "code": reviewed.code,
                    # A refusal names the pod, whose name the apiserver has
                    # not validated yet when it calls us.
                    "reason": shorten(reviewed.reason, 1000, quote=False),
                    "warnings": len(response.get("warnings", ())),
                    "duration_ms": ms(start),
                }
            },
        )
        return Answer(200, reviewed.body)
