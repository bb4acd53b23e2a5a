"""What the ``check`` tests share: running ``check``, breaking the install, putting it back.

``run_check`` runs the command through the CLI's own ``main`` in this process
(the console script once, ``run_cli``); the install is the package's
(``conftest.py``), its webhook configuration patched and put back, its
serving certificate rewritten, a pod creation tried until it fails.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import io
import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from harness.kube.admin_api import ApiRefused
from harness.kube.control_plane import ControlPlane
from harness.kube.install import (
    CONFIGURATION,
    NAMESPACE,
    SERVICE,
    InstalledWebhook,
    Object,
    create,
    pod_manifest,
    wait_until_injecting,
)
from harness.server import CLI
from webhook.cli import main as cli
from webhook.pki import certs

MESHED = "check-shop"
EFFECT_TIMEOUT = 30.0


@dataclass(frozen=True)
class CheckRun:
    """One run of ``sidecar-injector check``: exit code, the JSON document, stderr."""

    returncode: int
    document: dict[str, Any]
    stderr: str

    def check(self, name: str) -> dict[str, Any]:
        found: dict[str, Any] = next(c for c in self.document["checks"] if c["name"] == name)
        return found

    def status(self, name: str) -> str:
        status: str = self.check(name)["status"]
        return status

    def statuses(self) -> dict[str, str]:
        return {c["name"]: c["status"] for c in self.document["checks"]}

    def __repr__(self) -> str:
        # What an assertion message needs: the checks that did not pass.
        lines = [f"exit {self.returncode}"]
        for c in self.document["checks"]:
            if c["status"] != "pass":
                lines.append(f"{c['status']} {c['name']}: {c['message']} | {c['details']}")
        return "\n".join(lines)


def run_check(control_plane: ControlPlane, *args: str) -> CheckRun:
    """``sidecar-injector check -o json`` through the CLI's own ``main``, in this process.

    The same code path as the console script minus the interpreter start and
    imports (seconds each on a loaded machine, and these tests run it about
    thirty times); the console script itself is run by the text-output test.
    """
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli(["check", "--kubeconfig", str(control_plane.kubeconfig), "-o", "json", *args])
    assert out.getvalue(), err.getvalue()
    return CheckRun(code, json.loads(out.getvalue()), err.getvalue())


def run_cli(control_plane: ControlPlane, *args: str) -> subprocess.CompletedProcess[str]:
    """The ``sidecar-injector check`` console script itself, against the control plane."""
    env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
    return subprocess.run(
        [CLI, "check", "--kubeconfig", str(control_plane.kubeconfig), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=180,
        check=False,
    )


def configuration(install: InstalledWebhook) -> Object:
    """The MutatingWebhookConfiguration as the install rendered it."""
    found: Object = next(
        o for o in install.objects if o.get("kind") == "MutatingWebhookConfiguration"
    )
    return found


@contextlib.contextmanager
def configuration_restored(install: InstalledWebhook) -> Iterator[None]:
    """Put the rendered MutatingWebhookConfiguration back afterwards, and wait until it works."""
    try:
        yield
    finally:
        install.control_plane.kubectl(
            "apply", "-f", "-", input=yaml.safe_dump(configuration(install))
        )
        wait_until_injecting(install.control_plane, MESHED, timeout=60)


def patch_configuration(control_plane: ControlPlane, *operations: Object) -> None:
    """Apply JSON Patch ``operations`` to the install's MutatingWebhookConfiguration."""
    control_plane.kubectl(
        "patch",
        "mutatingwebhookconfiguration",
        CONFIGURATION,
        "--type=json",
        "-p",
        json.dumps(list(operations)),
    )


def live_webhooks(control_plane: ControlPlane) -> list[Object]:
    """The webhooks of the install's MutatingWebhookConfiguration, as the API server has them."""
    done = control_plane.kubectl("get", "mutatingwebhookconfiguration", CONFIGURATION, "-o", "json")
    webhooks: list[Object] = json.loads(done.stdout)["webhooks"]
    return webhooks


def ca_bundle_operations(control_plane: ControlPlane, pem: bytes) -> list[Object]:
    """JSON Patch operations setting ``pem`` as every webhook's caBundle."""
    value = base64.b64encode(pem).decode()
    return [
        {"op": "replace", "path": f"/webhooks/{index}/clientConfig/caBundle", "value": value}
        for index in range(len(live_webhooks(control_plane)))
    ]


def selector_expression_path(control_plane: ControlPlane, webhook: str, key: str) -> str:
    """The JSON Pointer of ``webhook``'s namespaceSelector expression on ``key``."""
    for index, found in enumerate(live_webhooks(control_plane)):
        if found["name"] == webhook:
            expressions = found["namespaceSelector"]["matchExpressions"]
            position = next(i for i, e in enumerate(expressions) if e["key"] == key)
            return f"/webhooks/{index}/namespaceSelector/matchExpressions/{position}"
    raise AssertionError(f"no webhook {webhook} in {CONFIGURATION}")


def creation_error(control_plane: ControlPlane) -> str:
    """Create a pod in the meshed namespace until it fails; the error (the API server's view)."""
    errors: list[str] = []

    def fails() -> bool:
        try:
            create(control_plane, MESHED, pod_manifest(f"probe-{uuid.uuid4().hex[:6]}"))
        except ApiRefused as error:
            errors.append(error.message)
            return True
        return False

    control_plane.wait_for(fails, what="pod creation to fail", timeout=EFFECT_TIMEOUT)
    return errors[-1]


def write_leaf(cert_dir: Path, *, days: int, started_days_ago: float = 0.0) -> None:
    """A serving certificate under the directory's CA (key first, as ``certs`` writes)."""
    ca = certs.load_ca(cert_dir / "ca.crt", cert_dir / "ca.key")
    dns, ips = certs.service_names(SERVICE, NAMESPACE)
    leaf = certs.make_serving_cert(
        ca,
        dns_names=dns,
        ips=ips,
        days=days,
        now=datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=started_days_ago),
    )
    (cert_dir / "tls.key").write_bytes(leaf.key_pem())
    (cert_dir / "tls.crt").write_bytes(leaf.cert_pem())
