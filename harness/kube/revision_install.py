"""Injector revisions from the Helm chart on the e2e control plane, each served by a local process.

What :mod:`harness.kube.install` does for ``manifests/``, for any revision of
``charts/sidecar-injector``: ``helm template`` of the revision (the chart
users install, with ``certificates.mode=provided``: there is no kubelet to run
the certificates Job, so ``sidecar-injector certs`` makes them here for the
revision's Service), ``kubectl apply`` of the objects (the Deployment's pods
stay Pending), then a ``sidecar-injector serve`` with the rendered config
behind the revision's Service (an EndpointSlice to 127.0.0.1).

:class:`MeshSystem` owns the namespace every revision lives in, as the
default revision's release would (the chart leaves it to the default
revision): created as the base labels it, deleted and waited for at the end.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from harness.kube.binaries import helm_binary
from harness.kube.control_plane import ControlPlane
from harness.kube.install import NAMESPACE, MetricsSnapshot, Object
from harness.metrics import families
from harness.server import CLI, Server, running_server
from harness.tls_client import https_get

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "sidecar-injector"
MESH_SYSTEM_LABELS = {
    "sidecar-injection": "disabled",
    "pod-security.kubernetes.io/enforce": "restricted",
    "pod-security.kubernetes.io/enforce-version": "latest",
}


def object_name(revision: str) -> str:
    """The revision's objects' name (webhook.manifests.revisions.object_name)."""
    return "sidecar-injector" if revision == "default" else f"sidecar-injector-{revision}"


def helm_template(revision: str, values: Mapping[str, Any], workdir: Path) -> list[Object]:
    """The chart's objects for ``revision`` with ``values`` (a values file in ``workdir``)."""
    helm = helm_binary(build=True)
    if helm is None:
        raise RuntimeError("helm is not cached and cannot be built here: make helm")
    values_file = workdir / f"values-{revision}.yaml"
    values_file.write_text(yaml.safe_dump({**values, "revision": revision}), encoding="utf-8")
    done = subprocess.run(
        [str(helm), "template", object_name(revision), str(CHART), "--namespace", NAMESPACE,
         "--values", str(values_file)],
        capture_output=True, text=True, check=False, timeout=120,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"helm template failed: {done.stderr.strip()}")
    return [obj for obj in yaml.safe_load_all(done.stdout) if obj]


def merged(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``overrides`` merged in, recursively for nested mappings."""
    out = dict(base)
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merged(out[key], value)
        else:
            out[key] = value
    return out


class MeshSystem:
    """The namespace the revisions live in, made for the tests and removed after them."""

    def __init__(self, control_plane: ControlPlane) -> None:
        self.control_plane = control_plane

    def __enter__(self) -> MeshSystem:
        self.control_plane.wait_for(
            lambda: self.control_plane.kubectl(
                "get", "namespace", NAMESPACE, check=False
            ).returncode != 0,
            what=f"an earlier {NAMESPACE} to be gone",
            timeout=180,
        )  # fmt: skip
        self.control_plane.create_namespace(NAMESPACE, labels=MESH_SYSTEM_LABELS)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.control_plane.kubectl(
            "delete", "namespace", NAMESPACE, "--ignore-not-found", "--wait=true",
            "--timeout=180s", check=False, timeout=200,
        )  # fmt: skip


class ChartRevision:
    """One revision of the chart applied to a control plane and served from this host.

    ``config`` is merged into the chart's ``config`` value (a newer proxy
    version, say). :meth:`close` removes the webhook configuration first
    (failurePolicy Fail) and then the rest, and is safe after a partial start.
    """

    def __init__(
        self,
        control_plane: ControlPlane,
        revision: str,
        *,
        config: Mapping[str, Any] | None = None,
    ) -> None:
        self.control_plane = control_plane
        self.revision = revision
        self.name = object_name(revision)
        self.config_overrides = dict(config or {})
        self.workdir = Path(tempfile.mkdtemp(prefix=f"sidecar-injector-{revision}-"))
        self.certs = self.workdir / "certs"
        self.objects: list[Object] = []
        self.config_file = self.workdir / "config.yaml"
        self._server: Server | None = None
        self._stack = contextlib.ExitStack()

    @property
    def server(self) -> Server:
        if self._server is None:
            raise RuntimeError(f"revision {self.revision} is not being served")
        return self._server

    def start(self) -> ChartRevision:
        """Certificates, render, apply, then serve and route the Service here."""
        subprocess.run(
            [CLI, "certs", "--out", str(self.certs), "--service", self.name,
             "--namespace", NAMESPACE],
            check=True, capture_output=True,
        )  # fmt: skip
        values = {
            "namespace": {"create": False},
            "certificates": {
                "mode": "provided",
                "caBundle": (self.certs / "ca.crt").read_text(encoding="utf-8"),
            },
            "config": merged(_chart_config(), self.config_overrides),
        }
        self.objects = helm_template(self.revision, values, self.workdir)
        (config_map,) = [o for o in self.objects if o["kind"] == "ConfigMap"]
        self.config_file.write_text(config_map["data"]["config.yaml"], encoding="utf-8")
        self.control_plane.kubectl(
            "apply", "-f", "-", input=yaml.safe_dump_all(self.objects), timeout=120
        )
        self._server = self._stack.enter_context(
            running_server(
                self.workdir / "serve",
                cert_dir=self.certs,
                args=["--config", str(self.config_file),
                      "--kubeconfig", str(self.control_plane.kubeconfig)],
                server_name=f"{self.name}.{NAMESPACE}.svc",
            )
        )  # fmt: skip
        self.control_plane.route_service_to_loopback(NAMESPACE, self.name, port=self.server.port)
        return self

    def metrics(self) -> MetricsSnapshot:
        """The revision's process's counters (``/metrics`` over verified HTTPS)."""
        status, body, _ = https_get(
            self.server.port,
            self.server.ca_file,
            "/metrics",
            server_hostname=self.server.server_name,
        )
        if status != 200:
            raise RuntimeError(f"/metrics of revision {self.revision} answered {status}")
        return MetricsSnapshot.parse(body.decode())

    def configuration(self) -> Object:
        """The revision's MutatingWebhookConfiguration as the API server has it."""
        done = self.control_plane.kubectl(
            "get", "mutatingwebhookconfiguration", self.name, "-o", "json"
        )
        found: Object = json.loads(done.stdout)
        return found

    def close(self) -> None:
        try:
            self.control_plane.kubectl(
                "delete", "mutatingwebhookconfiguration", self.name, "--ignore-not-found",
                check=False,
            )  # fmt: skip
            self._server = None
            self._stack.close()
        finally:
            try:
                if self.objects:
                    self.control_plane.kubectl(
                        "delete", "-f", "-", "--ignore-not-found", "--wait=false",
                        input=yaml.safe_dump_all(self.objects), check=False, timeout=120,
                    )  # fmt: skip
            finally:
                shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> ChartRevision:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _chart_config() -> dict[str, Any]:
    values = yaml.safe_load((CHART / "values.yaml").read_text(encoding="utf-8"))
    config: dict[str, Any] = values["config"]
    return config


# --- the API server's own admission metrics ----------------------------------------------


def apiserver_admission(control_plane: ControlPlane) -> dict[tuple[str, str], float]:
    """(metric, webhook name) -> value of the API server's admission counters for webhooks.

    ``webhook_request_total``: calls it made to a webhook (any outcome);
    ``match_condition_exclusions_total``: admissions where a webhook's
    selectors matched but its matchConditions kept the API server from
    calling it.
    """
    text = control_plane.kubectl("get", "--raw", "/metrics", timeout=60).stdout
    wanted = {
        "apiserver_admission_webhook_request": "requests",
        "apiserver_admission_match_condition_exclusions": "exclusions",
    }
    found: dict[tuple[str, str], float] = {}
    for family in families(text, wanted):
        short = wanted[family.name]
        for sample in family.samples:
            if not sample.name.endswith("_total"):
                continue
            key = (short, sample.labels.get("name", ""))
            found[key] = found.get(key, 0.0) + sample.value
    return found
