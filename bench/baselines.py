"""The two floors ``/mutate`` is measured against, served exactly like the webhook.

* ``raw``: a bare ASGI app that drains the body and returns one constant
  AdmissionReview response: what uvicorn + TLS + HTTP/1.1 cost with no
  framework and no work at all.
* ``echo``: the least a FastAPI admission endpoint can do: read the body,
  parse the review with orjson, echo the uid in an ``allowed`` response.

Both are served by uvicorn with the project's TLS context (``webhook.service.tls``)
and the same certificate and uvicorn settings as ``sidecar-injector serve``,
so the ratios isolate what the webhook's own code costs.

Run: ``python -m bench.baselines raw|echo --port P --cert-dir DIR``.
"""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from pathlib import Path
from typing import Any

import orjson
import uvicorn
from fastapi import FastAPI, Request, Response

from webhook.service.server import KEEP_ALIVE_SECONDS
from webhook.service.tls import ReloadingTLS, uvicorn_config_with_tls

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


def constant_response() -> bytes:
    """An allowed AdmissionReview response."""
    response = {"uid": "6c3c2b8e-3f0e-4c1a-9f57-2d8f1b1e9a00", "allowed": True}
    return orjson.dumps(
        {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response}
    )


# What uvicorn is told besides host, port and TLS: the options of
# ``sidecar-injector serve`` that change per-request work (keep-alive, no
# Server header, no proxy-header parsing, no access log). The admission log
# line /mutate writes is its own work and is not copied.
UVICORN_SETTINGS: dict[str, Any] = {
    "log_level": "warning",
    "access_log": False,
    "timeout_keep_alive": KEEP_ALIVE_SECONDS,
    "proxy_headers": False,
    "server_header": False,
}


def raw_app(body: bytes) -> Any:
    """A bare ASGI app answering every HTTP request with ``body``."""
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
    ]

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        more = True
        while more:
            message = await receive()
            more = message.get("more_body", False)
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return app


def echo_app() -> FastAPI:
    """A FastAPI app whose admission endpoint parses the review and allows it."""
    app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)

    @app.post("/mutate")
    async def mutate(request: Request) -> Response:
        review = orjson.loads(await request.body())
        answer = {
            "apiVersion": review.get("apiVersion", "admission.k8s.io/v1"),
            "kind": "AdmissionReview",
            "response": {"uid": review["request"]["uid"], "allowed": True},
        }
        return Response(orjson.dumps(answer), media_type="application/json")

    return app


def serve(app: Any, *, host: str, port: int, cert_dir: Path) -> None:
    """Serve ``app`` over HTTPS the way the webhook is served (``webhook.service.tls``)."""
    config = uvicorn_config_with_tls(
        app, host=host, port=port, tls=ReloadingTLS(cert_dir), **UVICORN_SETTINGS
    )
    uvicorn.Server(config).run()


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: which baseline, where, with which certificate directory."""
    parser = argparse.ArgumentParser(prog="python -m bench.baselines")
    parser.add_argument("which", choices=("raw", "echo"))
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--cert-dir", type=Path, required=True)
    args = parser.parse_args(argv)
    app = raw_app(constant_response()) if args.which == "raw" else echo_app()
    serve(app, host=args.host, port=args.port, cert_dir=args.cert_dir)


if __name__ == "__main__":
    main()
