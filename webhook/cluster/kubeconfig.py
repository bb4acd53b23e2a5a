"""Kubeconfig files read within bounds, before the Kubernetes client sees them.

The client reads the kubeconfig, and every file it names, whole and
unchecked: ``tokenFile: /dev/zero`` grows the process until the machine
runs out of memory, and a FIFO hangs it. So the kubeconfig is read here
instead, as kubectl reads it, and handed to the client as a dict in which
every file the chosen context names has been read already (regular files of
at most ``CREDENTIAL_LIMIT`` bytes, through ``webhook.manifests.files``) and
inlined as data:

- ``$KUBECONFIG`` (a ``:``-separated list) or ``~/.kube/config``, unless a
  file is given; each file a regular file of at most ``KUBECONFIG_LIMIT``
  bytes. Several files merge as kubectl merges them: the first file to name
  a cluster, user or context wins, and so does the first ``current-context``.
- For the current context only (the others are never read, as with kubectl):
  the cluster's ``certificate-authority`` (when the server is ``https``),
  the user's ``tokenFile``, ``client-certificate`` and ``client-key``, and an
  OIDC ``auth-provider``'s ``idp-certificate-authority``. A relative path is
  taken from the directory of the kubeconfig file that holds the entry.

Left to the client: ``exec`` credential plugins (and ``auth-provider``
commands). They are programs the kubeconfig runs with the user's rights,
so a bound on what they print would guard against nothing such a program
could not do anyway; the client runs them as kubectl does.

This module does not import the client: ``webhook.cluster.kube`` hands it
the result.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import yaml

from webhook.manifests.files import (
    CREDENTIAL_LIMIT,
    KUBECONFIG_LIMIT,
    FileError,
    read_file,
)

try:  # the C loader is ~10x faster; fall back where libyaml is missing
    _Loader: type[yaml.SafeLoader] = yaml.CSafeLoader  # type: ignore[assignment]
except AttributeError:  # pragma: no cover
    _Loader = yaml.SafeLoader

DEFAULT_PATH: Final = "~/.kube/config"
_SECTIONS: Final = ("clusters", "contexts", "users")


class KubeconfigError(ValueError):
    """A kubeconfig (or a file it names) that cannot be used; the message is one line."""


@dataclass(frozen=True)
class Kubeconfig:
    """The current context alone, its files inlined: what the client is given.

    ``base_path`` is the directory of the file that defines the context's
    cluster: the client runs an ``exec`` plugin there, as before.
    """

    config: dict[str, Any]
    base_path: str
    sources: tuple[str, ...]


@dataclass(frozen=True)
class _Entry:
    value: dict[str, Any]
    source: str  # the kubeconfig file it came from


def kubeconfig_paths(explicit: str | os.PathLike[str] | None) -> list[str]:
    """The files to read: the one given, else those of ``$KUBECONFIG`` that exist, else the default.

    A missing file given explicitly is an error when read; a missing file in
    ``$KUBECONFIG`` is skipped, as kubectl and the client skip it.
    """
    if explicit is not None:
        return [os.fspath(explicit)]
    listed = os.environ.get("KUBECONFIG", "")
    candidates = [p for p in listed.split(os.pathsep) if p] or [DEFAULT_PATH]
    return [path for path in map(os.path.expanduser, candidates) if os.path.exists(path)]


def load_kubeconfig(explicit: str | os.PathLike[str] | None = None) -> Kubeconfig:
    """The current context of the kubeconfig, with the files it names read (bounded) and inlined.

    Raises ``KubeconfigError`` naming the file, and for a file it names the
    entry and the field.
    """
    paths = kubeconfig_paths(explicit)
    if not paths:
        listed = os.environ.get("KUBECONFIG")
        raise KubeconfigError(
            f"no kubeconfig: none of KUBECONFIG={listed!r} exists"
            if listed
            else f"no kubeconfig: {DEFAULT_PATH} does not exist"
        )
    entries: dict[str, dict[str, _Entry]] = {section: {} for section in _SECTIONS}
    current = ""
    for path in paths:
        document = _read_document(path)
        current = current or _current_context(document, path)
        for section in _SECTIONS:
            for name, value in _named(document, section, path):
                entries[section].setdefault(name, _Entry(value, path))
    where = " or ".join(paths)
    if not current:
        raise KubeconfigError(f"{where}: no current-context")
    context = _find(entries, "contexts", current, where)
    inner = context.value.get("context")
    if not isinstance(inner, dict):
        raise KubeconfigError(f"{context.source}: context {current!r} has no context mapping")
    cluster_name, user_name = inner.get("cluster"), inner.get("user")
    if not isinstance(cluster_name, str) or not cluster_name:
        raise KubeconfigError(f"{context.source}: context {current!r} names no cluster")
    cluster = _find(entries, "clusters", cluster_name, where)
    config: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Config",
        "current-context": current,
        "contexts": [context.value],
        "clusters": [_inline_cluster(cluster, cluster_name)],
        "users": [],
    }
    https = str(config["clusters"][0]["cluster"].get("server", "")).startswith("https")
    # A context without a user (or naming one nobody defines) means no
    # credentials, as with the client.
    if isinstance(user_name, str) and user_name in entries["users"]:
        user = entries["users"][user_name]
        config["users"].append(_inline_user(user, user_name, https=https))
    return Kubeconfig(config, str(Path(cluster.source).resolve().parent), tuple(paths))


def _read_document(path: str) -> dict[str, Any]:
    try:
        text = read_file(path, limit=KUBECONFIG_LIMIT).decode("utf-8")
    except FileError as err:
        raise KubeconfigError(str(err)) from None
    except UnicodeDecodeError as err:
        raise KubeconfigError(f"{path}: byte {err.start}: not valid UTF-8") from None
    try:
        document = yaml.load(text, Loader=_Loader)  # noqa: S506 - a safe loader
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        raise KubeconfigError(f"{path}: not valid YAML{at}") from None
    if not isinstance(document, dict):
        raise KubeconfigError(f"{path}: not a kubeconfig (expected a mapping)")
    return document


def _current_context(document: Mapping[str, Any], path: str) -> str:
    current = document.get("current-context")
    if current is None or current == "":
        return ""
    if not isinstance(current, str):
        raise KubeconfigError(f"{path}: current-context is not a string")
    return current


def _named(document: Mapping[str, Any], section: str, path: str) -> list[tuple[str, Any]]:
    items = document.get(section)
    if items is None:
        return []
    if not isinstance(items, list):
        raise KubeconfigError(f"{path}: {section} is not a list")
    named = []
    for index, item in enumerate(items):
        name = item.get("name") if isinstance(item, dict) else None
        if not isinstance(name, str):
            raise KubeconfigError(f"{path}: {section}[{index}] has no name")
        named.append((name, item))
    return named


def _find(
    entries: Mapping[str, Mapping[str, _Entry]], section: str, name: str, where: str
) -> _Entry:
    found = entries[section].get(name)
    if found is None or not isinstance(found.value.get(section[:-1]), dict):
        singular = section[:-1]
        raise KubeconfigError(f"{where}: no {singular} {name!r} with a {singular} mapping")
    return found


def _inline_cluster(entry: _Entry, name: str) -> dict[str, Any]:
    cluster = dict(entry.value["cluster"])
    if str(cluster.get("server", "")).startswith("https"):
        _inline(cluster, "certificate-authority", entry, f"cluster {name!r}", encode=True)
    return {**entry.value, "cluster": cluster}


def _inline_user(entry: _Entry, name: str, *, https: bool) -> dict[str, Any]:
    user = entry.value.get("user")
    if not isinstance(user, dict):
        return {**entry.value, "user": {}}
    user = dict(user)
    where = f"user {name!r}"
    _inline(user, "tokenFile", entry, where, data_key="token")
    if https:
        _inline(user, "client-certificate", entry, where, encode=True)
        _inline(user, "client-key", entry, where, encode=True)
    provider = user.get("auth-provider")
    if isinstance(provider, dict) and isinstance(provider.get("config"), dict):
        settings = dict(provider["config"])
        _inline(settings, "idp-certificate-authority", entry, f"{where} auth-provider", encode=True)
        user["auth-provider"] = {**provider, "config": settings}
    return {**entry.value, "user": user}


def _inline(
    fields: dict[str, Any],
    key: str,
    entry: _Entry,
    where: str,
    *,
    data_key: str | None = None,
    encode: bool = False,
) -> None:
    """Replace ``fields[key]`` (a path) with the file's contents under ``data_key``.

    Nothing to do when the data is there already: the client prefers it.
    ``encode``: base64, as the ``...-data`` fields hold it; else the text
    itself with surrounding blanks dropped (a token file's newline).
    """
    data_key = data_key or f"{key}-data"
    path = fields.pop(key, None)
    if path is None or fields.get(data_key):
        return
    if not isinstance(path, str) or not path:
        raise KubeconfigError(f"{entry.source}: {where}: {key} is not a path")
    full = os.path.join(os.path.dirname(os.path.abspath(entry.source)), path)
    try:
        data = read_file(full, limit=CREDENTIAL_LIMIT)
    except FileError as err:
        raise KubeconfigError(f"{entry.source}: {where}: {key}: {err}") from None
    if encode:
        fields[data_key] = base64.standard_b64encode(data).decode("ascii")
        return
    try:
        fields[data_key] = data.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise KubeconfigError(f"{entry.source}: {where}: {key}: {full}: not UTF-8 text") from None
