"""A second mutating webhook for the e2e tests: it adds a container of its own.

Real clusters run several mutating webhooks (policy engines, log agents,
other injectors). One that runs after us sees our containers and adds its
own; ours is not called again (``reinvocationPolicy: Never``), and the pod
must still carry exactly one injection and the other webhook's container.
This server is the "other" webhook: HTTPS with a certificate for its own Service name, an
``add`` of one container, and a log of the calls it got.
"""

from __future__ import annotations

import base64
import json
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from harness.kube.pki import write_serving_cert

ADDED_CONTAINER = "audit-agent"


class ContainerAddingWebhook:
    """Answers every AdmissionReview for a pod by appending :data:`ADDED_CONTAINER`.

    Idempotent like a well-behaved webhook should be: a pod that already has
    the container gets no patch, so a reinvocation changes nothing.
    """

    def __init__(self, directory: Path, *, service_host: str) -> None:
        self.ca_file, cert, key = write_serving_cert(
            directory, dns_names=[service_host], ip_addresses=()
        )
        self.calls: list[list[str]] = []  # container names seen, per call
        lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                review = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                request = review["request"]
                names = [c["name"] for c in request["object"]["spec"].get("containers") or []]
                with lock:
                    outer.calls.append(names)
                response: dict[str, Any] = {"uid": request["uid"], "allowed": True}
                if ADDED_CONTAINER not in names:
                    patch = [
                        {
                            "op": "add",
                            "path": "/spec/containers/-",
                            "value": {"name": ADDED_CONTAINER, "image": "registry.invalid/audit:1"},
                        }
                    ]
                    response["patchType"] = "JSONPatch"
                    response["patch"] = base64.b64encode(json.dumps(patch).encode()).decode()
                body = json.dumps(
                    {
                        "apiVersion": review["apiVersion"],
                        "kind": "AdmissionReview",
                        "response": response,
                    }
                ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # the test reads self.calls; access lines are noise

        context = ssl_server_context(cert, key)
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.port: int = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> ContainerAddingWebhook:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=5)

    def configuration(self, *, name: str, namespace: str, service: str) -> dict[str, Any]:
        """Its MutatingWebhookConfiguration, limited to pods in ``namespace``.

        Named so that it sorts after ``sidecar-injector``: the apiserver runs
        mutating webhooks in name order, so this one mutates after ours (and
        is itself reinvoked after the apiserver's own plugins, as such
        webhooks usually are).
        """
        return {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "MutatingWebhookConfiguration",
            "metadata": {"name": name},
            "webhooks": [
                {
                    "name": "audit-agent.e2e.test",
                    "admissionReviewVersions": ["v1"],
                    "sideEffects": "None",
                    "failurePolicy": "Fail",
                    "timeoutSeconds": 5,
                    "reinvocationPolicy": "IfNeeded",
                    "clientConfig": {
                        "service": {
                            "namespace": namespace,
                            "name": service,
                            "port": 443,
                            "path": "/mutate",
                        },
                        "caBundle": base64.b64encode(self.ca_file.read_bytes()).decode(),
                    },
                    "rules": [
                        {
                            "operations": ["CREATE"],
                            "apiGroups": [""],
                            "apiVersions": ["v1"],
                            "resources": ["pods"],
                        }
                    ],
                    "namespaceSelector": {
                        "matchLabels": {"kubernetes.io/metadata.name": namespace}
                    },
                }
            ],
        }


def ssl_server_context(cert: Path, key: Path) -> ssl.SSLContext:
    """A TLS 1.2+ server context for ``cert``/``key`` (the apiserver speaks 1.2 and 1.3)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    return context
