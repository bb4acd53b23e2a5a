"""The cases of the engine's table tests, as pods for both modes (tests/e2e/test_policy_tables.py).

The decision and settings tables live with their unit tests; rather than copy
them, their test functions are run here (every parametrized case) with the
engine entry points they call wrapped to record the arguments: each recorded
call becomes a ``Case`` (a namespace's labels and annotations, and a pod)
that the policy-mode tests give to both modes on the real API server. A row
added to a table is a case here too.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import itertools
import json
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from tests.e2e.policy_modes import Case, Object, with_images
from webhook.contract import constants
from webhook.engine.config import InjectorConfig

Recorder = Callable[[tuple[Any, ...], dict[str, Any]], list[Case]]
_EXCLUDED = frozenset(InjectorConfig().excluded_namespaces)
_ENABLED = {constants.NAMESPACE_INJECTION_LABEL: constants.ENABLED}


def _argument_sets(function: Callable[..., Any]) -> Iterator[dict[str, Any]]:
    """Every combination of the function's ``parametrize`` marks, as keyword arguments."""
    tables = []
    for mark in getattr(function, "pytestmark", []):
        if mark.name != "parametrize":
            continue
        names, values = mark.args[0], mark.args[1]
        names = [n.strip() for n in names.split(",")] if isinstance(names, str) else list(names)
        rows = []
        for row in values:
            value = getattr(row, "values", row)  # pytest.param
            rows.append(dict(zip(names, value if len(names) > 1 else (value,), strict=True)))
        tables.append(rows)
    for combination in itertools.product(*tables):
        merged: dict[str, Any] = {}
        for row in combination:
            merged.update(row)
        yield merged


def recorded_cases(module_name: str, recorders: Mapping[str, Recorder]) -> list[Case]:
    """Run each test function of the module, recording the calls ``recorders`` name.

    Functions that need fixtures beyond their parameters are left out; a
    failing test does not matter here (its unit test reports it).
    """
    module = importlib.import_module(module_name)
    cases: list[Case] = []
    originals = {name: getattr(module, name) for name in recorders}

    def wrapped(name: str) -> Callable[..., Any]:
        real, record = originals[name], recorders[name]

        def call(*args: Any, **kwargs: Any) -> Any:
            cases.extend(record(args, kwargs))
            return real(*args, **kwargs)

        return call

    for name in recorders:
        setattr(module, name, wrapped(name))
    try:
        for attribute, function in list(vars(module).items()):
            if not attribute.startswith("test_") or not callable(function):
                continue
            wanted = set(inspect.signature(function).parameters)
            for arguments in _argument_sets(function):
                if wanted - set(arguments):
                    break  # needs a fixture
                with contextlib.suppress(Exception):
                    function(**arguments)
    finally:
        for name, real in originals.items():
            setattr(module, name, real)
    unique: dict[str, Case] = {}
    for case in cases:
        key = json.dumps(
            [case.labels, case.annotations, case.pod, case.namespace, repr(case.config)],
            sort_keys=True,
        )
        unique.setdefault(key, case)
    return list(unique.values())


def _pod(meta: Mapping[str, Any] | None, spec: Mapping[str, Any]) -> Object:
    meta = dict(meta or {})
    meta.pop("namespace", None)
    if not meta.get("name") and not meta.get("generateName"):
        meta["name"] = "p"
    return with_images({"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": dict(spec)})


def _namespace_case(what: str, namespace: Any, pod: Object, config: Any) -> Case:
    name = namespace.name
    return Case(
        what,
        dict(namespace.labels),
        dict(namespace.annotations),
        pod,
        namespace=name if name in _EXCLUDED else None,
        config=config if isinstance(config, InjectorConfig) else None,
    )


def from_decide(args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[Case]:
    """``decide(meta, spec, namespace=..., config=...)`` as a pod in that namespace."""
    meta, spec = args[0], args[1]
    if not isinstance(spec, Mapping) or not isinstance(meta, Mapping):
        return []
    return [_namespace_case("decide", kwargs["namespace"], _pod(meta, spec), kwargs.get("config"))]


def from_inject(args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[Case]:
    """``inject(pod, namespace=..., config=...)`` for pods (other kinds are not for this)."""
    obj = args[0]
    if not isinstance(obj, Mapping) or obj.get("kind") != "Pod":
        return []
    meta = obj.get("metadata") if isinstance(obj.get("metadata"), Mapping) else {}
    spec = obj.get("spec") if isinstance(obj.get("spec"), Mapping) else {}
    return [_namespace_case("inject", kwargs["namespace"], _pod(meta, spec), kwargs.get("config"))]


def from_resolve(args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[Case]:
    """``resolve_settings(config, namespace_labels=..., ...)`` as a pod in an opted-in namespace."""
    pod = _pod({"annotations": dict(kwargs["pod_annotations"])}, {"containers": [{"name": "app"}]})
    labels = {**_ENABLED, **kwargs["namespace_labels"]}
    config = args[0] if args and isinstance(args[0], InjectorConfig) else None
    annotations = dict(kwargs["namespace_annotations"])
    return [Case("resolve_settings", labels, annotations, pod, config=config)]


def from_value(key: str) -> Recorder:
    """A value parser's argument as the pod annotation ``key`` (in an opted-in namespace)."""

    def record(args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[Case]:
        del kwargs
        if not isinstance(args[0], str) or args[0].strip() == "":
            return []
        annotations = {constants.PREFIX + key: args[0]}
        pod = _pod({"annotations": annotations}, {"containers": [{"name": "app"}]})
        return [Case(f"{key}={args[0][:40]!r}", _ENABLED, {}, pod)]

    return record
