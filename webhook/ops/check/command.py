"""``check_cluster``: configure the client as kubectl would, run every check, clean up."""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Callable
from typing import Any

from webhook.cluster import kube
from webhook.cluster.environment import running_in_cluster
from webhook.cluster.reader import Cluster
from webhook.ops.check.checks import CHECKS
from webhook.ops.check.context import Options
from webhook.ops.check.model import Result
from webhook.ops.check.runner import run, skipped_after
from webhook.pki import served_cert


def check_cluster(
    *,
    kubeconfig: Any = None,
    options: Options,
    now: Callable[[], datetime.datetime] = served_cert.now,
) -> tuple[list[Result], str]:
    """Every check against the cluster ``kubeconfig`` (or the environment) names; (results, host).

    A kubeconfig that cannot be used is the first check's failure, with a
    hint about where the configuration came from; the rest are skipped.
    """
    try:
        configuration = kube.load_configuration(kubeconfig)
    except kube.ConfigurationError as err:
        hint = (
            "pass --kubeconfig FILE (or set KUBECONFIG)"
            if kubeconfig is None
            else "check the file: kubectl --kubeconfig FILE cluster-info reads it the same way"
        )
        first = Result(CHECKS[0].name, "fail", str(err), hint)
        return skipped_after(first, CHECKS, "no API server"), "(not configured)"
    in_cluster = kubeconfig is None and running_in_cluster()
    connection = kube.Connection(configuration, connect_timeout=min(5.0, options.timeout))
    cluster = Cluster(connection, timeout=options.timeout)
    options = dataclasses.replace(options, in_cluster=in_cluster or options.in_cluster)
    try:
        return run(cluster, options, CHECKS, now=now), connection.host
    finally:
        connection.clear()
