"""The end-to-end bench's summary compares policy mode with this tree's webhook, not the "before" one."""

from __future__ import annotations

from typing import Any

from bench.cluster import CURRENT_VARIANT, summarize


def case(pods_per_s: float, apiserver_ms: float, webhook_ms: float | None = None) -> dict[str, Any]:
    cpu = {"kube-apiserver": apiserver_ms, "etcd": 0.5, "client": 0.5}
    if webhook_ms is not None:
        cpu["webhook"] = webhook_ms
    return {
        "pods_per_s": pods_per_s,
        "create_p50_ms": 20.0,
        "create_p99_ms": 40.0,
        "stored_bytes": 6000,
        "pods": 300,
        "cpu_ms_per_pod": cpu,
        "webhook_calls": {"calls": 0},
    }


def test_policy_mode_is_compared_with_the_current_webhook_whatever_the_order_of_the_cases() -> None:
    # The "before" variant listed first, as a run with --before can list it.
    round_ = {
        "direct:before": case(400.0, 3.5),
        "meshed:before": case(300.0, 3.5, 1.0),
        f"direct:{CURRENT_VARIANT}": case(400.0, 3.0),
        f"meshed:{CURRENT_VARIANT}": case(320.0, 4.0, 1.0),
        "plain": case(600.0, 2.0),
        "policy": case(330.0, 4.5),
    }
    summary = summarize([round_])
    assert summary["ratios"][f"policy / meshed:{CURRENT_VARIANT}"] == 330.0 / 320.0
    assert summary["cpu_ratios"][f"policy / meshed:{CURRENT_VARIANT}"] == 5.0 / 5.5
    assert summary["cpu_ratios"][f"policy / direct:{CURRENT_VARIANT}"] == 5.0 / 3.5
    assert "policy / meshed:before" not in summary["ratios"]
