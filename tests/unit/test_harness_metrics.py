"""harness.metrics: a few families out of a large exposition, as the full parse gives them."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from harness.metrics import families

EXPOSITION = """\
# HELP apiserver_admission_webhook_admission_duration_seconds Admission webhook latency.
# TYPE apiserver_admission_webhook_admission_duration_seconds histogram
apiserver_admission_webhook_admission_duration_seconds_bucket{name="a",type="admit",le="0.005"} 3
apiserver_admission_webhook_admission_duration_seconds_bucket{name="a",type="admit",le="+Inf"} 4
apiserver_admission_webhook_admission_duration_seconds_sum{name="a",type="admit"} 0.02
apiserver_admission_webhook_admission_duration_seconds_count{name="a",type="admit"} 4
# HELP apiserver_admission_webhook_request_total Calls to webhooks.
# TYPE apiserver_admission_webhook_request_total counter
apiserver_admission_webhook_request_total{name="a",code="200"} 7
# HELP apiserver_admission_webhook_rejection_count Rejections.
# TYPE apiserver_admission_webhook_rejection_count counter
apiserver_admission_webhook_rejection_count{name="a"} 1
# HELP apiserver_admission_webhook_request_extra_total Shares the prefix.
# TYPE apiserver_admission_webhook_request_extra_total counter
apiserver_admission_webhook_request_extra_total{name="a"} 9
# HELP etcd_requests_total Not wanted.
# TYPE etcd_requests_total counter
etcd_requests_total{note="apiserver_admission_webhook_request_total 5"} 2
"""
WANTED = (
    "apiserver_admission_webhook_admission_duration_seconds",
    "apiserver_admission_webhook_request",
)


def test_the_wanted_families_are_what_the_full_parse_gives() -> None:
    full = [f for f in text_string_to_metric_families(EXPOSITION) if f.name in WANTED]
    assert [f.name for f in full] == list(WANTED)  # the exposition holds them
    assert list(families(EXPOSITION, WANTED)) == full


def test_families_sharing_a_prefix_and_other_lines_are_left_out() -> None:
    found = list(families(EXPOSITION, ["apiserver_admission_webhook_request"]))
    assert [(f.name, [s.value for s in f.samples]) for f in found] == [
        ("apiserver_admission_webhook_request", [7.0])
    ]


def test_nothing_wanted_found_gives_nothing() -> None:
    assert list(families(EXPOSITION, ["no_such_metric"])) == []
    assert list(families("", WANTED)) == []
