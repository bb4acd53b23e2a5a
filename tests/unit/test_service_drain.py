"""The drain's time budget against the install's grace period, read from the manifests."""

from __future__ import annotations

import yaml

from tests.builders import REPO
from webhook.service.events import EventOptions
from webhook.service.server import DRAIN_SECONDS, GRACEFUL_SHUTDOWN_SECONDS

ROOT = REPO


def test_the_pods_grace_period_covers_pre_stop_drain_graceful_shutdown_and_pending_events() -> None:
    """Otherwise the kubelet SIGKILLs a replica that is still answering reviews."""
    documents = yaml.safe_load_all((ROOT / "manifests/base/deployment.yaml").read_text())
    (deployment,) = [d for d in documents if d and d["kind"] == "Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    events = EventOptions().stop_timeout
    assert (
        pod["terminationGracePeriodSeconds"]
        > pre_stop + DRAIN_SECONDS + GRACEFUL_SHUTDOWN_SECONDS + events
    )
