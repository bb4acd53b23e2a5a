"""``check``'s parts that need no cluster: selectors, endpoints, output, bounds.

The checks themselves run against the real install on kube-apiserver
(``tests/e2e/test_cluster_check.py``) and each alone in ``tests/test_check_units.py``;
here are the rules they apply, table by table, and the bounds that keep a hostile or huge API server from hanging or
exhausting ``check`` (a real HTTP server that misbehaves on purpose).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from webhook.cluster import kube
from webhook.cluster.reader import PAGE_LIMIT
from webhook.ops.check import (
    CHECKS,
    Cluster,
    ClusterError,
    Context,
    Endpoint,
    Options,
    Result,
    check_cluster,
    probe_pod,
    render_json,
    render_text,
    run,
    selector_matches,
)
from webhook.ops.check.context import ServiceRef, WebhookConfiguration
from webhook.ops.check.discover_install import config_volume, endpoints_on
from webhook.ops.check.install_checks import bundle_hint, renew_hint
from webhook.ops.check.namespace_checks import outdated_sidecars

# --- label selectors ----------------------------------------------------------------

KUBE_SYSTEM = {"kubernetes.io/metadata.name": "kube-system"}
ENABLED_SHOP = {"kubernetes.io/metadata.name": "shop", "sidecar-injection": "enabled"}
EXCLUDE_BY_NAME = {
    "key": "kubernetes.io/metadata.name",
    "operator": "NotIn",
    "values": ["kube-system", "mesh-system"],
}


@pytest.mark.parametrize(
    ("selector", "labels", "selected"),
    [
        (None, KUBE_SYSTEM, True),
        ({}, KUBE_SYSTEM, True),
        ({"matchLabels": {"sidecar-injection": "enabled"}}, ENABLED_SHOP, True),
        ({"matchLabels": {"sidecar-injection": "enabled"}}, KUBE_SYSTEM, False),
        ({"matchExpressions": [EXCLUDE_BY_NAME]}, KUBE_SYSTEM, False),
        ({"matchExpressions": [EXCLUDE_BY_NAME]}, ENABLED_SHOP, True),
        # NotIn holds for a missing key: the install's object webhook relies on it.
        (
            {
                "matchExpressions": [
                    {"key": "sidecar-injection", "operator": "NotIn", "values": ["enabled"]}
                ]
            },
            KUBE_SYSTEM,
            True,
        ),
        (
            {"matchExpressions": [{"key": "sidecar-injection", "operator": "Exists"}]},
            KUBE_SYSTEM,
            False,
        ),
        (
            {"matchExpressions": [{"key": "sidecar-injection", "operator": "DoesNotExist"}]},
            KUBE_SYSTEM,
            True,
        ),
        (
            {"matchExpressions": [{"key": "x", "operator": "In", "values": ["a"]}]},
            {"x": "b"},
            False,
        ),
        (
            {"matchExpressions": [{"key": "x", "operator": "Gt", "values": ["1"]}]},
            {"x": "2"},
            False,
        ),
        # Both parts must hold.
        (
            {
                "matchLabels": {"sidecar-injection": "enabled"},
                "matchExpressions": [EXCLUDE_BY_NAME],
            },
            {**KUBE_SYSTEM, "sidecar-injection": "enabled"},
            False,
        ),
    ],
)
def test_label_selectors_are_evaluated_as_the_api_server_does(
    selector: dict[str, Any] | None, labels: dict[str, str], selected: bool
) -> None:
    assert selector_matches(selector, labels) is selected


# --- endpoints and the injector's config ---------------------------------------------


def test_ready_endpoints_are_read_from_every_slice_on_the_webhooks_port() -> None:
    slices = [
        {
            "ports": [{"name": "https", "port": 8443}, {"name": "metrics", "port": 9090}],
            "endpoints": [
                {"addresses": ["10.0.0.1"], "conditions": {"ready": True}},
                {
                    "addresses": ["10.0.0.2"],
                    "conditions": {"ready": False},
                    "targetRef": {"kind": "Pod", "name": "injector-b"},
                },
                # No condition at all counts as ready.
                {"addresses": ["10.0.0.3"], "targetRef": {"kind": "Pod", "name": "injector-c"}},
                {"addresses": []},
            ],
        },
        {"ports": [{"name": "other", "port": 1}], "endpoints": [{"addresses": ["10.9.9.9"]}]},
        {"ports": [{"name": "https", "port": 8443}], "endpoints": [{"addresses": ["10.0.0.1"]}]},
    ]
    ready, unready = endpoints_on(slices, "https")
    assert ready == [Endpoint("10.0.0.1", 8443, None), Endpoint("10.0.0.3", 8443, "injector-c")]
    assert unready == [Endpoint("10.0.0.2", 8443, "injector-b")]
    assert str(Endpoint("fd00::1", 8443, "p")) == "[fd00::1]:8443 (pod p)"


def _deployment(
    args: list[str], mounts: list[dict[str, Any]], volumes: list[dict[str, Any]]
) -> Any:
    return {
        "spec": {
            "template": {
                "spec": {
                    "containers": [{"name": "injector", "args": args, "volumeMounts": mounts}],
                    "volumes": volumes,
                }
            }
        }
    }


def test_the_config_is_found_where_the_deployment_mounts_what_it_passes_as_config() -> None:
    mounts = [
        {"name": "tls", "mountPath": "/etc/sidecar-injector/tls"},
        {"name": "config", "mountPath": "/etc/sidecar-injector/config/"},
    ]
    volumes = [
        {"name": "tls", "secret": {"secretName": "t"}},
        {"name": "config", "configMap": {"name": "injector-config-abc"}},
    ]
    path = "/etc/sidecar-injector/config/config.yaml"
    assert config_volume(_deployment([f"--config={path}"], mounts, volumes)) == (
        "injector-config-abc",
        "config.yaml",
    )
    assert config_volume(_deployment(["--config", path], mounts, volumes)) == (
        "injector-config-abc",
        "config.yaml",
    )
    # An items mapping renames the key's file.
    renamed = [
        {
            "name": "config",
            "configMap": {"name": "c", "items": [{"key": "k", "path": "config.yaml"}]},
        }
    ]
    assert config_volume(_deployment([f"--config={path}"], mounts, renamed)) == ("c", "k")
    assert config_volume(_deployment([], mounts, volumes)) is None
    assert config_volume(_deployment(["--config=/elsewhere/c.yaml"], mounts, volumes)) is None


def test_the_dry_run_pod_passes_pod_security_restricted_on_its_own() -> None:
    pod = probe_pod({"a": "b"})
    spec = pod["spec"]
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (container,) = spec["containers"]
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert pod["metadata"]["generateName"] == "sidecar-injector-check-"
    assert "name" not in pod["metadata"]


# --- output -------------------------------------------------------------------------


RESULTS = [
    Result("kubernetes-api", "pass", "answers"),
    Result("replicas", "warn", "1 ready replica", "scale it", ("detail one",)),
    Result("ca-bundle", "fail", "does not verify", "make manifests"),
    Result("outdated-sidecars", "skip", "nothing"),
]


def test_text_output_is_one_line_per_check_with_hints_and_details_under_it() -> None:
    text = render_text(RESULTS, host="https://api:6443")
    lines = text.splitlines()
    assert lines[0] == "sidecar-injector check of https://api:6443"
    assert lines[2].startswith("PASS  kubernetes-api ")
    assert lines[3].startswith("WARN  replicas ")
    assert lines[4].strip() == "hint: scale it"
    assert lines[5].strip() == "- detail one"
    assert lines[6].startswith("FAIL  ca-bundle ")
    assert lines[-1] == "1 passed, 1 warning, 1 failed, 1 skipped"


def test_json_output_is_for_scripts() -> None:
    document = json.loads(render_json(RESULTS, host="h"))
    assert document["ok"] is False
    assert document["summary"] == {"pass": 1, "warn": 1, "fail": 1, "skip": 1}
    assert [c["name"] for c in document["checks"]] == [r.name for r in RESULTS]
    assert document["checks"][1] == {
        "name": "replicas",
        "status": "warn",
        "message": "1 ready replica",
        "hint": "scale it",
        "details": ["detail one"],
        "data": {},
    }
    assert json.loads(render_json(RESULTS[:2], host="h"))["ok"] is True


# --- bounds against a misbehaving API server -------------------------------------------


Handler = Callable[[BaseHTTPRequestHandler, str, dict[str, str]], None]


class MisbehavingAPI:
    """An HTTP server whose answer to each path prefix a test chooses."""

    def __init__(self) -> None:
        self.routes: list[tuple[str, Handler]] = []
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.release = threading.Event()
        api = self

        class _Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                parts = urlsplit(self.path)
                query = {k: v[0] for k, v in parse_qs(parts.query).items()}
                api.requests.append((parts.path, query))
                for prefix, handler in api.routes:
                    if parts.path.startswith(prefix):
                        handler(self, parts.path, query)
                        return
                send_json(self, 404, {"kind": "Status", "reason": "NotFound", "code": 404})

        class _Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # clients cut off on purpose

        self.server = _Server(("127.0.0.1", 0), _Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


def send_json(handler: BaseHTTPRequestHandler, code: int, body: Any) -> None:
    data = json.dumps(body).encode()
    handler.send_response(code)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data)


@pytest.fixture
def api() -> Iterator[MisbehavingAPI]:
    server = MisbehavingAPI()
    yield server
    server.close()


def cluster_for(api: MisbehavingAPI, tmp_path: Path, *, timeout: float = 2.0) -> Cluster:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: c\n"
        f"clusters: [{{name: c, cluster: {{server: '{api.url}'}}}}]\n"
        "users: [{name: u, user: {token: t}}]\n"
        "contexts: [{name: c, context: {cluster: c, user: u}}]\n"
    )
    configuration = kube.load_configuration(kubeconfig)
    return Cluster(kube.Connection(configuration, connect_timeout=timeout), timeout=timeout)


def test_a_list_page_over_the_limit_is_asked_again_smaller_then_refused(
    api: MisbehavingAPI, tmp_path: Path
) -> None:
    def huge(handler: BaseHTTPRequestHandler, path: str, query: dict[str, str]) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        handler.end_headers()
        chunk = b" " * 65536
        try:
            for _ in range(PAGE_LIMIT // len(chunk) + 64):
                handler.wfile.write(chunk)
        except OSError:
            pass  # the client stopped reading: what the bound is for

    api.routes.append(("/api/v1/pods", huge))
    cluster = cluster_for(api, tmp_path)
    with pytest.raises(ClusterError, match=f"over the {PAGE_LIMIT}-byte limit"):
        list(cluster.list("/api/v1/pods"))
    limits = [int(q["limit"]) for p, q in api.requests if p == "/api/v1/pods"]
    assert limits == [250, 62, 15, 3, 1]


def test_a_server_that_never_answers_costs_one_timeout(api: MisbehavingAPI, tmp_path: Path) -> None:
    def hang(handler: BaseHTTPRequestHandler, path: str, query: dict[str, str]) -> None:
        api.release.wait(60)

    api.routes.append(("/version", hang))
    cluster = cluster_for(api, tmp_path, timeout=1.0)
    # Without the read timeout this would wait for the server's 60 s (and the
    # test's own timeout would fail it).
    with pytest.raises(ClusterError, match=r"(?i)read timed out"):
        cluster.get("/version")


def test_a_body_that_trickles_in_is_cut_at_the_deadline(
    api: MisbehavingAPI, tmp_path: Path
) -> None:
    def trickle(handler: BaseHTTPRequestHandler, path: str, query: dict[str, str]) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        handler.end_headers()
        try:
            while not api.release.is_set():
                handler.wfile.write(b" ")
                handler.wfile.flush()
                api.release.wait(0.2)  # each byte well within the read timeout
        except OSError:
            pass

    api.routes.append(("/version", trickle))
    cluster = cluster_for(api, tmp_path, timeout=1.0)
    with pytest.raises(ClusterError, match="did not arrive within 1s"):
        cluster.get("/version")


def test_the_pod_scan_stops_at_its_time_budget_and_says_so(
    api: MisbehavingAPI, tmp_path: Path
) -> None:
    served = []

    def endless(handler: BaseHTTPRequestHandler, path: str, query: dict[str, str]) -> None:
        # Every page holds one outdated pod and promises another page.
        served.append(query.get("continue"))
        annotation = json.dumps({"version": "0.0.1"})
        pod = {
            "metadata": {
                "name": f"p{len(served)}",
                "namespace": "shop",
                "annotations": {"sidecar.mesh.io/status": annotation},
            }
        }
        page = {"metadata": {"resourceVersion": "1", "continue": f"c{len(served)}"}, "items": [pod]}
        api.release.wait(0.05)
        send_json(handler, 200, page)

    api.routes.append(("/api/v1/pods", endless))
    (result,) = run(
        cluster_for(api, tmp_path, timeout=0.5), Options(timeout=0.5), [outdated_sidecars]
    )
    assert result.status == "warn"
    assert result.data["complete"] is False
    assert any("scan incomplete: stopped after 2s" in d for d in result.details)
    assert result.data["outdated"] == len(served) or result.data["outdated"] == len(served) - 1
    assert len(served) > 1


def test_a_forbidden_pod_list_is_a_warning_not_a_crash(api: MisbehavingAPI, tmp_path: Path) -> None:
    def forbidden(handler: BaseHTTPRequestHandler, path: str, query: dict[str, str]) -> None:
        send_json(
            handler,
            403,
            {"kind": "Status", "code": 403, "message": 'pods is forbidden: User "u" cannot list'},
        )

    api.routes.append(("/api/v1/pods", forbidden))
    (result,) = run(cluster_for(api, tmp_path), Options(), [outdated_sidecars])
    assert result.status == "warn"
    assert "cannot list pods: HTTP 403: pods is forbidden" in result.message


# --- the command line -------------------------------------------------------------------


def _cli(*args: str) -> Any:
    import os
    import subprocess

    from tests.support.server import CLI

    env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
    return subprocess.run(
        [CLI, "check", *args], capture_output=True, text=True, env=env, check=False, timeout=120
    )


def test_an_unusable_kubeconfig_is_a_failed_first_check_not_a_traceback(tmp_path: Path) -> None:
    done = _cli("--kubeconfig", str(tmp_path / "missing"), "-o", "json")
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    document = json.loads(done.stdout)
    first, *rest = document["checks"]
    assert first["status"] == "fail"
    assert "cannot configure the Kubernetes client" in first["message"]
    assert "\n" not in first["message"]
    assert {c["status"] for c in rest} == {"skip"}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--timeout", "0"], "--timeout: must be more than 0"),
        (["--timeout", "nan"], "--timeout: must be more than 0"),
        (["--timeout", "soon"], "is not a number of seconds"),
        (["--max-namespaces", "0"], "--max-namespaces: must be at least 1"),
        (["--connect", "carrier-pigeon"], "invalid choice"),
        (["-o", "yaml"], "invalid choice"),
    ],
)
def test_bad_arguments_are_a_one_line_error_and_exit_2(args: list[str], message: str) -> None:
    done = _cli(*args)
    assert done.returncode == 2
    assert done.stdout == ""
    assert message in done.stderr.splitlines()[-1]


def test_an_object_shaped_unlike_the_api_servers_fails_its_check_and_the_run_goes_on(
    api: MisbehavingAPI, tmp_path: Path
) -> None:
    def version(handler: BaseHTTPRequestHandler, path: str, query: dict[str, str]) -> None:
        send_json(handler, 200, {"gitVersion": "v1.37.2"})

    def configuration(handler: BaseHTTPRequestHandler, path: str, query: dict[str, str]) -> None:
        send_json(
            handler,
            200,
            {"metadata": {"name": "sidecar-injector"}, "webhooks": [{"clientConfig": "?"}]},
        )

    api.routes += [
        ("/version", version),
        ("/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/", configuration),
    ]
    results = run(cluster_for(api, tmp_path), Options(), CHECKS)
    by_name = {r.name: r for r in results}
    assert by_name["kubernetes-api"].status == "pass"
    broken = by_name["webhook-configuration"]
    assert broken.status == "fail"
    assert broken.message.startswith("could not be checked: AttributeError")
    assert len(results) == 13  # every check still reported


def test_hints_follow_the_install_flavour() -> None:
    service = ServiceRef("mesh-system", "sidecar-injector")
    static = Context(webhook=WebhookConfiguration(exists=True, service=service))
    assert "make manifests && make deploy" in bundle_hint(static)
    assert "certs --renew" in renew_hint(static, ca=False)
    managed = Context(
        webhook=WebhookConfiguration(
            exists=True, service=service, cert_manager="mesh-system/sidecar-injector-serving"
        )
    )
    assert "cainjector fills caBundle from mesh-system/sidecar-injector-serving" in (
        bundle_hint(managed)
    )
    assert "cmctl renew -n mesh-system" in renew_hint(managed, ca=False)
    assert "trust both" in renew_hint(managed, ca=True)


def test_an_unreadable_kubeconfig_fails_the_api_check_with_a_hint_about_that_file(
    tmp_path: Path,
) -> None:
    broken = tmp_path / "kubeconfig"
    broken.write_text("not: a kubeconfig\n")
    results, host = check_cluster(kubeconfig=str(broken), options=Options())
    first, *rest = results
    assert (first.name, first.status) == ("kubernetes-api", "fail")
    assert str(broken) in first.message
    assert "kubectl --kubeconfig FILE" in first.hint
    assert {result.status for result in rest} == {"skip"}
    assert host == "(not configured)"
