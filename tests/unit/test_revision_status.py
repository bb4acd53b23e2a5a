"""The revision in the engine: the config names it, the status annotation records it."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from tests import builders
from webhook.engine import InjectionStatus, StatusError, inject, uninject
from webhook.engine.config import InjectorConfig
from webhook.manifests.config_file import ConfigError, parse_config
from webhook.manifests.patched import patched

CANARY = replace(InjectorConfig(), revision="canary")


def _status(pod: dict[str, object]) -> dict[str, object]:
    annotations = pod["metadata"]["annotations"]  # type: ignore[index]
    value: dict[str, object] = json.loads(annotations["sidecar.mesh.io/status"])
    return value


def test_a_revision_records_itself_in_the_status_annotation() -> None:
    namespace = builders.namespace("demo", {"sidecar.mesh.io/rev": "canary"})
    result = inject(builders.pod(), namespace=namespace, config=CANARY)
    status = _status(patched(result))
    assert status["revision"] == "canary"
    assert list(status)[:2] == ["version", "revision"]
    assert InjectionStatus.parse(json.dumps(status)).revision == "canary"
    # And uninject takes out exactly what it put in.
    undone = uninject(patched(result))
    assert patched(undone) == builders.pod()


def test_the_default_revision_writes_no_revision_and_reads_as_default() -> None:
    result = inject(builders.pod(), namespace=builders.enabled_namespace(), config=InjectorConfig())
    status = _status(patched(result))
    assert "revision" not in status
    assert InjectionStatus.parse(json.dumps(status)).revision == "default"


def test_the_revision_changes_the_status_but_not_the_containers() -> None:
    namespace = builders.enabled_namespace()
    default = patched(inject(builders.pod(), namespace=namespace, config=InjectorConfig()))
    canary = patched(inject(builders.pod(), namespace=namespace, config=CANARY))
    assert default["spec"] == canary["spec"]
    assert _status(default)["digest"] == _status(canary)["digest"]


@pytest.mark.parametrize("value", [5, "", None, ["canary"]])
def test_a_revision_that_is_not_a_name_is_not_a_status(value: object) -> None:
    text = json.dumps({"version": "0.1.0", "initContainers": ["mesh-init"], "revision": value})
    with pytest.raises(StatusError, match="revision"):
        InjectionStatus.parse(text)


def test_the_config_file_names_the_revision() -> None:
    assert parse_config("revision: canary").revision == "canary"
    assert "revision" in parse_config("revision: canary").from_file
    assert parse_config("").revision == "default"


@pytest.mark.parametrize("value", ["Canary", "-x", "a" * 47, "a_b", "1.2"])
def test_the_config_file_refuses_a_revision_that_cannot_name_objects(value: str) -> None:
    with pytest.raises(ConfigError, match=r"revision: .* is not a revision name"):
        parse_config(f"revision: {value!r}")
