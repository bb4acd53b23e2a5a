"""The injector config file: YAML in, the engine's ``InjectorConfig`` out.

Loaded once at start-up (the ConfigMap in ``manifests/``), so its validation
can be thorough and its errors precise: a typo in the config must stop the
injector from starting rather than inject something surprising. The file is
read into pydantic models that mirror the engine's dataclasses
(``webhook.engine.config``) with camelCase keys; each value is checked there,
and only the fields the file set are handed on, so the engine's own defaults
fill the rest and ``from_file`` says which is which. The models carry the
engine classes' names because pydantic's messages name them ("Input should be
a valid dictionary or instance of ProxyConfig").
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, ClassVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic.alias_generators import to_camel

from webhook.contract import constants
from webhook.engine import config as engine
from webhook.engine.config import LogLevel
from webhook.engine.quantity import QuantityError, check_quantity
from webhook.engine.settings import SETTING_NAMES
from webhook.engine.values import (
    REVISION_NAME_RULE,
    check_address,
    is_revision_name,
    parse_image_tag,
    shorten,
)
from webhook.manifests.files import CONFIG_LIMIT, FileError, read_file

__all__ = ["ConfigError", "dump_config", "load_config", "parse_config"]

# The defaults are the engine's; the models below repeat them only so that a
# model read from the file is complete.
_RESOURCES = engine.Resources()
_PROXY = engine.ProxyConfig()
_INIT = engine.InitConfig()
_CONFIG = engine.InjectorConfig()


class ConfigError(ValueError):
    """The injector config file is unreadable or invalid; the message says where."""


class _Model(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True
    )
    # The engine dataclass this model is read into.
    target: ClassVar[type[Any]]

    @field_validator("*", mode="after")
    @classmethod
    def _printable(cls, value: object) -> object:
        # Every string here ends up in a pod spec, a log line or a command
        # line; a control character (a newline in an image name) is a typo
        # at best and a header or log injection at worst.
        texts = value if isinstance(value, tuple | list | frozenset) else (value,)
        for text in texts:
            if isinstance(text, str) and any(c < " " or c == "\x7f" for c in text):
                raise ValueError(f"{text!r} contains a control character")
        return value

    def to_engine(self) -> Any:
        """The engine's dataclass with the fields the file set, and ``from_file`` naming them."""
        values = {}
        for name in self.model_fields_set:
            value = getattr(self, name)
            values[name] = value.to_engine() if isinstance(value, _Model) else value
        return self.target(**values, from_file=frozenset(self.model_fields_set))


class Resources(_Model):
    target = engine.Resources

    cpu_request: str | None = _RESOURCES.cpu_request
    cpu_limit: str | None = _RESOURCES.cpu_limit
    memory_request: str | None = _RESOURCES.memory_request
    memory_limit: str | None = _RESOURCES.memory_limit

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
    target = engine.ProxyConfig

    image: str = _PROXY.image
    version: str = _PROXY.version
    uid: int = Field(default=_PROXY.uid, ge=1, le=2**31 - 1)
    log_level: LogLevel = _PROXY.log_level
    resources: Resources = Resources()
    xds_address: str | None = _PROXY.xds_address
    drain_seconds: int = Field(default=_PROXY.drain_seconds, ge=0, le=300)

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
    target = engine.InitConfig

    image: str = _INIT.image
    # Never handed on (only fields the file set are): without ``resources``
    # the engine's InitConfig default applies; with a partial one, Resources'
    # own defaults fill the rest, as they did when the models were the config.
    resources: Resources = Resources()


class InjectorConfig(_Model):
    target = engine.InjectorConfig

    proxy: ProxyConfig = ProxyConfig()
    init: InitConfig = InitConfig()
    excluded_namespaces: tuple[str, ...] = _CONFIG.excluded_namespaces
    ipv6: bool = _CONFIG.ipv6
    locked_settings: frozenset[str] = _CONFIG.locked_settings
    revision: str = _CONFIG.revision

    @field_validator("revision")
    @classmethod
    def _revision(cls, value: str) -> str:
        if not is_revision_name(value):
            raise ValueError(f"{shorten(value)} is not a revision name ({REVISION_NAME_RULE})")
        return value

    @field_validator("locked_settings", mode="before")
    @classmethod
    def _settings(cls, value: object) -> object:
        # Short names (``xds-address``), as the contract spells them; the full
        # key (``sidecar.mesh.io/xds-address``), as it is written on pods, is
        # taken too and means the same. Stored short.
        if not isinstance(value, list | tuple):
            raise ValueError("must be a list of setting names, e.g. [xds-address]")
        return [_setting_name(index, item) for index, item in enumerate(value)]


# Keys under the prefix that are not settings, and what they do instead.
_NOT_SETTINGS = {
    "inject": "it chooses whether a pod is injected",
    "rev": "it chooses the injector revision",
    "status": "the injector writes it",
}


def _setting_name(index: int, item: object) -> str:
    """One ``lockedSettings`` entry as a short setting name; the error names the entry."""
    entry = f"entry {index + 1}"
    if not isinstance(item, str):
        raise ValueError(f"{entry} ({item!r}) is not a setting name")
    name = item.removeprefix(constants.PREFIX)
    if name in SETTING_NAMES:
        return name
    if name in _NOT_SETTINGS:
        raise ValueError(
            f"{entry} {item!r} is not a setting and cannot be locked: {_NOT_SETTINGS[name]}"
        )
    raise ValueError(
        f"{entry} {shorten(item)} is not a setting (settings: {', '.join(SETTING_NAMES)})"
    )


def parse_config(text: str, *, origin: str = "config") -> engine.InjectorConfig:
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
        model = InjectorConfig.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        path = ".".join(str(part) for part in first["loc"]) or "(top level)"
        raise ConfigError(f"{origin}: {path}: {first['msg']}") from None
    config: engine.InjectorConfig = model.to_engine()
    return config


def dump_config(config: engine.InjectorConfig) -> str:
    """The config as file text (JSON, which is YAML) that ``parse_config`` reads back equal,
    with the same provenance: only the fields the file set (``from_file``) are written.

    The policy mode records its config on the policies this way, so that
    ``check`` can render them again and compare.
    """
    return json.dumps(_dumped(config), separators=(",", ":"), sort_keys=True)


def _dumped(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        written: frozenset[str] = getattr(value, "from_file", frozenset())
        return {to_camel(name): _dumped(getattr(value, name)) for name in sorted(written)}
    if isinstance(value, frozenset):
        return sorted(value)
    if isinstance(value, tuple):
        return list(value)
    return value


def load_config(path: Path | None) -> engine.InjectorConfig:
    """Load the config file, or the built-in defaults when no path is given."""
    if path is None:
        return engine.InjectorConfig()
    try:
        text = read_file(path, limit=CONFIG_LIMIT).decode("utf-8")
    except FileError as err:
        raise ConfigError(f"{path}: cannot read config: {err.reason}") from None
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: cannot read config: {err}") from None
    return parse_config(text, origin=str(path))
