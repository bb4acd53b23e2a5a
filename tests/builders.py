"""The objects tests send and look up: one pod, one AdmissionReview, one namespace.

Every tier builds its inputs here, so a field kube-apiserver starts sending
(or a default a test relies on) is changed in one place. The builders make
plain dicts, as the webhook receives them; keyword arguments named as the
API names them (``generateName``, ``dryRun``, ``subResource``) go into the
object unchanged, ``None`` included, so a test can send ``annotations: null``.
Also here: the paths that are not the regular file a command expects (a
FIFO, ``/dev/zero``, a directory, a sparse giant) for the bounds on reads.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

import orjson
import yaml

from webhook.contract import constants
from webhook.contract.namespaces import NamespaceInfo
from webhook.engine.config import InjectorConfig
from webhook.engine.settings import ProxySettings, resolve_settings
from webhook.engine.values import MAX_CIDRS, MAX_PORTS
from webhook.manifests import revisions

REPO = Path(__file__).resolve().parent.parent
# The golden inputs and outputs (tests/golden/README.md), shared by the tiers.
GOLDEN = REPO / "tests" / "golden"

# The uid of the AdmissionReview example in the Kubernetes documentation.
UID = "705ab4f5-6393-11e8-b7cc-42010a800002"
POD_KIND = MappingProxyType({"group": "", "version": "v1", "kind": "Pod"})
POD_RESOURCE = MappingProxyType({"group": "", "version": "v1", "resource": "pods"})
ENABLED = MappingProxyType({"sidecar-injection": "enabled"})
# Who creates most pods: the ReplicaSet controller, through its service account.
REPLICASET_CONTROLLER = MappingProxyType(
    {"username": "system:serviceaccount:kube-system:replicaset-controller"}
)


def pod(
    name: str | None = "web",
    *,
    image: str = "nginx:1.27",
    containers: Iterable[Mapping[str, Any]] | None = None,
    spec: Mapping[str, Any] | None = None,
    **metadata: Any,
) -> dict[str, Any]:
    """A Pod with one container ``app``; ``name=None`` leaves the name out (use ``generateName``).

    ``containers`` replaces the one container; ``spec`` adds or replaces
    other spec fields; every other keyword is a metadata field.
    """
    meta: dict[str, Any] = {} if name is None else {"name": name}
    meta.update(metadata)
    body: dict[str, Any] = {
        "containers": (
            [{"name": "app", "image": image}]
            if containers is None
            else [dict(c) for c in containers]
        )
    }
    body.update(spec or {})
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": body}


def replicaset_pod(*, spec: Mapping[str, Any] | None = None, **metadata: Any) -> dict[str, Any]:
    """A pod as kube-apiserver sends it for a ReplicaSet's create: ``generateName``, no name."""
    return pod(
        None, spec=spec, **{"generateName": "web-7d9f-", "labels": {"app": "web"}, **metadata}
    )


def review(
    obj: Any = None,
    *,
    namespace: str = "demo",
    uid: str = UID,
    operation: str = "CREATE",
    api_version: str = "admission.k8s.io/v1",
    kind: Mapping[str, str] = POD_KIND,
    resource: Mapping[str, str] = POD_RESOURCE,
    **request: Any,
) -> dict[str, Any]:
    """An AdmissionReview for ``obj`` (default :func:`replicaset_pod`) in ``namespace``.

    Other keywords are request fields (``subResource``, ``oldObject``...) or
    replace the usual ones (``dryRun``, ``userInfo``).
    """
    fields: dict[str, Any] = {
        "uid": uid,
        "kind": dict(kind),
        "resource": dict(resource),
        "namespace": namespace,
        "operation": operation,
        "userInfo": dict(REPLICASET_CONTROLLER),
        "object": replicaset_pod() if obj is None else obj,
        "dryRun": False,
    }
    fields.update(request)
    return {"apiVersion": api_version, "kind": "AdmissionReview", "request": fields}


def review_bytes(obj: Any = None, **options: Any) -> bytes:
    """:func:`review` as the body kube-apiserver posts."""
    return orjson.dumps(review(obj, **options))


def namespace(
    name: str = "demo",
    labels: Mapping[str, str] | None = None,
    annotations: Mapping[str, str] | None = None,
) -> NamespaceInfo:
    """What a namespace source hands out for ``name``."""
    return NamespaceInfo(
        name, MappingProxyType(dict(labels or {})), MappingProxyType(dict(annotations or {}))
    )


def enabled_namespace(name: str = "demo", **labels: str) -> NamespaceInfo:
    """A namespace labelled ``sidecar-injection=enabled`` (and ``labels``)."""
    return namespace(name, {**ENABLED, **labels})


def namespaces_yaml(*namespaces: NamespaceInfo) -> str:
    """A namespaces file (``serve --namespaces-file``) holding ``namespaces``."""
    documents = []
    for info in namespaces:
        metadata: dict[str, Any] = {"name": info.name}
        if info.labels:
            metadata["labels"] = dict(info.labels)
        if info.annotations:
            metadata["annotations"] = dict(info.annotations)
        documents.append({"apiVersion": "v1", "kind": "Namespace", "metadata": metadata})
    return yaml.safe_dump_all(documents, sort_keys=False)


def proxy_settings(config: InjectorConfig | None = None, **annotations: str) -> ProxySettings:
    """Settings from pod annotations alone (``proxy-cpu-request="100m"``: keys without the prefix)."""
    return resolve_settings(
        config or InjectorConfig(),
        namespace_labels={},
        namespace_annotations={},
        pod_annotations={constants.PREFIX + key: value for key, value in annotations.items()},
    )


def worst_proxy_settings() -> ProxySettings:
    """Every list at its maximum, every item in its longest spelling."""
    ports = ",".join(str(65535 - i) for i in range(MAX_PORTS))

    def cidrs(kind: int) -> str:
        return ",".join(
            f"{0x1000 + kind:x}:{0x1000 + i:x}:2222:3333:4444:5555:6666:7777/128"
            for i in range(MAX_CIDRS)
        )

    return proxy_settings(**{
        "include-inbound-ports": ports,
        "exclude-inbound-ports": ports,
        "exclude-outbound-ports": ports,
        "exclude-outbound-cidrs": cidrs(1),
        "include-outbound-cidrs": cidrs(2),
    })  # fmt: skip


def webhook_configuration(
    revision: str = constants.DEFAULT_REVISION,
    tags: Iterable[str] = (),
    *,
    excluded: Iterable[str] = constants.DEFAULT_EXCLUDED_NAMESPACES,
) -> dict[str, Any]:
    """A revision's MutatingWebhookConfiguration as its install renders it (without caBundle)."""
    name = revisions.object_name(revision)
    webhooks = [
        {
            "name": revisions.webhook_name(entry.entry, revision),
            "admissionReviewVersions": ["v1", "v1beta1"],
            "clientConfig": {
                "service": {
                    "name": name,
                    "namespace": constants.SERVICE_NAMESPACE,
                    "path": "/mutate",
                    "port": 443,
                }
            },
            "rules": [
                {
                    "operations": ["CREATE"],
                    "apiGroups": [""],
                    "apiVersions": ["v1"],
                    "resources": ["pods"],
                    "scope": "Namespaced",
                }
            ],
            "namespaceSelector": dict(entry.namespace_selector),
            "objectSelector": dict(entry.object_selector),
            "matchConditions": entry.conditions,
            "failurePolicy": "Fail",
            "matchPolicy": "Equivalent",
            "sideEffects": "NoneOnDryRun",
            "timeoutSeconds": 5,
            "reinvocationPolicy": "Never",
        }
        for entry in revisions.entries(revision, list(tags), list(excluded))
    ]
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {
            "name": name,
            "labels": {constants.REVISION_LABEL: revision},
            "resourceVersion": "1",
        },
        "webhooks": webhooks,
    }


WEBHOOK_CONFIGURATIONS = "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations"


# The namespaces file most service tests serve: ``demo``, opted in.
DEMO_NAMESPACES = namespaces_yaml(enabled_namespace())


# --- paths that are not the regular file a command expects --------------------------


def fifo(path: Path) -> Path:
    """A FIFO at ``path``: reading it waits for a writer that never comes."""
    os.mkfifo(path)
    return path


def dev_zero(path: Path) -> Path:
    """A symlink at ``path`` to ``/dev/zero``, which never ends."""
    path.symlink_to("/dev/zero")
    return path


def directory(path: Path) -> Path:
    """A directory at ``path``."""
    path.mkdir()
    return path


def sparse_file(path: Path, size: int) -> Path:
    """A file of ``size`` bytes at ``path`` that takes no disk space (all holes)."""
    with path.open("wb") as sparse:
        sparse.truncate(size)
    return path


def kubeconfig(
    path: Path,
    *,
    server: str = "https://127.0.0.1:6443",
    user: dict[str, Any] | None = None,
    cluster: dict[str, Any] | None = None,
    current: str = "c",
) -> Path:
    """A one-context kubeconfig (JSON, which is YAML) at ``path``."""
    path.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": current,
                "clusters": [{"name": "c", "cluster": {"server": server, **(cluster or {})}}],
                "users": [{"name": "u", "user": user if user is not None else {"token": "t"}}],
                "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
            }
        )
    )
    return path
