"""A kubeconfig and every file it names are read within bounds before the client sees them.

The Kubernetes client used to read ``tokenFile: /dev/zero`` whole (1.9 GB and
climbing). ``webhook.cluster.kubeconfig`` now reads the kubeconfig and the
files its current context names (regular files, bounded) and gives the
client their contents. Exec plugins, still run by the client, and the real
commands are in ``tests/process/test_kubeconfig_bounds.py``.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from tests.builders import dev_zero, fifo, kubeconfig, sparse_file
from webhook.cluster import kube
from webhook.cluster.kubeconfig import KubeconfigError, load_kubeconfig
from webhook.manifests import files
from webhook.pki import certs

CA = certs.make_ca()


FIELDS = [
    ("user", "tokenFile"),
    ("user", "client-certificate"),
    ("user", "client-key"),
    ("cluster", "certificate-authority"),
]


@pytest.mark.parametrize(("section", "field"), FIELDS)
@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (dev_zero, "a character device, not a regular file"),
        (fifo, "a FIFO, not a regular file"),
    ],
)
def test_a_file_the_context_names_is_refused_naming_the_field_and_the_path(
    tmp_path: Path, section: str, field: str, make: Any, reason: str
) -> None:
    bad = make(tmp_path / "credential")
    path = kubeconfig(tmp_path / "config", **{section: {field: "credential"}})  # type: ignore[arg-type]
    with pytest.raises(KubeconfigError) as caught:
        load_kubeconfig(path)
    where = "user 'u'" if section == "user" else "cluster 'c'"
    assert str(caught.value) == f"{path}: {where}: {field}: {bad}: cannot read: {reason}"


def test_a_credential_file_over_1_mib_is_refused(tmp_path: Path) -> None:
    (tmp_path / "token").write_bytes(b"t" * (files.CREDENTIAL_LIMIT + 1))
    path = kubeconfig(tmp_path / "config", user={"tokenFile": "token"})
    with pytest.raises(KubeconfigError, match=r"tokenFile: .*token: cannot read: over the 1 MiB"):
        load_kubeconfig(path)


@pytest.mark.parametrize(("make", "reason"), [(dev_zero, "a character device"), (fifo, "a FIFO")])
def test_the_kubeconfig_itself_must_be_a_regular_file(
    tmp_path: Path, make: Any, reason: str
) -> None:
    path = make(tmp_path / "config")
    with pytest.raises(
        KubeconfigError, match=f"^{path}: cannot read: {reason}, not a regular file$"
    ):
        load_kubeconfig(path)


def test_a_kubeconfig_over_4_mib_is_refused_by_its_size(tmp_path: Path) -> None:
    path = sparse_file(tmp_path / "config", files.KUBECONFIG_LIMIT + 1)
    with pytest.raises(KubeconfigError, match="cannot read: over the 4 MiB limit"):
        load_kubeconfig(path)


def test_files_are_inlined_relative_to_the_kubeconfig_and_the_token_trimmed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "token").write_text("secret-token\n")
    (tmp_path / "ca.crt").write_bytes(CA.cert_pem())
    path = kubeconfig(
        tmp_path / "config",
        user={"tokenFile": "token"},
        cluster={"certificate-authority": "ca.crt"},
    )
    monkeypatch.chdir("/")  # relative to the kubeconfig's directory, not the working one
    loaded = load_kubeconfig(path)
    (cluster,) = loaded.config["clusters"]
    (user,) = loaded.config["users"]
    assert user["user"] == {"token": "secret-token"}
    assert base64.b64decode(cluster["cluster"]["certificate-authority-data"]) == CA.cert_pem()
    assert "certificate-authority" not in cluster["cluster"]
    configuration = kube.load_configuration(path)
    assert configuration.api_key == {"BearerToken": "Bearer secret-token"}
    assert Path(configuration.ssl_ca_cert).read_bytes() == CA.cert_pem()


def test_only_the_current_contexts_files_are_read(tmp_path: Path) -> None:
    dev_zero(tmp_path / "zero")
    document = json.loads(kubeconfig(tmp_path / "config").read_text())
    document["users"].append({"name": "other", "user": {"tokenFile": "zero"}})
    (tmp_path / "config").write_text(json.dumps(document))
    assert load_kubeconfig(tmp_path / "config").config["users"][0]["name"] == "u"


def test_kubeconfig_files_merge_as_kubectl_merges_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "token").write_text("from-first")
    first = kubeconfig(tmp_path / "first", user={"tokenFile": "token"})
    second = tmp_path / "second"
    second.write_text(
        "current-context: other\ncontexts: [{name: other, context: {cluster: c}}]\n"
        "users: [{name: u, user: {token: from-second}}]\n"
    )
    monkeypatch.setenv("KUBECONFIG", f"{tmp_path / 'missing'}:{first}:{second}")
    loaded = load_kubeconfig()
    assert loaded.sources == (str(first), str(second))
    assert loaded.config["current-context"] == "c"  # the first file to set it wins
    assert loaded.config["users"][0]["user"] == {"token": "from-first"}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("- a list\n", "not a kubeconfig (expected a mapping)"),
        ("a: [\n", "not valid YAML at line 2"),
        ("clusters: []\n", "no current-context"),
        ("current-context: c\ncontexts: 7\n", "contexts is not a list"),
        ("current-context: c\ncontexts: [{context: {}}]\n", "contexts[0] has no name"),
        ("current-context: c\n", "no context 'c' with a context mapping"),
    ],
)
def test_a_broken_kubeconfig_is_one_line_naming_the_file(
    tmp_path: Path, text: str, message: str
) -> None:
    path = tmp_path / "config"
    path.write_text(text)
    with pytest.raises(KubeconfigError) as caught:
        load_kubeconfig(path)
    assert str(caught.value) == f"{path}: {message}"
