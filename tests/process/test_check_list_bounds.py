"""``check`` reads a paged list within bounds on the whole list: bytes, pages and time.

An API server may promise one more page forever. Before, each page was
bounded but the list was not: 7 MB pages that always carried a continue
token grew ``check`` to 2.75 GB (then a MemoryError called "a list page is
not JSON"), and empty pages with continue tokens never ended despite
``--timeout 3``. Against the shared fake API server (endless, huge and slow
lists) through the real command, its memory measured; ``Cluster.list``
alone is in ``tests/unit/check/test_list_bounds.py``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from harness.fake_kube_api import FakeKubeAPI
from tests.process.cli_process import PEAK_RSS_LIMIT_KIB, Ran, run_cli
from webhook.cluster.reader import LIST_LIMIT
from webhook.manifests.files import size_text

NAMESPACES = "/api/v1/namespaces"


@pytest.fixture
def api(fake_api: FakeKubeAPI) -> FakeKubeAPI:
    """One opted-in namespace, in lists that never end."""
    fake_api.add("shop", {"sidecar-injection": "enabled"})
    fake_api.endless_lists = True
    return fake_api


def check(api: FakeKubeAPI, tmp_path: Path, *args: str) -> tuple[Ran, dict[str, dict[str, str]]]:
    kubeconfig = api.write_kubeconfig(tmp_path / "kubeconfig")
    ran = run_cli("check", "--kubeconfig", str(kubeconfig), "-o", "json", *args, tmp_path=tmp_path)
    assert ran.err == b"", ran.err[-2000:]
    return ran, {c["name"]: c for c in json.loads(ran.out)["checks"]}


# --- the real command --------------------------------------------------------------------


def test_empty_pages_that_always_promise_more_end_within_the_timeout(
    api: FakeKubeAPI, tmp_path: Path
) -> None:
    ran, checks = check(api, tmp_path, "--timeout", "3")
    assert ran.code == 1
    message = checks["pod-security"]["message"]
    assert message.startswith(
        f"cannot read the namespaces: the list {NAMESPACES} did not finish within 3s ("
    )
    assert checks["pod-security"]["status"] == "warn"
    assert api.requests["list"] > 1
    assert ran.peak_kib < PEAK_RSS_LIMIT_KIB


def test_slow_pages_share_one_timeout_rather_than_each_getting_one(
    api: FakeKubeAPI, tmp_path: Path
) -> None:
    # Each page comes well within the timeout; the list as a whole does not.
    api.list_delay = 0.8
    _, checks = check(api, tmp_path, "--timeout", "2")
    assert checks["pod-security"]["message"].startswith(
        f"cannot read the namespaces: the list {NAMESPACES} did not finish within 2s ("
    )
    assert 1 <= api.requests["list"] <= 3


def test_7_mb_pages_without_end_stop_at_the_lists_byte_bound_and_the_process_stays_small(
    api: FakeKubeAPI, tmp_path: Path
) -> None:
    api.list_padding = 7_000_000
    ran, checks = check(api, tmp_path, "--timeout", "300")
    assert ran.code == 1
    assert checks["pod-security"]["message"] == (
        f"cannot read the namespaces: the list {NAMESPACES} is over {size_text(LIST_LIMIT)} in"
        f" all ({api.requests['list']} pages read)"
    )
    assert api.requests["list"] >= LIST_LIMIT // 7_000_000
    assert ran.peak_kib < PEAK_RSS_LIMIT_KIB


# --- parsing where memory is short ---------------------------------------------------


def test_a_page_that_does_not_fit_in_memory_is_not_called_malformed() -> None:
    # orjson reports a failed allocation as a decode error; run where memory is short.
    script = textwrap.dedent(
        """
        import resource
        from webhook.cluster import kube
        page = b"[" + b",".join(b'{"k%d":[1,2,{"x":"yyyyyyyy"}]}' % i for i in range(2_000_000)) + b"]"
        resource.setrlimit(resource.RLIMIT_AS, (600 << 20, 600 << 20))
        try:
            kube.parse_json(page, what="a list page")
        except MemoryError as err:
            print("MemoryError", err)
        except kube.ResponseError as err:
            print("ResponseError", err)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=False, timeout=120
    )
    assert done.stdout.startswith("MemoryError"), done.stdout + done.stderr[-2000:]
