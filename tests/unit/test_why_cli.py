"""``sidecar-injector why`` against an API server serving the objects a test puts there.

The command is run in-process (``main``), its kubeconfig pointing at the fake
API server with an object store routed everywhere: GETs of objects, lists
(by label selector, as the API server filters them) and errors on request,
the same requests the real command makes of a cluster. The install is the
repository's own (``manifests/base``: the webhook configuration, Service,
Deployment) with a ConfigMap the test writes; the pods carry status
annotations the engine itself wrote.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from harness.fake_kube_api import FakeKubeAPI, ObjectStore
from tests import builders
from webhook.cli import main
from webhook.engine import inject
from webhook.engine.config import InjectorConfig
from webhook.manifests.config_file import parse_config
from webhook.manifests.patched import patched

BASE = builders.REPO / "manifests" / "base"
CONFIG = """\
proxy:
  version: v1.40.0
lockedSettings: [xds-address]
"""
ENABLED = {"sidecar-injection": "enabled", "kubernetes.io/metadata.name": "shop"}

Object = dict[str, Any]


@pytest.fixture
def api(fake_api: FakeKubeAPI) -> ObjectStore:
    """The objects the fake API server serves, at every path."""
    store = ObjectStore()
    fake_api.route("/", store)
    return store


@pytest.fixture
def kubeconfig(tmp_path: Path, fake_api: FakeKubeAPI) -> Path:
    return fake_api.write_kubeconfig(tmp_path / "kubeconfig", namespace="shop")


def _base(name: str) -> list[Object]:
    return [d for d in yaml.safe_load_all((BASE / name).read_text()) if d]


def install(api: ObjectStore, config: str = CONFIG) -> None:
    """The repository's install, as the API server would serve it."""
    (hooks,) = _base("mutatingwebhook.yaml")
    api.objects[
        "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/sidecar-injector"
    ] = hooks
    (service,) = _base("service.yaml")
    api.objects["/api/v1/namespaces/mesh-system/services/sidecar-injector"] = service
    (deployment,) = _base("deployment.yaml")
    api.objects["/apis/apps/v1/namespaces/mesh-system/deployments/sidecar-injector"] = deployment
    config_map = {"metadata": {"name": "sidecar-injector-config"}, "data": {"config.yaml": config}}
    api.objects["/api/v1/namespaces/mesh-system/configmaps/sidecar-injector-config"] = config_map


def namespace(api: ObjectStore, name: str = "shop", labels: dict[str, str] | None = None) -> None:
    labels = ENABLED if labels is None else {"kubernetes.io/metadata.name": name, **labels}
    api.objects[f"/api/v1/namespaces/{name}"] = {"metadata": {"name": name, "labels": labels}}


def deployment(
    annotations: dict[str, str] | None = None, labels: dict[str, str] | None = None
) -> Object:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "shop", "uid": "deploy-uid"},
        "spec": {
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {
                    "labels": {"app": "web", **(labels or {})},
                    "annotations": annotations or {},
                },
                "spec": {"containers": [{"name": "app", "image": "nginx"}]},
            },
        },
    }


def replicaset(name: str = "web-7d9f") -> Object:
    """The Deployment's ReplicaSet, labelled with its pod template's labels as the controller does."""
    return {
        "metadata": {
            "name": name,
            "namespace": "shop",
            "uid": f"{name}-uid",
            "labels": {"app": "web", "pod-template-hash": name.rpartition("-")[2]},
            "ownerReferences": [
                {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web", "uid": "deploy-uid",
                 "controller": True}
            ],
        }
    }  # fmt: skip


def pod(
    name: str, *, owner: str = "web-7d9f", injected_with: dict[str, str] | None = None
) -> Object:
    """A running pod of the ReplicaSet; ``injected_with``: namespace labels it was injected under."""
    reference = {
        "apiVersion": "apps/v1",
        "kind": "ReplicaSet",
        "name": owner,
        "uid": f"{owner}-uid",
        "controller": True,
    }
    obj = builders.pod(
        name, image="nginx", namespace="shop", labels={"app": "web"}, ownerReferences=[reference]
    )
    if injected_with is None:
        return obj
    info = builders.namespace("shop", injected_with)
    return patched(inject(obj, namespace=info, config=parse_config(CONFIG, origin="test")))


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["why", *args])
    out, err = capsys.readouterr()
    return code, out, err


# --- the answers --------------------------------------------------------------------------


def test_an_injected_deployment_with_outdated_and_missing_sidecars(
    fake_api: FakeKubeAPI, api: ObjectStore, kubeconfig: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    install(api)
    namespace(api)
    api.objects["/apis/apps/v1/namespaces/shop/deployments/web"] = deployment()
    api.objects["/apis/apps/v1/namespaces/shop/replicasets/web-7d9f"] = replicaset()
    api.objects["/api/v1/namespaces/shop/pods/web-7d9f-aaaaa"] = pod(
        "web-7d9f-aaaaa", injected_with=ENABLED
    )
    old = {**ENABLED, "sidecar.mesh.io/log-level": "debug"}
    api.objects["/api/v1/namespaces/shop/pods/web-7d9f-bbbbb"] = pod(
        "web-7d9f-bbbbb", injected_with=old
    )
    api.objects["/api/v1/namespaces/shop/pods/web-7d9f-ccccc"] = pod("web-7d9f-ccccc")
    api.objects["/api/v1/namespaces/shop/pods/other"] = pod("other", owner="someone-else")

    code, out, err = run(capsys, "deploy/web", "--kubeconfig", str(kubeconfig))

    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0] == f"deployment/web in namespace shop (API server {fake_api.url})"
    assert lines[1] == "injected now: yes: namespace shop is labelled sidecar-injection=enabled"
    assert lines[2] == "webhook: namespace.sidecar.mesh.io (sidecar-injector) is called for it"
    assert lines[3] == "revision: default (no sidecar.mesh.io/rev label)"
    assert lines[4] == "injector config: ConfigMap mesh-system/sidecar-injector-config"
    assert lines[5] == "settings:"
    settings = {
        line.split()[0]: line.split(None, 1)[1] for line in lines[6:20] if line.startswith("  ")
    }
    assert settings["sidecar.mesh.io/proxy-version"].split() == ["v1.40.0", "injector", "config"]
    assert settings["sidecar.mesh.io/log-level"].split() == ["warning", "built-in", "default"]
    assert settings["sidecar.mesh.io/xds-address"].split() == [
        "(none)",
        "built-in",
        "default",
        "locked",
    ]
    assert "pods: 3 examined: 2 with the sidecar (1 outdated), 1 without" in lines
    assert (
        "  web-7d9f-bbbbb: outdated: its containers differ from what is injected now"
        " (settings or config changed)"
    ) in lines
    assert "  web-7d9f-ccccc: no sidecar" in lines
    assert lines[-1] == "fix: kubectl rollout restart -n shop deployment/web"


def test_json_for_scripts(
    api: ObjectStore, kubeconfig: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    install(api)
    namespace(api)
    api.objects["/apis/apps/v1/namespaces/shop/deployments/web"] = deployment()

    code, out, _ = run(capsys, "deployment.apps/web", "--kubeconfig", str(kubeconfig), "-o", "json")

    assert code == 0
    answer = json.loads(out)
    assert answer["kind"] == "Deployment"
    assert (answer["name"], answer["namespace"]) == ("web", "shop")
    assert answer["injected"] is True
    assert answer["code"] == "namespace-enabled"
    assert answer["webhook"]["calledBy"] == ["namespace.sidecar.mesh.io"]
    assert answer["revision"] == {
        "name": "default",
        "source": "no sidecar.mesh.io/rev label",
        "recorded": [],
    }
    assert answer["settings"]["sidecar.mesh.io/proxy-version"] == {
        "value": "v1.40.0",
        "source": "injector config",
    }
    assert answer["settings"]["sidecar.mesh.io/xds-address"]["locked"] is True
    assert answer["pods"]["examined"] == 0
    assert answer["fix"] is None


def test_a_skip_says_why_and_shows_what_an_injected_pod_would_get(
    api: ObjectStore, kubeconfig: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    install(api)
    namespace(api)
    api.objects["/apis/apps/v1/namespaces/shop/deployments/web"] = deployment(
        annotations={"sidecar.mesh.io/inject": "false"}
    )
    code, out, _ = run(capsys, "deploy/web", "--kubeconfig", str(kubeconfig))
    assert code == 0
    assert "injected now: no: pod annotation sidecar.mesh.io/inject=false" in out
    assert "settings (what an injected pod would get; this one is not injected):" in out


def test_a_refusal_names_the_key_where_it_was_set_and_the_value(
    api: ObjectStore, kubeconfig: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    install(api)
    namespace(api)
    api.objects["/apis/apps/v1/namespaces/shop/deployments/web"] = deployment(
        annotations={"sidecar.mesh.io/proxy-cpu-request": "lots"}
    )
    code, out, _ = run(capsys, "deploy/web", "--kubeconfig", str(kubeconfig), "-o", "json")
    answer = json.loads(out)
    assert code == 0
    assert answer["injected"] is False
    assert answer["code"] == "refused"
    assert answer["reason"].startswith(
        "refused: Deployment shop/web: pod annotation sidecar.mesh.io/proxy-cpu-request='lots'"
        " is invalid"
    )
    assert answer["settings"] == {}
    assert "sidecar.mesh.io/proxy-cpu-request" in answer["settingsNote"]


def test_an_opt_in_by_annotation_alone_reaches_the_object_webhook_by_its_match_conditions(
    api: ObjectStore, kubeconfig: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    install(api)
    namespace(api, labels={})
    api.objects["/apis/apps/v1/namespaces/shop/deployments/web"] = deployment(
        annotations={"sidecar.mesh.io/inject": "true"}
    )
    _code, out, _ = run(capsys, "deploy/web", "--kubeconfig", str(kubeconfig), "-o", "json")
    answer = json.loads(out)
    assert answer["injected"] is True
    assert answer["webhook"]["calledBy"] == ["object.sidecar.mesh.io"]
    assert answer["webhook"]["matchConditions"] == 0  # the install's own: evaluated
    # Without the opt-in, the object webhook's selectors still match, but its
    # matchConditions keep the API server from calling it.
    api.objects["/apis/apps/v1/namespaces/shop/deployments/web"] = deployment()
    _, out, _ = run(capsys, "deploy/web", "--kubeconfig", str(kubeconfig), "-o", "json")
    answer = json.loads(out)
    assert answer["injected"] is False
    assert answer["code"] == "not-enabled"
    assert answer["webhook"]["calledBy"] == []
    assert (
        "object.sidecar.mesh.io's matchConditions leave the pod out (what it says itself)"
        in answer["webhook"]["leftOut"]
    )


def test_a_rev_label_no_installed_revision_answers_to_reaches_no_webhook(
    api: ObjectStore, kubeconfig: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    install(api)
    namespace(api, labels={"sidecar-injection": "enabled", "sidecar.mesh.io/rev": "gone"})
    api.objects["/apis/apps/v1/namespaces/shop/deployments/web"] = deployment()
    _code, out, _ = run(capsys, "deploy/web", "--kubeconfig", str(kubeconfig), "-o", "json")
    answer = json.loads(out)
    assert answer["injected"] is False
    assert answer["code"] == "not-selected"
    assert answer["webhook"]["calledBy"] == []


def test_a_running_injected_pod_is_explained_as_it_was_created_with_its_revision(
    api: ObjectStore, kubeconfig: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    install(api)
    namespace(api, labels={"sidecar-injection": "enabled", "sidecar.mesh.io/rev": "default"})
    running = pod("web-7d9f-aaaaa", injected_with=ENABLED)
    status = json.loads(running["metadata"]["annotations"]["sidecar.mesh.io/status"])
    running["metadata"]["annotations"]["sidecar.mesh.io/status"] = json.dumps(
        {**status, "revision": "canary"}
    )
    api.objects["/api/v1/namespaces/shop/pods/web-7d9f-aaaaa"] = running
    api.objects["/apis/apps/v1/namespaces/shop/replicasets/web-7d9f"] = replicaset()

    code, out, _ = run(capsys, "po/web-7d9f-aaaaa", "--kubeconfig", str(kubeconfig))

    assert code == 0
    # The namespace's rev label picks the revision (and wins over sidecar-injection=enabled).
    assert "injected now: yes: namespace shop is labelled sidecar.mesh.io/rev=default" in out
    assert (
        "revision: default (namespace label sidecar.mesh.io/rev); its running pods record canary"
        in out
    )
    assert "pods: 1 examined: 1 with the sidecar" in out


def test_a_pod_label_chooses_the_revision_over_the_namespaces() -> None:
    from webhook.ops.why.explain import serving_revision

    revision = serving_revision({"sidecar.mesh.io/rev": "blue"}, {"sidecar.mesh.io/rev": "green"})
    assert (revision.name, revision.source) == ("blue", "pod label sidecar.mesh.io/rev")


def test_without_an_install_the_built_in_config_decides_and_a_note_says_so(
    api: ObjectStore, kubeconfig: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    namespace(api)
    api.objects["/apis/apps/v1/namespaces/shop/deployments/web"] = deployment()
    code, out, _ = run(capsys, "deploy/web", "--kubeconfig", str(kubeconfig))
    assert code == 0
    assert "webhook: unknown: the webhook configuration sidecar-injector could not be read" in out
    assert "note: no webhook configuration sidecar-injector: nothing calls the injector" in out
    assert "injector config: built-in defaults" in out


def test_a_config_file_given_replaces_the_installs(
    api: ObjectStore, kubeconfig: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    install(api)
    namespace(api)
    api.objects["/apis/apps/v1/namespaces/shop/deployments/web"] = deployment()
    config = tmp_path / "config.yaml"
    config.write_text("proxy:\n  version: v9.9.9\n")
    _, out, _ = run(
        capsys, "deploy/web", "--kubeconfig", str(kubeconfig), "--config", str(config), "-o", "json"
    )
    answer = json.loads(out)
    assert answer["config"] == f"--config {config}"
    assert answer["settings"]["sidecar.mesh.io/proxy-version"]["value"] == "v9.9.9"


# --- one-line errors ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("web", "web' is not KIND/NAME (for example deployment/web or pod/web-0)"),
        ("widget/web", "'widget' is not a kind why explains (pod, deployment, statefulset,"),
        ("deploy/Bad_Name", "'Bad_Name' is not a Deployment name"),
        ("deploy/", "'' is not a Deployment name"),
    ],
)
def test_a_bad_kind_or_name_is_one_line(
    kubeconfig: Path, capsys: pytest.CaptureFixture[str], target: str, message: str
) -> None:
    code, out, err = run(capsys, target, "--kubeconfig", str(kubeconfig))
    assert code == 1
    assert out == ""
    assert err.count("\n") == 1
    assert message in err


def test_a_missing_object_is_one_line(
    api: ObjectStore, kubeconfig: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, "sts/db", "--kubeconfig", str(kubeconfig), "-n", "shop")
    assert (code, out) == (1, "")
    assert err == "sidecar-injector: error: statefulset db in namespace shop not found\n"


def test_no_access_is_one_line_with_the_api_servers_message_escaped(
    api: ObjectStore, kubeconfig: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    api.errors["/apis/apps/v1/namespaces/shop/deployments/web"] = (
        403,
        'deployments.apps "web" is forbidden: User "dev" cannot get \x1b[31mresource\x1b[0m',
    )
    code, out, err = run(capsys, "deploy/web", "--kubeconfig", str(kubeconfig))
    assert (code, out) == (1, "")
    assert err == (
        "sidecar-injector: error: no access to deployment web in namespace shop: HTTP 403: "
        'deployments.apps "web" is forbidden: User "dev" cannot get \\x1b[31mresource\\x1b[0m\n'
    )


def test_no_access_to_the_namespace_is_one_line_too(
    api: ObjectStore, kubeconfig: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    api.objects["/apis/apps/v1/namespaces/shop/deployments/web"] = deployment()
    api.errors["/api/v1/namespaces/shop"] = (403, "forbidden")
    code, _, err = run(capsys, "deploy/web", "--kubeconfig", str(kubeconfig))
    assert code == 1
    assert err == "sidecar-injector: error: no access to namespace shop: HTTP 403: forbidden\n"


def test_an_api_server_that_cannot_be_reached_is_one_line(
    fake_api: FakeKubeAPI, kubeconfig: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fake_api.stop()
    code, out, err = run(capsys, "deploy/web", "--kubeconfig", str(kubeconfig), "--timeout", "2")
    assert (code, out) == (1, "")
    assert err.startswith(
        f"sidecar-injector: error: cannot reach the API server at {fake_api.url}: "
    )
    assert err.count("\n") == 1


def test_an_object_over_the_read_bound_is_one_line(
    api: ObjectStore, kubeconfig: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    huge = deployment()
    huge["metadata"]["annotations"] = {"pad": "x" * (5 * 1024 * 1024)}
    api.objects["/apis/apps/v1/namespaces/shop/deployments/web"] = huge
    code, _, err = run(capsys, "deploy/web", "--kubeconfig", str(kubeconfig))
    assert code == 1
    assert err.startswith("sidecar-injector: error: cannot read deployment web in namespace shop:")
    assert "over the 4194304-byte limit" in err
    assert err.count("\n") == 1


def test_the_namespace_defaults_to_the_kubeconfig_contexts(
    api: ObjectStore, kubeconfig: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(capsys, "job/nightly", "--kubeconfig", str(kubeconfig))
    assert code == 1
    assert "job nightly in namespace shop not found" in err


def test_the_built_in_config_is_what_no_config_means() -> None:
    assert parse_config("{}", origin="test") == InjectorConfig()
