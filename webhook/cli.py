"""The ``sidecar-injector`` command: ``inject`` (offline), ``serve`` and ``certs``.

Errors are one line on stderr and a non-zero exit, never a traceback; output
is produced in full before anything is written, so a failure leaves stdout
empty and a pipeline (``inject ... | kubectl apply -f -``) applies nothing.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from webhook import __version__, constants
from webhook.config import ConfigError, load_config
from webhook.engine import InjectionRefused, NamespaceLike
from webhook.manifests import ManifestError, load_objects
from webhook.preview import Assumptions, Output, inject_all, parse_pairs, render

PROG = "sidecar-injector"
EXIT_ERROR = 1


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message}\n")


def _build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="Envoy sidecar injector for Kubernetes.")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    inject = commands.add_parser(
        "inject",
        help="inject manifests offline (like istioctl kube-inject)",
        description="Inject the sidecar into manifests read from files or stdin. Objects "
        "that are not workloads, and pods the decision skips, are printed unchanged.",
    )
    inject.add_argument(
        "-f",
        "--filename",
        action="append",
        required=True,
        metavar="FILE",
        help="manifest file (JSON or YAML, multi-document, Lists); '-' reads stdin; repeatable",
    )
    inject.add_argument("-n", "--namespace", help="namespace of objects that name none")
    inject.add_argument(
        "--label",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="namespace label to assume (overrides the namespaces file); repeatable",
    )
    inject.add_argument(
        "--annotation",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="namespace annotation to assume (overrides the namespaces file); repeatable",
    )
    inject.add_argument(
        "--namespaces-file",
        type=Path,
        metavar="FILE",
        help="Namespace objects (e.g. the output of kubectl get ns -o yaml)",
    )
    inject.add_argument("--config", type=Path, metavar="FILE", help="injector config (YAML)")
    inject.add_argument(
        "-o",
        "--output",
        choices=[o.value for o in Output],
        default=Output.YAML.value,
        help="yaml (default) or json: the objects; patch: the JSON Patch; diff: a unified diff",
    )

    serve = commands.add_parser("serve", help="serve the admission webhook over HTTPS")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=constants.DEFAULT_HTTPS_PORT)
    serve.add_argument(
        "--cert-dir",
        type=Path,
        default=Path("certs"),
        metavar="DIR",
        help="directory with tls.crt and tls.key, reloaded when they change (default certs/)",
    )
    serve.add_argument("--config", type=Path, metavar="FILE", help="injector config (YAML)")
    serve.add_argument(
        "--namespaces-file",
        type=Path,
        metavar="FILE",
        help="Namespace objects to use instead of watching the API server",
    )
    serve.add_argument(
        "--kubeconfig",
        type=Path,
        metavar="FILE",
        help="watch namespaces through this kubeconfig (default: in-cluster or $KUBECONFIG)",
    )
    serve.add_argument(
        "--read-timeout",
        type=float,
        metavar="SECONDS",
        help="a request's headers, then its body, must each arrive within this (default 10)",
    )
    serve.add_argument(
        "--drain-seconds",
        type=float,
        metavar="SECONDS",
        help="after SIGTERM, keep answering this long, each response with Connection: close, "
        "before shutting down (default 5; 0: no drain)",
    )
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])

    certs = commands.add_parser("certs", help="make a CA and a serving certificate")
    certs.add_argument("--out", type=Path, default=Path("certs"), metavar="DIR")
    certs.add_argument("--service", default=constants.SERVICE_NAME)
    certs.add_argument("--namespace", default=constants.SERVICE_NAMESPACE)
    certs.add_argument("--days", type=int, default=365)
    return parser


def _fail(message: str) -> int:
    sys.stderr.write(f"{PROG}: error: {message}\n")
    return EXIT_ERROR


def _read_inputs(names: Sequence[str]) -> list[dict[str, Any]]:
    objects: list[dict[str, Any]] = []
    for name in names:
        if name == "-":
            data = sys.stdin.buffer.read()
            origin = "<stdin>"
        else:
            try:
                data = Path(name).read_bytes()
            except OSError as err:
                raise ManifestError(f"{name}: cannot read: {err.strerror or err}") from None
            origin = name
        objects.extend(load_objects(data, origin=origin))
    return objects


def _run_inject(args: argparse.Namespace) -> int:
    from webhook.namespaces import NamespacesFileError, load_namespaces_file

    try:
        config = load_config(args.config)
        known: dict[str, Any] = (
            load_namespaces_file(args.namespaces_file) if args.namespaces_file else {}
        )
        assumptions = Assumptions(
            namespace=args.namespace,
            labels=parse_pairs(args.label, what="--label"),
            annotations=parse_pairs(args.annotation, what="--annotation"),
        )
        objects = _read_inputs(args.filename)

        def lookup(name: str) -> NamespaceLike | None:
            found: NamespaceLike | None = known.get(name)
            return found

        results = inject_all(objects, lookup=lookup, assumptions=assumptions, config=config)
        text = render(results, objects, Output(args.output))
    except (ConfigError, ManifestError, NamespacesFileError, InjectionRefused, ValueError) as err:
        return _fail(str(err))
    except RecursionError:
        return _fail("input is nested too deeply")

    from webhook.engine.workloads import describe

    for obj, result in zip(objects, results, strict=True):
        for warning in result.warnings:
            sys.stderr.write(f"{PROG}: warning: {describe(obj)}: {warning}\n")
        if result.location is not None and not result.injected:
            sys.stderr.write(f"{PROG}: {describe(obj)}: not injected: {result.decision.reason}\n")
    sys.stdout.write(text)
    sys.stdout.flush()
    return 0


def _run_certs(args: argparse.Namespace) -> int:
    from webhook.certs import CertError, write_certs

    if args.days < 1:
        return _fail("--days must be at least 1")
    try:
        files = write_certs(
            args.out, service=args.service, namespace=args.namespace, days=args.days
        )
    except CertError as err:
        return _fail(str(err))
    reused = "reused the existing CA" if files.ca_reused else "made a new CA"
    sys.stderr.write(f"{PROG}: wrote {args.out}/ ({reused}) for {args.service}.{args.namespace}\n")
    return 0


def _run_serve(args: argparse.Namespace) -> int:
    from webhook.server import ServeError, serve

    try:
        return serve(args)
    except ServeError as err:
        return _fail(str(err))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script and ``python -m webhook``."""
    args = _build_parser().parse_args(argv)
    runners = {"inject": _run_inject, "certs": _run_certs, "serve": _run_serve}
    try:
        return runners[args.command](args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # ``inject ... | head``: the reader left; that is not our error.
        sys.stderr.close()
        return 0
