"""The ``mesh-proxy`` container: Envoy with its whole bootstrap in the args.

Three placements, chosen by the settings (``inject`` puts the dict where it goes):

* ``native-sidecar`` (the default): an init container with ``restartPolicy:
  Always``, so the kubelet starts the containers after it (the user's init
  containers, then the app) only once its startup probe passes, and stops it
  only after the app has exited. The rules are already in place by then, so
  without the probe their first connections would be redirected to a proxy
  that is not listening yet; ``hold-application`` is therefore implied;
* classic (``native-sidecar: false``, for clusters older than 1.29): a regular
  container, appended after the app's;
* classic with ``hold-application``: first in ``containers`` with a blocking
  ``postStart`` hook. The kubelet starts containers in order and does not
  start the next one until the previous one's postStart hook returns, so the
  app starts only once the proxy answers ``/healthz/ready``.

Shutdown (see ``drain_command``): Envoy exits at once on SIGTERM, so what a
pod's connections get on the way out is decided by the ``preStop`` hook.
"""

from __future__ import annotations

from typing import Any, Final

from webhook.contract import constants
from webhook.engine.bootstrap import HEALTH_LISTENER, bootstrap_expr
from webhook.engine.config import InjectorConfig
from webhook.engine.expr import (
    Expr,
    Present,
    Setting,
    concat,
    flatten,
    if_,
    is_none,
    list_of,
    render,
)
from webhook.engine.resources import resources_template
from webhook.engine.settings import ProxySettings, settings_env

# Envoy starts one worker per CPU of the *node*, not of the pod's limit; a
# sidecar needs few, and each costs memory.
CONCURRENCY: Final = 2

# Probe timings, from how long Envoy takes to answer /healthz/ready
# (docs/lifecycle.md, "Start-up", has the measurements): a static bootstrap
# is ready within a fraction of a second, and with an xds-address nobody
# answers Envoy waits out the CDS and then the LDS initial fetch timeout (15 s
# each) before it calls itself ready.
#
# Startup: every second (the kubelet's minimum; in native mode the app waits
# for it, so the period is start-up latency), for up to a minute: twice the
# unreachable-control-plane start and far beyond the static one, so a slow
# node never restarts a proxy that is merely slow, and a proxy that cannot
# start is restarted within a minute. Present in both modes: once it passes,
# the kubelet probes readiness at once instead of at the next readiness tick,
# which would make a classic pod Ready up to a readiness period late.
STARTUP_PERIOD_SECONDS: Final = 1
STARTUP_FAILURE_THRESHOLD: Final = 60
# Readiness after start-up only notices a proxy that stops being ready (Envoy
# no longer live, or its health listener gone), which needs no haste: the
# kubelet's defaults (every 10 s, 3 failures, 1 s timeout) are left to it.

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

# The preStop hooks talk to the admin listener the same way. A subshell per
# call, so that a refused connection (Envoy already gone) cannot end the script.
_ADMIN: Final = (
    "admin() (exec 3<>/dev/tcp/127.0.0.1/{port} && printf '%s %s HTTP/1.1\\r\\n"
    "Host: mesh-proxy\\r\\nConnection: close\\r\\nContent-Length: 0\\r\\n\\r\\n' "
    '"$1" "$2" >&3 && while IFS= read -r line; do echo "$line"; done <&3)\n'
)
# Stop accepting inbound connections. ``inboundonly`` leaves the outbound
# listener (traffic_direction OUTBOUND) alone, so an app finishing its last
# requests can still call out; the inbound listener closes its socket, so a
# new inbound connection, redirected to 15006, is refused at once (clients
# retry another endpoint) instead of being accepted and then cut. Not
# ``graceful``: for a TCP passthrough Envoy's graceful drain only means
# "keep accepting for --drain-time-s, then stop", the opposite of what a pod
# on its way out wants. Connections already open are untouched. The health
# listener (15021/15090, no direction) keeps answering, and /healthz/ready
# stays 200 (a listener drain leaves Envoy live; tested in pod-in-a-box on
# Envoy 1.40): probes go on passing, and Prometheus gets its last scrape.
# Kubernetes takes a terminating pod out of Services whatever its readiness.
_STOP_INBOUND: Final = "admin POST '/drain_listeners?inboundonly' >/dev/null\n"
# The same request alone, for native mode (every byte is in every pod).
_STOP_INBOUND_ONLY: Final = (
    "exec 3<>/dev/tcp/127.0.0.1/{port} && printf 'POST /drain_listeners?inboundonly HTTP/1.1"
    "\\r\\nHost: mesh-proxy\\r\\nContent-Length: 0\\r\\n\\r\\n' >&3 && read -r _ code _ <&3 "
    '&& [ "$code" = 200 ]'
)
# Then wait while the app still has connections through the proxy (either
# direction), up to the drain time: the app got its SIGTERM at the same moment
# and closes them as it finishes, or they all go when it exits. Every
# listener's connections count: the static inbound and outbound ones, and
# listeners pushed over xDS, to which 15001/15006 hand connections by their
# original destination (they are counted there, not under the listener that
# accepted them). Left out: the admin listener (this hook's own requests),
# the health listener (probes and kept-alive scrapes, which would hold the
# drain to its end) and the per-worker copies of each total. A message (shown
# in the kubelet's FailedPreStopHook event) when time ran out.
_WAIT_IDLE: Final = (
    "while [ $SECONDS -lt {seconds} ]; do\n"
    "  open=0\n"
    "  while read -r name value; do\n"
    "    case $name in listener.admin.*|listener.{health}.*|*.worker_[0-9]*|*.main_thread.*) ;;\n"
    "      listener.*.downstream_cx_active:) open=$((open + ${{value%$'\\r'}}));; esac\n"
    "  done < <(admin GET /stats?filter=downstream_cx_active)\n"
    '  [ "$open" = 0 ] && exit 0\n'
    "  sleep 0.2\n"
    "done\n"
    'echo "mesh-proxy: drain time ({seconds}s) is up with $open connections open" >&2\n'
    "exit 1"
)


def wait_ready_command() -> list[str]:
    """The postStart exec command that returns once ``/healthz/ready`` answers 200."""
    script = _WAIT_READY.format(port=constants.HEALTH_PORT, path=constants.HEALTH_PATH)
    return ["bash", "-c", script]


def drain_command(*, native: bool, seconds: int) -> list[str]:
    """The preStop exec command: stop inbound, and in classic mode wait for the app.

    What the kubelet does after preStop decides what each mode needs. Classic:
    every container's preStop runs at once and each container gets SIGTERM as
    soon as its own hook returns; the app got SIGTERM at the start, and Envoy
    exits on SIGTERM at once, closing every connection through it. So the hook
    itself must wait until the app's connections are done or ``seconds`` are
    up. Native (restartable init container): the preStop still runs at the
    start of termination, alongside the app's, but the kubelet sends the
    sidecar its SIGTERM only after every app container has exited. That
    already keeps the app's connections alive to the end (and lets Jobs
    finish); what it lacks is the refusal of new inbound connections while the
    app winds down, so the native hook only stops the inbound listener.
    """
    if native or seconds == 0:
        return ["bash", "-c", _STOP_INBOUND_ONLY.format(port=constants.ADMIN_PORT)]
    script = _ADMIN.format(port=constants.ADMIN_PORT) + _STOP_INBOUND
    script += _WAIT_IDLE.format(seconds=seconds, health=HEALTH_LISTENER)
    return ["bash", "-c", script]


def _field_env(name: str, field_path: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"fieldRef": {"fieldPath": field_path}}}


def _health_probe(**timings: int) -> dict[str, Any]:
    return {
        "httpGet": {"path": constants.HEALTH_PATH, "port": constants.HEALTH_PORT},
        **timings,
    }


def proxy_args_template(config: InjectorConfig) -> Expr:
    """Envoy's arguments; ``$(VAR)`` references in them are the kubelet's to expand."""
    xds = Setting("xds_address")
    return flatten(
        list_of(
            ("--config-yaml",),
            list_of(bootstrap_expr(config)),
            ("--log-level",),
            list_of(Setting("log_level")),
            # One process and a read-only root: hot restart has nothing to hand over to.
            ("--disable-hot-restart", "--concurrency", str(CONCURRENCY)),
            # How long a listener replaced over xDS keeps its connections; nothing
            # else uses it (Envoy exits on SIGTERM: the preStop hook drains).
            if_(is_none(xds), (), ("--drain-time-s", str(config.proxy.drain_seconds))),
        )
    )


def proxy_args(settings: ProxySettings, config: InjectorConfig) -> list[str]:
    """Envoy's arguments for these settings (``proxy_args_template`` evaluated)."""
    args: list[str] = render(proxy_args_template(config), settings_env(settings))
    return args


def mesh_proxy_template(config: InjectorConfig) -> dict[str, Any]:
    """The ``mesh-proxy`` container as a template over the settings (see the module docstring)."""
    uid = config.proxy.uid
    native = Setting("native_sidecar")
    seconds = config.proxy.drain_seconds
    has_resources, resources = resources_template(
        cpu_request=Setting("proxy_cpu_request"),
        cpu_limit=Setting("proxy_cpu_limit"),
        memory_request=Setting("proxy_memory_request"),
        memory_limit=Setting("proxy_memory_limit"),
    )
    classic_stop = {"exec": {"command": drain_command(native=False, seconds=seconds)}}
    return {
        "name": constants.PROXY_CONTAINER,
        "image": concat(f"{config.proxy.image}:", Setting("proxy_version")),
        "command": ["envoy"],
        "args": proxy_args_template(config),
        "env": [
            _field_env("POD_NAME", "metadata.name"),
            _field_env("POD_NAMESPACE", "metadata.namespace"),
            _field_env("POD_IP", "status.podIP"),
            _field_env("SERVICE_ACCOUNT", "spec.serviceAccountName"),
        ],
        # protocol TCP, privileged false: Kubernetes' defaults, left to it.
        "ports": [{"name": "http-envoy-prom", "containerPort": constants.PROMETHEUS_PORT}],
        "startupProbe": _health_probe(
            periodSeconds=STARTUP_PERIOD_SECONDS, failureThreshold=STARTUP_FAILURE_THRESHOLD
        ),
        "readinessProbe": _health_probe(),
        "securityContext": {
            "runAsUser": uid,
            "runAsGroup": uid,
            "runAsNonRoot": True,
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
            # What PodSecurity "restricted" asks for; Envoy needs no unusual syscalls.
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "resources": Present(has_resources, resources),
        "restartPolicy": Present(native, "Always"),
        "lifecycle": if_(
            native,
            {"preStop": {"exec": {"command": drain_command(native=True, seconds=seconds)}}},
            if_(
                Setting("hold_application"),
                {"postStart": {"exec": {"command": wait_ready_command()}}, "preStop": classic_stop},
                {"preStop": classic_stop},
            ),
        ),
    }


def mesh_proxy_container(settings: ProxySettings, config: InjectorConfig) -> dict[str, Any]:
    """The ``mesh-proxy`` container for these settings (``mesh_proxy_template`` rendered)."""
    container: dict[str, Any] = render(mesh_proxy_template(config), settings_env(settings))
    return container
