"""The namespaces file: what it accepts, and a one-line message naming file and place when not."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.builders import REPO
from webhook.cluster.namespaces_file import (
    FileNamespaces,
    NamespaceInfo,
    NamespacesFileError,
    NamespaceSource,
    StaticNamespaces,
    load_namespaces_file,
    lookup,
)

KUBECTL_LIST = """\
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Namespace
  metadata:
    name: demo
    labels:
      kubernetes.io/metadata.name: demo
      sidecar-injection: enabled
      sidecar.mesh.io/exclude-inbound-ports: "9090_9091"
    annotations:
      sidecar.mesh.io/exclude-outbound-cidrs: 10.0.0.0/8,192.168.0.0/16
  spec:
    finalizers: [kubernetes]
  status:
    phase: Active
- apiVersion: v1
  kind: Namespace
  metadata:
    name: legacy
metadata:
  resourceVersion: ""
"""


def write(tmp_path: Path, text: str, name: str = "namespaces.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_a_single_namespace(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: demo\n"
        "  labels: {sidecar-injection: enabled}\n",
    )
    assert load_namespaces_file(path) == {
        "demo": NamespaceInfo("demo", labels={"sidecar-injection": "enabled"})
    }


def test_the_output_of_kubectl_get_ns_o_yaml(tmp_path: Path) -> None:
    namespaces = load_namespaces_file(write(tmp_path, KUBECTL_LIST))
    assert sorted(namespaces) == ["demo", "legacy"]
    demo = namespaces["demo"]
    assert demo.labels["sidecar.mesh.io/exclude-inbound-ports"] == "9090_9091"
    assert demo.annotations == {
        "sidecar.mesh.io/exclude-outbound-cidrs": "10.0.0.0/8,192.168.0.0/16"
    }
    assert dict(namespaces["legacy"].labels) == {}
    assert dict(namespaces["legacy"].annotations) == {}


def test_multi_document_yaml_with_lists_and_empty_documents(tmp_path: Path) -> None:
    text = (
        "kind: Namespace\napiVersion: v1\nmetadata: {name: one}\n---\n"
        "---\n"  # empty documents are skipped, as kubectl does
        "kind: NamespaceList\napiVersion: v1\nitems:\n"
        "- {kind: Namespace, apiVersion: v1, metadata: {name: two, labels: null}}\n"
        "---\nkind: Namespace\napiVersion: v1\nmetadata: {name: three, annotations: {a: b}}\n"
    )
    namespaces = load_namespaces_file(write(tmp_path, text))
    assert sorted(namespaces) == ["one", "three", "two"]
    assert dict(namespaces["three"].annotations) == {"a": "b"}


@pytest.mark.parametrize(
    "document",
    [
        {
            "kind": "Namespace",
            "apiVersion": "v1",
            "metadata": {"name": "demo", "labels": {"a": "b"}},
        },
        {
            "kind": "List",
            "apiVersion": "v1",
            "items": [{"kind": "Namespace", "metadata": {"name": "demo", "labels": {"a": "b"}}}],
        },
    ],
    ids=["namespace", "list"],
)
def test_json(tmp_path: Path, document: dict[str, object]) -> None:
    path = write(tmp_path, json.dumps(document), "namespaces.json")
    assert load_namespaces_file(path) == {"demo": NamespaceInfo("demo", labels={"a": "b"})}


def test_an_empty_file_or_list_means_no_namespaces(tmp_path: Path) -> None:
    assert load_namespaces_file(write(tmp_path, "")) == {}
    assert load_namespaces_file(write(tmp_path, "kind: List\napiVersion: v1\nitems: []\n")) == {}


def test_namespace_info_is_an_immutable_copy() -> None:
    labels = {"sidecar-injection": "enabled"}
    info = NamespaceInfo.from_object({"metadata": {"name": "demo", "labels": labels}})
    labels["sidecar-injection"] = "disabled"
    assert info.labels["sidecar-injection"] == "enabled"
    with pytest.raises(TypeError):
        info.labels["x"] = "y"  # type: ignore[index]


def test_namespace_info_tolerates_missing_and_null_metadata_maps() -> None:
    info = NamespaceInfo.from_object(
        {"metadata": {"name": "bare", "labels": None, "annotations": None}}
    )
    assert info == NamespaceInfo("bare")


def test_the_file_source_serves_the_file_and_is_ready_at_once(tmp_path: Path) -> None:
    path = write(tmp_path, KUBECTL_LIST)
    source = FileNamespaces(path)
    source.start()
    assert source.is_ready()
    demo = source.cached("demo")
    assert demo is not None
    assert demo.labels["sidecar-injection"] == "enabled"
    assert source.cached("elsewhere") is None
    assert source.fetch("elsewhere") is None
    assert str(path) in source.describe()
    assert "2 namespaces" in source.describe()
    source.stop()


def test_a_static_source_without_namespaces_knows_none() -> None:
    source = StaticNamespaces()
    assert source.is_ready()
    assert source.cached("demo") is None
    assert source.fetch("demo") is None
    assert "no labels" in source.describe()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            "kind: Namespace\napiVersion: v1\nmetadata: {name: ok}\n---\n"
            "kind: Pod\napiVersion: v1\nmetadata: {name: web}\n",
            "document 2: expected a Namespace, got kind 'Pod'",
            id="another-kind",
        ),
        pytest.param(
            "kind: List\napiVersion: v1\nitems:\n- {kind: Namespace, metadata: {name: a}}\n"
            "- {kind: ConfigMap, metadata: {name: b}}\n",
            "document 1: items[1]: expected a Namespace, got kind 'ConfigMap'",
            id="another-kind-in-a-list",
        ),
        pytest.param(
            "apiVersion: v1\nmetadata: {name: a}\n",
            "document 1: expected a Namespace, got an object without a kind",
            id="no-kind",
        ),
        pytest.param(
            "kind: Namespace\napiVersion: v1\nmetadata: {labels: {a: b}}\n",
            "document 1: metadata.name is missing",
            id="missing-name",
        ),
        pytest.param(
            "kind: Namespace\napiVersion: v1\n",
            "document 1: metadata.name is missing",
            id="no-metadata",
        ),
        pytest.param(
            "kind: Namespace\napiVersion: v1\nmetadata: {name: a, labels: {sidecar-injection: true}}\n",
            "document 1: metadata.labels.sidecar-injection: expected a string, got bool",
            id="unquoted-label-value",
        ),
        pytest.param(
            "kind: Namespace\napiVersion: v1\nmetadata: {name: a, labels: {1: b}}\n",
            "line 3 column 30: a mapping key must be a string, not a number (1): quote it",
            id="unquoted-label-key",
        ),
        pytest.param(
            "kind: Namespace\napiVersion: v1\nmetadata: {name: a, annotations: [x]}\n",
            "document 1: metadata.annotations: expected a map, got list",
            id="annotations-not-a-map",
        ),
        pytest.param(
            "kind: Namespace\nmetadata: {name: a}\n---\nkind: Namespace\nmetadata: {name: a}\n",
            "document 2: namespace 'a' is already defined at document 1",
            id="duplicate",
        ),
        pytest.param(
            "just a string\n", "document 1: expected a Namespace object, got a string", id="scalar"
        ),
        pytest.param(
            "kind: List\nitems: {a: b}\n", "document 1: items must be a list", id="items-not-a-list"
        ),
        pytest.param("kind: Namespace\nmetadata: {name: [\n", "line ", id="bad-yaml"),
        pytest.param('[{"kind": "Namespace",]', "invalid JSON", id="bad-json"),
    ],
)
def test_a_bad_file_is_one_line_naming_the_file_and_the_place(
    tmp_path: Path, text: str, expected: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(NamespacesFileError) as caught:
        load_namespaces_file(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: ")
    assert expected in message
    assert "\n" not in message


def test_a_bad_file_stops_the_file_source_at_construction(tmp_path: Path) -> None:
    path = write(tmp_path, "kind: Pod\n")
    with pytest.raises(NamespacesFileError, match="expected a Namespace"):
        FileNamespaces(path)


@pytest.mark.parametrize("make", ["missing", "directory"])
def test_an_unreadable_file_is_one_line_naming_the_file(tmp_path: Path, make: str) -> None:
    path = tmp_path / "namespaces.yaml"
    if make == "directory":
        path.mkdir()
    with pytest.raises(NamespacesFileError) as caught:
        load_namespaces_file(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: cannot read: ")
    assert "\n" not in message


def test_invalid_utf8_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "namespaces.yaml"
    path.write_bytes(b"kind: Namespace\nmetadata: {name: \xff}\n")
    with pytest.raises(
        NamespacesFileError, match=f"^{re.escape(str(path))}: byte 33: not valid UTF-8$"
    ):
        load_namespaces_file(path)


def test_the_example_namespaces_file_loads() -> None:
    path = REPO / "examples" / "namespaces.yaml"
    namespaces = load_namespaces_file(path)
    assert namespaces["demo"].labels["sidecar-injection"] == "enabled"
    assert namespaces["no-mesh"].labels["sidecar-injection"] == "disabled"
    assert "sidecar-injection" not in namespaces["legacy"].labels
    assert "kube-system" in namespaces


def test_fixed_and_file_sources_do_not_sync_so_they_have_no_freshness(tmp_path: Path) -> None:
    path = write(tmp_path, "kind: Namespace\napiVersion: v1\nmetadata: {name: demo}\n")
    for source in (StaticNamespaces(), FileNamespaces(path)):
        assert isinstance(source, NamespaceSource)
        assert source.freshness() is None


def test_lookup_in_a_file_source_finds_what_the_file_says_and_nothing_else(
    tmp_path: Path,
) -> None:
    source = FileNamespaces(write(tmp_path, KUBECTL_LIST))
    demo = lookup(source, "demo")
    assert demo is not None
    assert demo.labels["sidecar-injection"] == "enabled"
    assert lookup(source, "elsewhere") is None
