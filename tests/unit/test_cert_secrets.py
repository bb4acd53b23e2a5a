"""``certs --secret``'s work against the fake API server: a CA kept, a serving pair, the caBundle."""

from __future__ import annotations

import base64
import datetime
from pathlib import Path

import pytest
from cryptography import x509

from harness.fake_kube_api import FakeKubeAPI, ObjectStore
from tests.builders import WEBHOOK_CONFIGURATIONS, webhook_configuration
from tests.unit.check.support import cluster_of
from webhook.cluster.reader import Cluster
from webhook.ops.cert_secrets import RENEW_DAYS, Done, ensure
from webhook.pki.certs import CertError

SECRETS = "/api/v1/namespaces/mesh-system/secrets"
CONFIGURATION = f"{WEBHOOK_CONFIGURATIONS}/sidecar-injector-canary"


@pytest.fixture
def store(fake_api: FakeKubeAPI) -> ObjectStore:
    objects = ObjectStore()
    objects.creates = True
    fake_api.route("/", objects)
    return objects


@pytest.fixture
def cluster(fake_api: FakeKubeAPI, tmp_path: Path) -> Cluster:
    return cluster_of(fake_api, tmp_path, timeout=5)


def run(cluster: Cluster, *, now: datetime.datetime | None = None, days: int = 365) -> Done:
    return ensure(
        cluster,
        namespace="mesh-system",
        service="sidecar-injector-canary",
        secret="sidecar-injector-tls-canary",
        ca_secret="sidecar-injector-ca-canary",
        configuration="sidecar-injector-canary",
        days=days,
        now=now,
    )


def data(store: ObjectStore, name: str, key: str) -> bytes:
    return base64.b64decode(store.objects[f"{SECRETS}/{name}"]["data"][key])


def test_the_first_run_makes_the_ca_and_the_pair_and_waits_for_the_configuration(
    store: ObjectStore, cluster: Cluster
) -> None:
    done = run(cluster)
    assert (done.ca_made, done.serving_written, done.bundles_set) == (True, True, None)
    ca = x509.load_pem_x509_certificate(data(store, "sidecar-injector-ca-canary", "ca.crt"))
    leaf = x509.load_pem_x509_certificate(data(store, "sidecar-injector-tls-canary", "tls.crt"))
    leaf.verify_directly_issued_by(ca)
    names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "sidecar-injector-canary.mesh-system.svc" in names.get_values_for_type(x509.DNSName)
    assert data(store, "sidecar-injector-tls-canary", "ca.crt") == data(
        store, "sidecar-injector-ca-canary", "ca.crt"
    )
    assert store.objects[f"{SECRETS}/sidecar-injector-tls-canary"]["type"] == "kubernetes.io/tls"
    # The CA's key is not in the Secret the Deployment mounts.
    assert "ca.key" not in store.objects[f"{SECRETS}/sidecar-injector-tls-canary"]["data"]


def test_later_runs_keep_the_ca_and_a_fitting_pair_and_set_the_ca_bundle(
    store: ObjectStore, cluster: Cluster
) -> None:
    run(cluster)
    ca, leaf = (
        data(store, "sidecar-injector-ca-canary", "ca.crt"),
        data(store, "sidecar-injector-tls-canary", "tls.crt"),
    )
    store.objects[CONFIGURATION] = webhook_configuration("canary")
    done = run(cluster)
    assert (done.ca_made, done.serving_written, done.bundles_set) == (False, False, 2)
    assert data(store, "sidecar-injector-ca-canary", "ca.crt") == ca
    assert data(store, "sidecar-injector-tls-canary", "tls.crt") == leaf
    bundles = {h["clientConfig"]["caBundle"] for h in store.objects[CONFIGURATION]["webhooks"]}
    assert bundles == {base64.b64encode(ca).decode()}
    assert run(cluster).bundles_set == 0


def test_a_pair_near_its_end_is_replaced_under_the_same_ca(
    store: ObjectStore, cluster: Cluster
) -> None:
    run(cluster, days=RENEW_DAYS + 5)
    ca = data(store, "sidecar-injector-ca-canary", "ca.crt")
    leaf = data(store, "sidecar-injector-tls-canary", "tls.crt")
    later = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=10)
    done = run(cluster, now=later)
    assert done.serving_written
    assert data(store, "sidecar-injector-tls-canary", "tls.crt") != leaf
    assert data(store, "sidecar-injector-ca-canary", "ca.crt") == ca


def test_half_a_ca_is_refused_rather_than_replaced(store: ObjectStore, cluster: Cluster) -> None:
    store.objects[f"{SECRETS}/sidecar-injector-ca-canary"] = {
        "metadata": {"name": "sidecar-injector-ca-canary", "resourceVersion": "1"},
        "data": {"ca.crt": base64.b64encode(b"x").decode()},
    }
    with pytest.raises(CertError, match=r"has no ca\.crt and ca\.key"):
        run(cluster)


def test_a_secret_changed_meanwhile_is_read_again(store: ObjectStore, cluster: Cluster) -> None:
    run(cluster)
    path = f"{SECRETS}/sidecar-injector-tls-canary"
    store.objects[path]["data"]["tls.crt"] = base64.b64encode(b"not a certificate").decode()
    store.conflicts[path] = 1
    done = run(cluster)
    assert done.serving_written
    x509.load_pem_x509_certificate(data(store, "sidecar-injector-tls-canary", "tls.crt"))
