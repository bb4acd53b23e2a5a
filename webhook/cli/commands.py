"""The ``sidecar-injector`` command: inject, uninject, serve, certs, check, why and tag.

Errors are one line on stderr and a non-zero exit, never a traceback; output
is produced in full before anything is written, so a failure leaves stdout
empty and a pipeline (``inject ... | kubectl apply -f -``) applies nothing.

What only some commands need (the config file's model, the server, the
cluster client) is imported by the command that runs: every invocation pays
for the imports at the top, and ``certs`` or ``tag`` need none of those.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from webhook import __version__
from webhook.cli import certs, tag
from webhook.contract import constants
from webhook.engine import InjectionRefused, NamespaceLike
from webhook.engine.values import (
    NAMESPACE_NAME_RULE,
    REVISION_NAME_RULE,
    escape_controls,
    is_namespace_name,
    is_revision_name,
    shorten,
)
from webhook.manifests.documents import ManifestError, load_objects
from webhook.manifests.files import DOCUMENTS_LIMIT, FileError, read_file, read_stream
from webhook.manifests.preview import Assumptions, Output, inject_all, parse_pairs, render

PROG = "sidecar-injector"
EXIT_ERROR = 1


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {escape_controls(message)}\n")


def _add_policy_parser(commands: Any) -> None:
    """``policy``: print the admission policies of policy mode."""
    policy = commands.add_parser(
        "policy",
        help="print the admission policies that inject in the API server (policy mode)",
        description="Print, generated from the injector config, a MutatingAdmissionPolicy "
        "and a ValidatingAdmissionPolicy with their bindings (Kubernetes 1.36+): injection "
        "without a webhook. Apply the output with kubectl.",
    )
    policy.add_argument("--config", type=Path, metavar="FILE", help="injector config file")
    policy.add_argument(
        "--revision", metavar="NAME", help="revision whose policies these are (name suffix)"
    )
    policy.add_argument("-o", "--output", choices=["yaml", "json"], default="yaml")


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
    inject.add_argument(
        "-n", "--namespace", type=_namespace, help="namespace of objects that name none"
    )
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

    uninject = commands.add_parser(
        "uninject",
        help="take the sidecar out of manifests again (the inverse of inject)",
        description="Remove what the sidecar.mesh.io/status annotation says was injected: "
        "its containers, init containers, volumes and annotations, nothing else. Objects "
        "without the annotation are printed unchanged.",
    )
    uninject.add_argument(
        "-f",
        "--filename",
        action="append",
        required=True,
        metavar="FILE",
        help="manifest file (JSON or YAML, multi-document, Lists); '-' reads stdin; repeatable",
    )
    uninject.add_argument(
        "-o",
        "--output",
        choices=[o.value for o in Output],
        default=Output.YAML.value,
        help="yaml (default) or json: the objects; patch: the JSON Patch; diff: a unified diff",
    )

    serve = commands.add_parser("serve", help="serve the admission webhook over HTTPS")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=_port, default=constants.DEFAULT_HTTPS_PORT)
    serve.add_argument(
        "--cert-dir",
        type=Path,
        default=Path("certs"),
        metavar="DIR",
        help="directory with tls.crt and tls.key, reloaded when they change (default certs/)",
    )
    serve.add_argument("--config", type=Path, metavar="FILE", help="injector config (YAML)")
    serve.add_argument(
        "--revision",
        type=_revision,
        metavar="NAME",
        help="the injector revision served, recorded on every pod it injects (default: the "
        "config's revision, else default)",
    )
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
    serve.add_argument(
        "--graceful-shutdown-seconds",
        type=float,
        metavar="SECONDS",
        help="after the drain, let requests in flight finish for up to this long, then cut "
        "them off (default 15; 0: do not wait; at most 300)",
    )
    serve.add_argument(
        "--max-connections-per-client",
        type=int,
        metavar="N",
        help="connections one client (source address) may hold open; more are reset as "
        "soon as accepted (default 256)",
    )
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])

    certs.add_parser(commands, timeout=_timeout)

    _add_policy_parser(commands)

    check = commands.add_parser(
        "check",
        help="check a live install (webhook, certificates, replicas, selectors, sidecars)",
        description="Check the install in the cluster the kubeconfig (or the pod's service "
        "account) points at: one line per check, pass/warn/fail with a hint. Exit status 1 "
        "when any check fails.",
    )
    check.add_argument(
        "--kubeconfig",
        type=Path,
        metavar="FILE",
        help="kubeconfig to use (default: in-cluster, $KUBECONFIG or ~/.kube/config)",
    )
    check.add_argument(
        "-n",
        "--namespace",
        type=_namespace,
        help="only this namespace for the dry-run pod, PodSecurity and outdated sidecars",
    )
    check.add_argument("-o", "--output", choices=["text", "json"], default="text")
    check.add_argument(
        "--connect",
        choices=["auto", "direct", "port-forward"],
        default="auto",
        help="how to reach the webhook's endpoints: dial them directly, through a "
        "port-forward via the API server, or (auto, default) directly when they answer "
        "within 3 s and port-forward otherwise",
    )
    check.add_argument(
        "--max-namespaces",
        type=_positive_int,
        default=10,
        metavar="N",
        help="opted-in namespaces that get a dry-run pod (default 10)",
    )
    check.add_argument(
        "--timeout",
        type=_timeout,
        default=15.0,
        metavar="SECONDS",
        help="per request, and per paged list as a whole (default 15); the pod scan stops"
        " after four times this",
    )
    check.add_argument(
        "--revision",
        type=_revision,
        default=constants.DEFAULT_REVISION,
        metavar="NAME",
        help="the revision whose install to check (default: default); the revision checks "
        "look at every revision",
    )
    check.add_argument(
        "--webhook-configuration",
        metavar="NAME",
        help="the MutatingWebhookConfiguration to check, or in policy mode the admission"
        " policies of that name (default: the revision's, sidecar-injector for default)",
    )

    why = commands.add_parser(
        "why",
        help="would this pod or workload be injected now, and why (in a live cluster)",
        description="Explain, for a pod or a workload in the cluster, whether a pod created now "
        "gets the sidecar and why, every setting with its value and source (locks shown), the "
        "revision that serves it, and whether its running pods' sidecars are outdated, with the "
        "command that replaces them. Decided by the same engine as the webhook, with the "
        "namespace's labels and annotations and the install's config read from the cluster.",
    )
    why.add_argument(
        "target",
        metavar="KIND/NAME",
        help="pod, deployment, statefulset, daemonset, replicaset, job or cronjob (or their "
        "plurals and short names: po, deploy, sts, ds, rs, cj), then / and the name",
    )
    why.add_argument(
        "-n",
        "--namespace",
        type=_namespace,
        help="the object's namespace (default: the kubeconfig context's, else default)",
    )
    why.add_argument(
        "--kubeconfig",
        type=Path,
        metavar="FILE",
        help="kubeconfig to use (default: in-cluster, $KUBECONFIG or ~/.kube/config)",
    )
    why.add_argument("-o", "--output", choices=["text", "json"], default="text")
    why.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="decide with this injector config instead of the one the install mounts",
    )
    why.add_argument(
        "--webhook-configuration",
        default="sidecar-injector",
        metavar="NAME",
        help="the install's MutatingWebhookConfiguration (default sidecar-injector)",
    )
    why.add_argument(
        "--timeout",
        type=_timeout,
        default=15.0,
        metavar="SECONDS",
        help="per request, and per paged list as a whole (default 15)",
    )
    tag.add_parser(commands, revision=_revision, timeout=_timeout)
    return parser


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 < value < 65536:
        raise argparse.ArgumentTypeError(f"{value} is not a port: 1 to 65535")
    return value


def _namespace(text: str) -> str:
    if not is_namespace_name(text):
        raise argparse.ArgumentTypeError(
            f"{shorten(text, 80)} is not a valid namespace name ({NAMESPACE_NAME_RULE})"
        )
    return text


def _revision(text: str) -> str:
    if not is_revision_name(text):
        raise argparse.ArgumentTypeError(
            f"{shorten(text, 80)} is not a revision name ({REVISION_NAME_RULE})"
        )
    return text


def _timeout(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    # NaN and infinities fail the comparison too.
    if not 0 < value <= 300:
        raise argparse.ArgumentTypeError("must be more than 0 and at most 300 seconds")
    return value


def _say(line: str) -> None:
    """One line on stderr, with what a terminal would act on escaped (names come from inputs)."""
    sys.stderr.write(f"{PROG}: {escape_controls(line)}\n")


def _fail(message: str) -> int:
    _say(f"error: {message}")
    return EXIT_ERROR


def _read_inputs(names: Sequence[str]) -> list[dict[str, Any]]:
    objects: list[dict[str, Any]] = []
    for name in names:
        origin = "<stdin>" if name == "-" else name
        try:
            data = (
                read_stream(sys.stdin.buffer, limit=DOCUMENTS_LIMIT, origin=origin)
                if name == "-"
                else read_file(name, limit=DOCUMENTS_LIMIT)
            )
        except FileError as err:
            raise ManifestError(str(err)) from None
        # YAML anchors and aliases are refused (load_objects refuses them everywhere).
        objects.extend(load_objects(data, origin=origin))
    return objects


def _run_inject(args: argparse.Namespace) -> int:
    from webhook.cluster.namespaces_file import NamespacesFileError, load_namespaces_file
    from webhook.manifests.config_file import ConfigError, load_config

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
            _say(f"warning: {describe(obj)}: {warning}")
        if result.location is not None and not result.injected:
            _say(f"{describe(obj)}: not injected: {result.decision.reason}")
    sys.stdout.write(text)
    sys.stdout.flush()
    return 0


def _run_uninject(args: argparse.Namespace) -> int:
    from webhook.engine import uninject
    from webhook.engine.workloads import describe

    try:
        objects = _read_inputs(args.filename)
        results = [uninject(obj) for obj in objects]
        text = render(results, objects, Output(args.output), after="uninjected")
    except (ManifestError, InjectionRefused) as err:
        return _fail(str(err))
    except RecursionError:
        return _fail("input is nested too deeply")

    for obj, result in zip(objects, results, strict=True):
        for warning in result.warnings:
            _say(f"warning: {describe(obj)}: {warning}")
        if result.location is not None and not result.removed:
            _say(f"{describe(obj)}: nothing to remove: {result.reason}")
    sys.stdout.write(text)
    sys.stdout.flush()
    return 0


def _run_certs(args: argparse.Namespace) -> int:
    message, error = certs.run(args)
    if error is not None:
        return _fail(error)
    _say(message)
    return 0


def _run_check(args: argparse.Namespace) -> int:
    from webhook.manifests.revisions import object_name
    from webhook.ops.check import Options, check_cluster, render_json, render_text, summary

    options = Options(
        namespace=args.namespace,
        configuration=args.webhook_configuration or object_name(args.revision),
        revision=args.revision,
        connect=args.connect,
        max_namespaces=args.max_namespaces,
        timeout=args.timeout,
    )
    results, host = check_cluster(kubeconfig=args.kubeconfig, options=options)
    render = render_json if args.output == "json" else render_text
    sys.stdout.write(render(results, host=host))
    sys.stdout.flush()
    return EXIT_ERROR if summary(results)["fail"] else 0


def _run_why(args: argparse.Namespace) -> int:
    from webhook.ops.why import TargetError, WhyError, WhyOptions, render_json, render_text, why

    options = WhyOptions(
        namespace=args.namespace,
        configuration=args.webhook_configuration,
        config_file=args.config,
        timeout=args.timeout,
    )
    try:
        answer, host = why(args.target, kubeconfig=args.kubeconfig, options=options)
    except (TargetError, WhyError) as err:
        return _fail(str(err))
    render = render_json if args.output == "json" else render_text
    sys.stdout.write(render(answer, host=host))
    sys.stdout.flush()
    return 0


def _run_tag(args: argparse.Namespace) -> int:
    text, error = tag.run(args)
    if error is not None:
        return _fail(error)
    sys.stdout.write(text)
    sys.stdout.flush()
    return 0


def _run_serve(args: argparse.Namespace) -> int:
    from webhook.service.server import ServeError, serve

    try:
        return serve(args)
    except ServeError as err:
        return _fail(str(err))


def _run_policy(args: argparse.Namespace) -> int:
    import json

    import yaml

    from webhook.manifests.config_file import ConfigError, load_config
    from webhook.policy.cel import Unsupported
    from webhook.policy.render import render_policy

    try:
        objects = render_policy(load_config(args.config), revision=args.revision)
    except (ConfigError, Unsupported) as err:
        return _fail(str(err))
    if args.output == "json":
        listed = {"apiVersion": "v1", "kind": "List", "items": objects}
        sys.stdout.write(json.dumps(listed, indent=2) + "\n")
    else:
        sys.stdout.write(yaml.safe_dump_all(objects, sort_keys=False, width=1 << 20))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script and ``python -m webhook``."""
    args = _build_parser().parse_args(argv)
    runners = {
        "inject": _run_inject,
        "uninject": _run_uninject,
        "certs": _run_certs,
        "serve": _run_serve,
        "check": _run_check,
        "policy": _run_policy,
        "why": _run_why,
        "tag": _run_tag,
    }
    try:
        return runners[args.command](args)
    except KeyboardInterrupt:
        return 130
    except MemoryError:
        # Every read is bounded, so this is a bug or a tiny limit (ulimit -v),
        # said in one line rather than a traceback.
        return _fail("out of memory")
    except BrokenPipeError:
        # ``inject ... | head``: the reader left; that is not our error.
        sys.stderr.close()
        return 0
