"""``check`` against an API server that misbehaves on purpose: bounded in time and bytes.

A page over its limit, a server that never answers, a body that trickles in,
pages that never end, a forbidden list and an object shaped unlike the API
server's each cost ``check`` one line of its report, never a hang, the
machine's memory or the rest of the run. The server is the shared fake
(``fake_api``) answering the paths a test gives and nothing else.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.fake_kube_api import FakeKubeAPI, Handler, handlers
from tests.builders import pod
from tests.unit.check.support import cluster_of
from webhook.cluster.reader import PAGE_LIMIT
from webhook.ops.check import CHECKS, Cluster, ClusterError, Options, check_cluster, run
from webhook.ops.check.namespace_checks import outdated_sidecars

PODS = "/api/v1/pods"


def only(api: FakeKubeAPI, *routes: tuple[str, Handler]) -> FakeKubeAPI:
    """Serve ``routes`` and nothing else: any other path is a 404 NotFound."""
    for prefix, handler in routes:
        api.route(prefix, handler)
    return api.route("/", handlers.status_reply(404, "NotFound", "the server has no such path"))


def cluster_for(api: FakeKubeAPI, tmp_path: Path, *, timeout: float = 2.0) -> Cluster:
    return cluster_of(api, tmp_path, timeout=timeout, connect_timeout=timeout)


def test_a_list_page_over_the_limit_is_asked_again_smaller_then_refused(
    fake_api: FakeKubeAPI, tmp_path: Path
) -> None:
    # No length announced: the bound holds while the body streams in.
    only(fake_api, (PODS, handlers.unframed(PAGE_LIMIT + 64 * 64 * 1024)))
    cluster = cluster_for(fake_api, tmp_path)
    with pytest.raises(ClusterError, match=f"over the {PAGE_LIMIT}-byte limit"):
        list(cluster.list(PODS))
    limits = [int(call.query["limit"]) for call in fake_api.calls if call.path == PODS]
    assert limits == [250, 62, 15, 3, 1]


def test_a_server_that_never_answers_costs_one_timeout(
    fake_api: FakeKubeAPI, tmp_path: Path
) -> None:
    only(fake_api, ("/version", handlers.hang()))
    cluster = cluster_for(fake_api, tmp_path, timeout=1.0)
    # Without the read timeout this would wait for the server's hold cap (and
    # the test's own timeout would fail it).
    with pytest.raises(ClusterError, match=r"(?i)read timed out"):
        cluster.get("/version")


def test_a_body_that_trickles_in_is_cut_at_the_deadline(
    fake_api: FakeKubeAPI, tmp_path: Path
) -> None:
    # Each byte well within the read timeout; the body as a whole is not.
    only(fake_api, ("/version", handlers.trickle(interval=0.2)))
    cluster = cluster_for(fake_api, tmp_path, timeout=1.0)
    with pytest.raises(ClusterError, match="did not arrive within 1s"):
        cluster.get("/version")


def test_the_pod_scan_stops_at_its_time_budget_and_says_so(
    fake_api: FakeKubeAPI, tmp_path: Path
) -> None:
    # Every page holds one outdated pod and promises another page.
    status = {"sidecar.mesh.io/status": json.dumps({"version": "0.0.1"})}
    outdated = handlers.endless_pages(
        lambda n: pod(f"p{n + 1}", namespace="shop", annotations=status)
    )
    only(fake_api, (PODS, handlers.held(outdated, delay=0.05)))
    (result,) = run(
        cluster_for(fake_api, tmp_path, timeout=0.5), Options(timeout=0.5), [outdated_sidecars]
    )
    served = fake_api.calls_to(PODS)
    assert result.status == "warn"
    assert result.data["complete"] is False
    assert any("scan incomplete: stopped after 2s" in d for d in result.details)
    assert result.data["outdated"] == len(served) or result.data["outdated"] == len(served) - 1
    assert len(served) > 1


def test_a_forbidden_pod_list_is_a_warning_not_a_crash(
    fake_api: FakeKubeAPI, tmp_path: Path
) -> None:
    forbidden = handlers.status_reply(403, "Forbidden", 'pods is forbidden: User "u" cannot list')
    only(fake_api, (PODS, forbidden))
    (result,) = run(cluster_for(fake_api, tmp_path), Options(), [outdated_sidecars])
    assert result.status == "warn"
    assert "cannot list pods: HTTP 403: pods is forbidden" in result.message


def test_an_object_shaped_unlike_the_api_servers_fails_its_check_and_the_run_goes_on(
    fake_api: FakeKubeAPI, tmp_path: Path
) -> None:
    configuration = {"metadata": {"name": "sidecar-injector"}, "webhooks": [{"clientConfig": "?"}]}
    only(
        fake_api,
        ("/version", handlers.json_reply({"gitVersion": "v1.37.2"})),
        (
            "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/",
            handlers.json_reply(configuration),
        ),
    )
    results = run(cluster_for(fake_api, tmp_path), Options(), CHECKS)
    by_name = {r.name: r for r in results}
    assert by_name["kubernetes-api"].status == "pass"
    broken = by_name["webhook-configuration"]
    assert broken.status == "fail"
    assert broken.message.startswith("could not be checked: AttributeError")
    assert len(results) == 16  # every check still reported


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
