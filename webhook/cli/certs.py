"""``sidecar-injector certs``: a CA and a serving certificate, on disk or in the cluster's Secrets.

``--out DIR`` (the default) writes files with ``webhook.pki.certs``;
``--secret NAME`` keeps them in Secrets through the API server instead
(``webhook.ops.cert_secrets``: what the Helm chart's hook Job runs).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from webhook.contract import constants

# A century: far past any sane certificate, and far inside what X.509 dates
# (and Python's datetime) can hold.
MAX_CERT_DAYS = 36_500


def days(text: str) -> int:
    """``--days``: a whole number of days, 1 to a century."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of days") from None
    if not 1 <= value <= MAX_CERT_DAYS:
        raise argparse.ArgumentTypeError(f"must be 1 to {MAX_CERT_DAYS} days")
    return value


def add_parser(commands: Any, *, timeout: Callable[[str], float]) -> None:
    """The ``certs`` command, under ``commands``."""
    certs = commands.add_parser("certs", help="make a CA and a serving certificate")
    certs.add_argument("--out", type=Path, default=Path("certs"), metavar="DIR")
    certs.add_argument(
        "--service",
        help=f"Service name (default {constants.SERVICE_NAME}; with --renew, the current one)",
    )
    certs.add_argument(
        "--namespace",
        help=f"its namespace (default {constants.SERVICE_NAMESPACE}; with --renew, the"
        " current one)",
    )
    certs.add_argument("--days", type=days, default=365, help="validity (1 to 36500, default 365)")
    certs.add_argument(
        "--renew",
        action="store_true",
        help="reissue only the serving certificate under the existing CA in --out (caBundle "
        "stays valid); refuse when there is no CA to reuse",
    )
    cluster = certs.add_argument_group(
        "in the cluster (instead of --out)",
        "Keep the certificates in Secrets of --namespace through the API server: the CA in "
        "--ca-secret (made once, reused after), the serving pair in --secret (kept while it "
        "has more than 30 days left), and the CA as the caBundle of --webhook-configuration "
        "once it exists. What the Helm chart's hook Job runs.",
    )
    cluster.add_argument("--secret", metavar="NAME", help="the Secret the Deployment mounts")
    cluster.add_argument("--ca-secret", metavar="NAME", help="the CA's Secret (never mounted)")
    cluster.add_argument("--webhook-configuration", metavar="NAME")
    cluster.add_argument(
        "--kubeconfig",
        type=Path,
        metavar="FILE",
        help="kubeconfig to use (default: in-cluster, $KUBECONFIG or ~/.kube/config)",
    )
    cluster.add_argument(
        "--timeout", type=timeout, default=15.0, metavar="SECONDS", help="per request (default 15)"
    )


def run(args: argparse.Namespace) -> tuple[str, str | None]:
    """Do it; (the line to say, an error line or None)."""
    from webhook.pki.certs import CertError, renew_certs, write_certs

    if args.secret is not None or args.ca_secret is not None:
        return _in_cluster(args)
    try:
        if args.renew:
            renewed = renew_certs(
                args.out, service=args.service, namespace=args.namespace, days=args.days
            )
            return (
                f"renewed {renewed.cert} for {renewed.service}.{renewed.namespace}"
                f" under the existing CA (caBundle unchanged), valid until"
                f" {renewed.not_after:%Y-%m-%d %H:%M} UTC"
            ), None
        service = args.service or constants.SERVICE_NAME
        namespace = args.namespace or constants.SERVICE_NAMESPACE
        files = write_certs(args.out, service=service, namespace=namespace, days=args.days)
    except CertError as err:
        return "", str(err)
    reused = "reused the existing CA" if files.ca_reused else "made a new CA"
    return f"wrote {args.out}/ ({reused}) for {service}.{namespace}", None


def _in_cluster(args: argparse.Namespace) -> tuple[str, str | None]:
    from webhook.cluster import kube
    from webhook.cluster.reader import Cluster
    from webhook.ops.cert_secrets import ensure
    from webhook.pki.certs import CertError

    if args.secret is None or args.ca_secret is None:
        return "", "--secret and --ca-secret go together"
    if args.renew:
        return "", "--renew is for --out; in the cluster the serving pair is renewed when due"
    namespace = args.namespace or constants.SERVICE_NAMESPACE
    service = args.service or constants.SERVICE_NAME
    try:
        configuration = kube.load_configuration(args.kubeconfig)
    except kube.ConfigurationError as err:
        return "", str(err)
    connection = kube.Connection(configuration, connect_timeout=min(5.0, args.timeout))
    try:
        done = ensure(
            Cluster(connection, timeout=args.timeout),
            namespace=namespace,
            service=service,
            secret=args.secret,
            ca_secret=args.ca_secret,
            configuration=args.webhook_configuration,
            days=args.days,
        )
    except CertError as err:
        return "", str(err)
    finally:
        connection.clear()
    ca = "made a new CA" if done.ca_made else "kept the CA"
    serving = (
        "wrote a new serving certificate"
        if done.serving_written
        else "kept the serving certificate"
    )
    line = (
        f"{namespace}/{args.ca_secret}: {ca}; {namespace}/{args.secret}: {serving} for"
        f" {service}.{namespace}.svc, valid until {done.not_after:%Y-%m-%d %H:%M} UTC"
    )
    if args.webhook_configuration is not None:
        if done.bundles_set is None:
            line += f"; no webhook configuration {args.webhook_configuration} yet"
        else:
            line += f"; caBundle of {args.webhook_configuration}: {done.bundles_set} webhooks set"
    return line, None
