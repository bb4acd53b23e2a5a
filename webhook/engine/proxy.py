"""The ``mesh-proxy`` container: Envoy with its whole bootstrap in the args.

Three placements, chosen by the settings (``inject`` puts the dict where it goes):

* classic: a regular container, appended after the app's;
* ``hold-application``: first in ``containers`` with a blocking ``postStart``
  hook. The kubelet starts containers in order and does not start the next one
  until the previous one's postStart hook returns, so the app starts only once
  the proxy answers ``/healthz/ready``;
* ``native-sidecar``: an init container with ``restartPolicy: Always`` and a
  startup probe, so the kubelet starts the containers after it (the user's init
  containers, then the app) only once the proxy is ready. The rules are already
  in place by then, so without the probe their first connections would be
  redirected to a proxy that is not listening yet; ``hold-application`` is
  therefore implied in this mode.
"""

from __future__ import annotations

from typing import Any, Final

from webhook import constants
from webhook.config import InjectorConfig, Resources
from webhook.engine.bootstrap import render_bootstrap
from webhook.engine.iptables import container_resources
from webhook.settings import ProxySettings

# Envoy starts one worker per CPU of the *node*, not of the pod's limit; a
# sidecar needs few, and each costs memory.
CONCURRENCY: Final = 2

# The hold-application hook: poll the health listener with bash's /dev/tcp
# (the envoyproxy/envoy image is Ubuntu-based: bash, no curl), one attempt per
# subshell so a refused connection cannot end the loop. HTTP/1.1, because
# Envoy answers HTTP/1.0 requests with 426 unless told otherwise. Bounded: after about two
# minutes the hook fails and the kubelet restarts the container, which retries.
_WAIT_READY: Final = (
    "for _ in $(seq 1 600); do "
    "if (exec 3<>/dev/tcp/$POD_IP/{port} "
    "&& printf 'GET {path} HTTP/1.1\\r\\nHost: mesh-proxy\\r\\nConnection: close\\r\\n\\r\\n' >&3 "
    '&& read -r _ code _ <&3 && [ "$code" = 200 ]) 2>/dev/null; '
    "then exit 0; fi; sleep 0.2; done; "
    "echo 'mesh-proxy did not become ready' >&2; exit 1"
)


def wait_ready_command() -> list[str]:
    """The postStart exec command that returns once ``/healthz/ready`` answers 200."""
    script = _WAIT_READY.format(port=constants.HEALTH_PORT, path=constants.HEALTH_PATH)
    return ["bash", "-c", script]


def _field_env(name: str, field_path: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"fieldRef": {"fieldPath": field_path}}}


def _health_probe(*, period: int, failures: int) -> dict[str, Any]:
    return {
        "httpGet": {"path": constants.HEALTH_PATH, "port": constants.HEALTH_PORT},
        "periodSeconds": period,
        "failureThreshold": failures,
        "timeoutSeconds": 1,
    }


def proxy_args(settings: ProxySettings, config: InjectorConfig) -> list[str]:
    """Envoy's arguments; ``$(VAR)`` references in them are the kubelet's to expand."""
    return [
        "--config-yaml",
        render_bootstrap(settings, config),
        "--log-level",
        settings.log_level,
        "--drain-time-s",
        str(config.proxy.drain_seconds),
        # One process and a read-only root: hot restart has nothing to hand over to.
        "--disable-hot-restart",
        "--concurrency",
        str(CONCURRENCY),
    ]


def mesh_proxy_container(settings: ProxySettings, config: InjectorConfig) -> dict[str, Any]:
    """The ``mesh-proxy`` container for these settings (see the module docstring)."""
    uid = config.proxy.uid
    container: dict[str, Any] = {
        "name": constants.PROXY_CONTAINER,
        "image": f"{config.proxy.image}:{settings.proxy_version}",
        "command": ["envoy"],
        "args": proxy_args(settings, config),
        "env": [
            _field_env("POD_NAME", "metadata.name"),
            _field_env("POD_NAMESPACE", "metadata.namespace"),
            _field_env("POD_IP", "status.podIP"),
            _field_env("SERVICE_ACCOUNT", "spec.serviceAccountName"),
        ],
        "ports": [
            {
                "name": "http-envoy-prom",
                "containerPort": constants.PROMETHEUS_PORT,
                "protocol": "TCP",
            }
        ],
        "readinessProbe": _health_probe(period=5, failures=3),
        "securityContext": {
            "runAsUser": uid,
            "runAsGroup": uid,
            "runAsNonRoot": True,
            "privileged": False,
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
    }
    resources = container_resources(
        Resources(
            cpu_request=settings.proxy_cpu_request,
            cpu_limit=settings.proxy_cpu_limit,
            memory_request=settings.proxy_memory_request,
            memory_limit=settings.proxy_memory_limit,
        )
    )
    if resources:
        container["resources"] = resources
    if settings.native_sidecar:
        container["restartPolicy"] = "Always"
        # Up to two minutes, polled every second, before the kubelet gives up.
        container["startupProbe"] = _health_probe(period=1, failures=120)
    elif settings.hold_application:
        container["lifecycle"] = {"postStart": {"exec": {"command": wait_ready_command()}}}
    return container


def proxy_volumes(settings: ProxySettings, config: InjectorConfig) -> list[dict[str, Any]]:
    """Volumes the two containers need: none.

    Envoy writes nothing to disk once hot restart is off, and iptables'
    lock (legacy backend only) goes to /dev/shm, so no emptyDir is needed.
    Kept as a function so ``inject`` and the status annotation stay correct
    if a volume is ever added.
    """
    del settings, config
    return []
