"""Injector-wide configuration: the defaults that namespaces and pods override.

Plain frozen dataclasses, so the engine stays on the standard library. The
file they are read from (YAML, camelCase keys, thorough validation, errors
that name the key) is the manifests layer's business:
``webhook.manifests.config_file`` checks every value and builds these. A config
constructed here directly (tests, the benchmark) is trusted as it is.
Everything has a built-in default, so an empty file (or none) is a valid config.

Each class records in ``from_file`` the fields the config file set. A value
spelled out in the file, even one equal to its default, is the file's choice,
and previews say so ("injector config" rather than "built-in default"); this is
why equal configs can differ in provenance, and why ``from_file`` takes no part
in ``==`` or ``hash``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, get_args

from webhook import __version__
from webhook.contract import constants
from webhook.engine.values import LOG_LEVELS

LogLevel = Literal["trace", "debug", "info", "warning", "error", "critical", "off"]
if set(get_args(LogLevel)) != set(LOG_LEVELS):  # pragma: no cover - keeps the two in step
    raise RuntimeError("config.LogLevel and values.LOG_LEVELS disagree")


@dataclass(frozen=True, slots=True)
class Resources:
    """Proxy container resources; ``None`` leaves that field unset in the pod."""

    cpu_request: str | None = "100m"
    cpu_limit: str | None = None
    memory_request: str | None = "128Mi"
    memory_limit: str | None = "512Mi"
    # The names of the fields above that the config file set (module docstring).
    from_file: frozenset[str] = field(default=frozenset(), compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class ProxyConfig:
    """The Envoy sidecar. Only the config may choose the image repository and UID."""

    image: str = "docker.io/envoyproxy/envoy"
    version: str = "v1.40.0"
    uid: int = constants.DEFAULT_PROXY_UID
    log_level: LogLevel = "warning"
    resources: Resources = Resources()
    xds_address: str | None = None
    # Seconds Envoy waits for connections to drain when the pod stops.
    drain_seconds: int = 5
    from_file: frozenset[str] = field(default=frozenset(), compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class InitConfig:
    """The iptables init container."""

    # The image released with this version of the injector.
    image: str = f"ghcr.io/sidecar-injector/mesh-init:{__version__}"
    resources: Resources = Resources(
        cpu_request="10m", cpu_limit=None, memory_request="16Mi", memory_limit="64Mi"
    )
    from_file: frozenset[str] = field(default=frozenset(), compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class InjectorConfig:
    """Everything the injector needs besides the pod and its namespace."""

    proxy: ProxyConfig = ProxyConfig()
    init: InitConfig = InitConfig()
    excluded_namespaces: tuple[str, ...] = constants.DEFAULT_EXCLUDED_NAMESPACES
    # Intercept IPv6 as well as IPv4: ip6tables rules in mesh-init and IPv6
    # listeners in the proxy. Turn off only where nodes boot with
    # ipv6.disable=1: Envoy refuses a bootstrap naming any IPv6 address on a
    # kernel without IPv6 sockets ("malformed IP address: ::"), so the proxy
    # could not start there. (mesh-init alone would cope: it skips its IPv6
    # half on such nodes.) docs/settings.md, "IPv6".
    ipv6: bool = True
    # Settings (short names, ``xds-address``) that pod annotations may not
    # change: the namespace and this config alone decide them, and a pod
    # annotation giving another value refuses the pod (docs/settings.md,
    # "Locked settings"). The file loader checks the names; the engine
    # ignores one it does not know.
    locked_settings: frozenset[str] = frozenset()
    # The injector revision this config is installed as (docs/upgrade.md): the
    # status annotation of every pod it injects records it. Which pods reach
    # it is the install's selectors' business, not the engine's.
    revision: str = constants.DEFAULT_REVISION
    from_file: frozenset[str] = field(default=frozenset(), compare=False, repr=False)
