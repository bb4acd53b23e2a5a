"""The pods and AdmissionReview bodies every benchmark uses, built in code.

Generated rather than stored so the sweep sizes are parameters, and so the
engine and the service runs see byte-for-byte the same objects.
"""

from __future__ import annotations

from typing import Any

import orjson

NAMESPACE = "bench"
# The namespace opts in with a label, the common case in a cluster; the
# service reads the same thing from the namespaces file written by service.py.
NAMESPACE_LABELS = {"sidecar-injection": "enabled"}


def container(index: int, *, env_vars: int = 6) -> dict[str, Any]:
    """An application container as Helm charts write them: ports, env, probes, mounts."""
    env: list[dict[str, Any]] = [
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {
            "name": "DB_PASSWORD",
            "valueFrom": {"secretKeyRef": {"name": "db", "key": "password"}},
        },
    ]
    env.extend(
        {"name": f"SETTING_{index}_{n}", "value": f"value-{n}-of-container-{index}"}
        for n in range(max(env_vars - len(env), 0))
    )
    port = 8080 + index
    return {
        "name": f"app-{index}",
        "image": f"registry.example.com/team/app-{index}:1.{index}.0",
        "imagePullPolicy": "IfNotPresent",
        "args": ["--listen", f":{port}", "--log-format", "json"],
        "ports": [
            {"name": f"http-{index}", "containerPort": port, "protocol": "TCP"},
            {"name": f"metrics-{index}", "containerPort": 9090 + index, "protocol": "TCP"},
        ],
        "env": env,
        "resources": {
            "requests": {"cpu": "250m", "memory": "256Mi"},
            "limits": {"cpu": "1", "memory": "512Mi"},
        },
        "readinessProbe": {
            "httpGet": {"path": "/ready", "port": port},
            "periodSeconds": 5,
            "failureThreshold": 3,
        },
        "livenessProbe": {
            "httpGet": {"path": "/live", "port": port},
            "initialDelaySeconds": 10,
            "periodSeconds": 10,
        },
        "volumeMounts": [
            {"name": "config", "mountPath": "/etc/app", "readOnly": True},
            {"name": "tmp", "mountPath": "/var/cache/app"},
        ],
        "securityContext": {"runAsNonRoot": True, "readOnlyRootFilesystem": True},
    }


def pod(
    *,
    containers: int = 3,
    env_vars: int = 6,
    annotation_bytes: int = 0,
) -> dict[str, Any]:
    """A Deployment-made pod; ``env_vars`` go to the first container (the env-heavy case).

    ``annotation_bytes`` adds 1 KiB annotations up to that size, the shape of
    tooling annotations (last-applied configuration, CI metadata) in the wild.
    """
    annotations = {"prometheus.io/scrape": "true", "prometheus.io/port": "9090"}
    chunk = 1024
    for n in range(annotation_bytes // chunk):
        annotations[f"ci.example.com/build-info-{n}"] = "x" * (chunk - 40) + f"{n:040d}"
    items = [container(i, env_vars=env_vars if i == 0 else 6) for i in range(containers)]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "generateName": "web-7d9f8b6c5d-",
            "namespace": NAMESPACE,
            "labels": {"app": "web", "pod-template-hash": "7d9f8b6c5d", "tier": "frontend"},
            "annotations": annotations,
            "ownerReferences": [
                {
                    "apiVersion": "apps/v1",
                    "kind": "ReplicaSet",
                    "name": "web-7d9f8b6c5d",
                    "uid": "0f6f8f3e-1a7c-4d53-9b1e-5a1cf0d3a0a1",
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "spec": {
            "serviceAccountName": "web",
            "terminationGracePeriodSeconds": 30,
            "volumes": [
                {"name": "config", "configMap": {"name": "web-config"}},
                {"name": "tmp", "emptyDir": {}},
            ],
            "containers": items,
        },
    }


def one_container_pod(*, name_prefix: str = "web-") -> dict[str, Any]:
    """The smallest realistic pod: the "default injected Pod" of the size goal, and what the
    end-to-end section creates (no owner, so no controller touches it)."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"generateName": name_prefix, "labels": {"app": "web"}},
        "spec": {
            "containers": [
                {
                    "name": "app",
                    "image": "registry.example.com/team/app:1.0.0",
                    "ports": [{"name": "http", "containerPort": 8080}],
                    "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}},
                }
            ]
        },
    }


def review(obj: dict[str, Any], *, uid: str = "6c3c2b8e-3f0e-4c1a-9f57-2d8f1b1e9a00") -> bytes:
    """The AdmissionReview kube-apiserver sends for creating ``obj`` (v1), as bytes."""
    return orjson.dumps(
        {
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": uid,
                "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "resource": {"group": "", "version": "v1", "resource": "pods"},
                "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
                "requestResource": {"group": "", "version": "v1", "resource": "pods"},
                "namespace": NAMESPACE,
                "operation": "CREATE",
                "userInfo": {
                    "username": "system:serviceaccount:kube-system:replicaset-controller",
                    "groups": ["system:serviceaccounts", "system:authenticated"],
                },
                "object": obj,
                "oldObject": None,
                "dryRun": False,
                "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"},
            },
        }
    )


# Four pod shapes: "typical", and sweeps that each push one dimension of it.
CASES: dict[str, dict[str, Any]] = {
    "typical (3 containers)": {},
    "30 containers": {"containers": 30},
    "1,500 env vars": {"env_vars": 1500},
    "64 KiB annotations": {"annotation_bytes": 64 * 1024},
}
