"""``sidecar-injector why [-n NS] KIND/NAME``: would this pod or workload be injected now, and why?

Against a live cluster, as ``istioctl x check-inject`` explains a pod: the
verdict and its reason from the engine ``/mutate`` runs (``explain``), each
setting with its value and source (locks shown), the revision that serves
it, whether the webhook configuration's selectors let the API server call
the injector at all, and for the running pods whether their sidecars are
outdated, with the command that replaces them.

Parts: ``target`` (``KIND/NAME``), ``read`` (the cluster, bounded by
``webhook.cluster.reader``), ``explain`` (pure), ``render`` (text, JSON).
Errors are one line (``WhyError``, ``TargetError``): a missing object, no
access, an API server that cannot be reached, a bad ``KIND/NAME``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Final

from webhook import __version__
from webhook.cluster import kube
from webhook.cluster.environment import SERVICE_ACCOUNT_DIR, running_in_cluster
from webhook.cluster.kubeconfig import KubeconfigError, load_kubeconfig
from webhook.cluster.reader import Cluster
from webhook.contract import constants
from webhook.engine.values import is_namespace_name
from webhook.manifests.files import FileError, read_file
from webhook.ops.why.explain import Explanation, explain
from webhook.ops.why.read import (
    OwnerLookup,
    WhyError,
    read_install,
    read_namespace,
    read_object,
    read_pods,
)
from webhook.ops.why.render import render_json, render_text
from webhook.ops.why.target import TargetError, parse_target

__all__ = ["TargetError", "WhyError", "WhyOptions", "render_json", "render_text", "why"]

DEFAULT_TIMEOUT: Final = 15.0
_NAMESPACE_FILE_LIMIT: Final = 1024


@dataclass(frozen=True)
class WhyOptions:
    """Where to look: the namespace (``None``: the context's, as kubectl), the install."""

    namespace: str | None = None
    configuration: str = "sidecar-injector"
    config_file: Path | None = None
    timeout: float = DEFAULT_TIMEOUT


def why(target: str, *, kubeconfig: Path | None, options: WhyOptions) -> tuple[Explanation, str]:
    """Explain ``target`` (``KIND/NAME``); the answer and the API server's address.

    Raises ``TargetError`` or ``WhyError`` with one line.
    """
    if not target.partition("/")[1]:
        parse_target(target, constants.DEFAULT_NAMESPACE)  # says what KIND/NAME is
    try:
        configuration = kube.load_configuration(kubeconfig)
    except kube.ConfigurationError as err:
        raise WhyError(str(err)) from None
    namespace = options.namespace or default_namespace(kubeconfig)
    wanted = parse_target(target, namespace)
    connection = kube.Connection(configuration, connect_timeout=min(5.0, options.timeout))
    cluster = Cluster(connection, timeout=options.timeout)
    try:
        obj = read_object(cluster, wanted)
        info = read_namespace(cluster, wanted.namespace)
        install = read_install(
            cluster, configuration=options.configuration, config_file=options.config_file
        )
        pods = read_pods(cluster, wanted, obj)
        answer = explain(
            wanted,
            obj,
            namespace=info,
            install=install,
            pods=pods,
            owner_of=OwnerLookup(cluster),
            version=__version__,
        )
    finally:
        connection.clear()
    return answer, connection.host


def default_namespace(kubeconfig: Path | None) -> str:
    """The namespace kubectl would use: the context's, the pod's in a cluster, else ``default``."""
    if kubeconfig is None and running_in_cluster():
        try:
            text = read_file(SERVICE_ACCOUNT_DIR / "namespace", limit=_NAMESPACE_FILE_LIMIT)
        except FileError:
            return constants.DEFAULT_NAMESPACE
        name = text.decode(errors="replace").strip()
        return name if is_namespace_name(name) else constants.DEFAULT_NAMESPACE
    try:
        loaded = load_kubeconfig(kubeconfig)
    except (KubeconfigError, FileError):
        return constants.DEFAULT_NAMESPACE
    context = (loaded.config.get("contexts") or [{}])[0].get("context") or {}
    found = context.get("namespace")
    if isinstance(found, str) and is_namespace_name(found):
        return found
    return constants.DEFAULT_NAMESPACE
