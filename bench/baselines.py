"""The two floors ``/mutate`` is measured against, served exactly like the webhook.

* ``raw``: a bare ASGI app that drains the body and returns one constant
  AdmissionReview response: what uvicorn + TLS + HTTP/1.1 cost with no
  framework and no work at all.
* ``echo``: the least a FastAPI admission endpoint can do: read the body,
  parse the review with orjson, echo the uid in an ``allowed`` response.

Both are served by uvicorn with the project's TLS context (``webhook.tls``)
and the same certificate and uvicorn settings as ``sidecar-injector serve``,
so the ratios isolate what the webhook's own code costs.

Run: ``python -m bench.baselines raw|echo --port P --cert-dir DIR``.
"""

from __future__ import annotations

import argparse
import ssl
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from pathlib import Path
from typing import Any

import orjson
import uvicorn
from fastapi import FastAPI, Request, Response

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

CONSTANT_RESPONSE = orjson.dumps(
    {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "response": {"uid": "6c3c2b8e-3f0e-4c1a-9f57-2d8f1b1e9a00", "allowed": True},
    }
)
_HEADERS = [
    (b"content-type", b"application/json"),
    (b"content-length", str(len(CONSTANT_RESPONSE)).encode()),
]

# What uvicorn is told besides host, port and TLS. The same dict is used for
# the webhook when the benchmark has to start it itself, and mirrors what
# ``sidecar-injector serve`` passes (no access log: one line per admission
# would be a benchmark of the logging module).
UVICORN_SETTINGS: dict[str, Any] = {"log_level": "warning", "access_log": False}


async def raw_app(scope: Scope, receive: Receive, send: Send) -> None:
    """ASGI app answering every HTTP request with the constant response."""
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
    await send({"type": "http.response.start", "status": 200, "headers": _HEADERS})
    await send({"type": "http.response.body", "body": CONSTANT_RESPONSE})


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


def tls_context(cert_dir: Path) -> tuple[ssl.SSLContext, Any]:
    """The webhook's server context for ``cert_dir`` (and the object that owns it).

    Falls back to a plain hardened-as-far-as-we-know context only when
    ``webhook.tls`` is missing, so the harness can run before it lands.
    """
    try:
        from webhook.tls import ReloadingTLS
    except ImportError:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(cert_dir / "tls.crt", cert_dir / "tls.key")
        return context, None
    tls = ReloadingTLS(cert_dir)
    return tls.context, tls


def serve(app: Any, *, host: str, port: int, cert_dir: Path) -> None:
    """Serve ``app`` over HTTPS the way the webhook is served."""
    try:
        from webhook.tls import ReloadingTLS, uvicorn_config_with_tls
    except ImportError:
        context, _ = tls_context(cert_dir)
        config = uvicorn.Config(
            app,
            host=host,
            port=port,
            ssl_context_factory=lambda _config, _default: context,
            **UVICORN_SETTINGS,
        )
    else:
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
    app = raw_app if args.which == "raw" else echo_app()
    serve(app, host=args.host, port=args.port, cert_dir=args.cert_dir)


if __name__ == "__main__":
    main()
