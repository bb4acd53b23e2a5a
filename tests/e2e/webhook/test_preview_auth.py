"""``/preview`` in a cluster, asked with real ServiceAccount tokens of a real kube-apiserver.

The install is applied (``conftest.py``), so its ServiceAccount and bindings
exist; the ``serve`` here runs *as that ServiceAccount* (a kubeconfig with
its token), so what it may do is what ``manifests/base/rbac.yaml`` grants:
the namespace watch, and the TokenReviews and SubjectAccessReviews of
``system:auth-delegator``. The callers are ServiceAccounts too, their tokens
from ``kubectl create token``, their rights from ordinary RBAC objects.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import orjson
import pytest
import yaml

from harness.kube.control_plane import ControlPlane
from harness.kube.install import NAMESPACE, SERVICE, InstalledWebhook, pod_manifest
from harness.server import Server, WebhookClient, running_server
from tests.e2e.webhook.shared import ENABLED, Namespaces

pytestmark = pytest.mark.cluster


@dataclass(frozen=True)
class Cluster:
    """The namespaces and tokens the tests below share."""

    shop: str
    private: str
    viewer_token: str
    stranger_token: str


def token_for(control_plane: ControlPlane, namespace: str, account: str) -> str:
    """A token of ServiceAccount ``namespace/account`` (creating it), as a user would get one."""
    control_plane.kubectl("-n", namespace, "create", "serviceaccount", account)
    return control_plane.kubectl("-n", namespace, "create", "token", account).stdout.strip()


def injector_kubeconfig(control_plane: ControlPlane, path: Path) -> Path:
    """A kubeconfig that acts as the install's own ServiceAccount."""
    done = control_plane.kubectl("-n", NAMESPACE, "create", "token", SERVICE)
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "e2e",
                "cluster": {
                    "server": control_plane.server,
                    "certificate-authority": str(control_plane.ca_file),
                },
            }
        ],
        "users": [{"name": SERVICE, "user": {"token": done.stdout.strip()}}],
        "contexts": [{"name": "e2e", "context": {"cluster": "e2e", "user": SERVICE}}],
        "current-context": "e2e",
    }
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def cluster(control_plane: ControlPlane, namespaces: Namespaces) -> Cluster:
    shop = namespaces.create("shop", labels=ENABLED)
    private = namespaces.create("private", labels=ENABLED)
    viewer = token_for(control_plane, shop, "viewer")
    stranger = token_for(control_plane, shop, "stranger")
    # As for `kubectl get namespace SHOP`: a RoleBinding in that namespace to
    # the built-in `view` suffices (docs/service.md says so).
    control_plane.kubectl(
        "-n",
        shop,
        "create",
        "rolebinding",
        "viewer",
        "--clusterrole=view",
        f"--serviceaccount={shop}:viewer",
    )
    # The answers are remembered for a few seconds, so ask only once RBAC agrees.
    control_plane.wait_for(
        lambda: (
            control_plane.kubectl(
                "auth",
                "can-i",
                "get",
                f"namespaces/{shop}",
                "-n",
                shop,
                f"--as=system:serviceaccount:{shop}:viewer",
                check=False,
            ).stdout.strip()
            == "yes"
        ),
        what="RBAC to let the viewer get its namespace",
    )
    return Cluster(shop, private, viewer, stranger)


@pytest.fixture(scope="module")
def server(
    control_plane: ControlPlane, webhook: InstalledWebhook, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """``serve`` with the install's certificates and config, as the install's ServiceAccount."""
    workdir = tmp_path_factory.mktemp("serve-as-injector")
    kubeconfig = injector_kubeconfig(control_plane, workdir / "kubeconfig")
    args = ["--config", str(webhook.config_file), "--kubeconfig", str(kubeconfig)]
    with running_server(workdir, cert_dir=webhook.certs, args=args) as running:
        yield running


def preview(client: WebhookClient, namespace: str, token: str | None) -> httpx.Response:
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return client.request(
        "POST",
        "/preview",
        content=orjson.dumps(pod_manifest("web")),
        headers=headers,
        params={"namespace": namespace},
    )


def test_a_service_account_that_may_get_the_namespace_previews_it_with_its_labels(
    server: Server, cluster: Cluster
) -> None:
    answer = preview(server.client(), cluster.shop, cluster.viewer_token)
    assert answer.status_code == 200, answer.text
    assert answer.json()["injected"] is True
    assert answer.json()["reason"] == (
        f"namespace {cluster.shop} is labelled sidecar-injection=enabled"
    )


def test_a_namespace_the_service_account_may_not_get_is_a_403(
    server: Server, cluster: Cluster
) -> None:
    client = server.client()
    answer = preview(client, cluster.private, cluster.viewer_token)
    assert answer.status_code == 403
    user = f"system:serviceaccount:{cluster.shop}:viewer"
    assert answer.json() == {
        "error": f"user '{user}' may not get namespace '{cluster.private}',"
        " which this preview reads"
    }
    stranger = preview(client, cluster.shop, cluster.stranger_token)
    assert stranger.status_code == 403


def test_no_token_or_a_token_the_api_server_rejects_is_a_401(
    server: Server, cluster: Cluster
) -> None:
    client = server.client()
    missing = preview(client, cluster.shop, None)
    assert missing.status_code == 401
    assert "kubectl create token" in missing.json()["error"]
    header, payload, signature = cluster.viewer_token.split(".")
    forged = ".".join([header, payload, signature[::-1]])
    for token in (forged, "not-a-token"):
        answer = preview(client, cluster.shop, token)
        assert answer.status_code == 401, token
        assert answer.json()["error"].startswith("the API server did not accept the bearer token")
        assert token not in server.log()


def test_the_install_grants_the_injector_what_previews_need_and_it_used_nothing_else(
    server: Server, cluster: Cluster, control_plane: ControlPlane
) -> None:
    account = f"system:serviceaccount:{NAMESPACE}:{SERVICE}"
    for resource in (
        "tokenreviews.authentication.k8s.io",
        "subjectaccessreviews.authorization.k8s.io",
    ):
        can = control_plane.kubectl("auth", "can-i", "create", resource, f"--as={account}")
        assert can.stdout.strip() == "yes", resource
    # The process served previews as that account, and logged no error answer of the API server.
    assert preview(server.client(), cluster.shop, cluster.viewer_token).status_code == 200
    refused = [line for line in server.log_lines() if "answered the" in line]
    assert refused == [], json.dumps(refused)
