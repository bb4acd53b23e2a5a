"""Injector-wide configuration: the defaults that namespaces and pods override.

Loaded once at start-up from a YAML file (the ConfigMap in ``manifests/``), so
its validation can be thorough and its errors precise: a typo in the config
must stop the injector from starting rather than inject something surprising.
Everything has a built-in default, so an empty file (or none) is a valid config.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic.alias_generators import to_camel

from webhook import __version__
from webhook.contract import constants
from webhook.engine.quantity import QuantityError, check_quantity
from webhook.engine.values import LOG_LEVELS, check_address, parse_image_tag

LogLevel = Literal["trace", "debug", "info", "warning", "error", "critical", "off"]
if set(get_args(LogLevel)) != set(LOG_LEVELS):  # pragma: no cover - keeps the two in step
    raise RuntimeError("config.LogLevel and values.LOG_LEVELS disagree")


class ConfigError(ValueError):
    """The injector config file is unreadable or invalid; the message says where."""


class _Model(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True
    )

    @field_validator("*", mode="after")
    @classmethod
    def _printable(cls, value: object) -> object:
        # Every string here ends up in a pod spec, a log line or a command
        # line; a control character (a newline in an image name) is a typo
        # at best and a header or log injection at worst.
        texts = value if isinstance(value, tuple | list) else (value,)
        for text in texts:
            if isinstance(text, str) and any(c < " " or c == "\x7f" for c in text):
                raise ValueError(f"{text!r} contains a control character")
        return value


class Resources(_Model):
    """Proxy container resources; ``None`` leaves that field unset in the pod."""

    cpu_request: str | None = "100m"
    cpu_limit: str | None = None
    memory_request: str | None = "128Mi"
    memory_limit: str | None = "512Mi"

    @field_validator("cpu_request", "cpu_limit", "memory_request", "memory_limit", mode="before")
    @classmethod
    def _quantity(cls, value: object) -> object:
        # YAML reads ``cpuRequest: 1`` as a number; Kubernetes users mean "1".
        if isinstance(value, int | float) and not isinstance(value, bool):
            value = str(value)
        if isinstance(value, str):
            try:
                check_quantity(value)
            except QuantityError as err:
                raise ValueError(str(err)) from None
        return value


class ProxyConfig(_Model):
    """The Envoy sidecar. Only this file may choose the image repository and UID."""

    image: str = "docker.io/envoyproxy/envoy"
    version: str = "v1.40.0"
    uid: int = Field(default=constants.DEFAULT_PROXY_UID, ge=1, le=2**31 - 1)
    log_level: LogLevel = "warning"
    resources: Resources = Resources()
    xds_address: str | None = None
    # Seconds Envoy waits for connections to drain when the pod stops.
    drain_seconds: int = Field(default=5, ge=0, le=300)

    @field_validator("image")
    @classmethod
    def _repository(cls, value: str) -> str:
        last = value.rsplit("/", 1)[-1]
        if not value or any(c.isspace() for c in value) or "@" in value or ":" in last:
            raise ValueError("must be an image repository without tag or digest")
        return value

    @field_validator("version")
    @classmethod
    def _tag(cls, value: str) -> str:
        # The same rule as the proxy-version setting: it becomes the image tag.
        return parse_image_tag(value)

    @field_validator("xds_address")
    @classmethod
    def _xds(cls, value: str | None) -> str | None:
        if value is not None:
            check_address(value)
        return value


class InitConfig(_Model):
    """The iptables init container."""

    # The image released with this version of the injector.
    image: str = f"ghcr.io/sidecar-injector/mesh-init:{__version__}"
    resources: Resources = Resources(
        cpu_request="10m", cpu_limit=None, memory_request="16Mi", memory_limit="64Mi"
    )


class InjectorConfig(_Model):
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


def parse_config(text: str, *, origin: str = "config") -> InjectorConfig:
    """Parse YAML config text; errors name the origin and the offending key path."""
    try:
        data: Any = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{origin}:{where} is not valid YAML") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{origin}: must be a mapping, not {type(data).__name__}")
    try:
        return InjectorConfig.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        path = ".".join(str(part) for part in first["loc"]) or "(top level)"
        raise ConfigError(f"{origin}: {path}: {first['msg']}") from None


def load_config(path: Path | None) -> InjectorConfig:
    """Load the config file, or the built-in defaults when no path is given."""
    if path is None:
        return InjectorConfig()
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: cannot read config: {err}") from None
    return parse_config(text, origin=str(path))
