"""``scripts/render_install.py --image-repo`` (``make manifests IMAGE_REPO=...``).

Nobody publishes the project's images, so an install from a registry of one's
own names both of them from one setting: the Deployment's webhook image and
the injector config's ``init.image``, with the ConfigMap's name hashed anew.
Rendered by the same ``kubectl kustomize`` that ``make manifests`` uses.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from harness.server import CLI
from tests.builders import REPO
from webhook import __version__
from webhook.manifests.config_file import parse_config

SCRIPT = REPO / "scripts" / "render_install.py"
MOVED = "registry.example.com:5000/mesh"

Object = dict[str, Any]


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl is not on PATH; render_install runs `kubectl kustomize`")
    out = tmp_path_factory.mktemp("certs")
    done = subprocess.run(
        [CLI, "certs", "--out", str(out)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    return out


def _render(certs: Path, out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, str(SCRIPT), "--manifests", str(REPO / "manifests")]
    command += ["--certs", str(certs), "--out", str(out), *extra]
    return subprocess.run(command, capture_output=True, text=True, check=False)


def _install(certs: Path, out: Path, *extra: str) -> str:
    done = _render(certs, out, *extra)
    assert done.returncode == 0, done.stderr
    return out.read_text(encoding="utf-8")


def _one(objects: list[Object], kind: str) -> Object:
    (found,) = [obj for obj in objects if obj["kind"] == kind]
    return found


def _objects(text: str) -> list[Object]:
    return [obj for obj in yaml.safe_load_all(text) if obj]


def test_the_default_repository_however_spelt_renders_what_the_base_says(
    certs: Path, tmp_path: Path
) -> None:
    default = _install(certs, tmp_path / "default.yaml")
    spelt = _install(certs, tmp_path / "same.yaml", "--image-repo", "ghcr.io/sidecar-injector/")
    assert spelt == default
    deployment = _one(_objects(default), "Deployment")
    image = deployment["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image == f"ghcr.io/sidecar-injector/webhook:{__version__}"


def test_another_repository_names_both_project_images_and_nothing_else(
    certs: Path, tmp_path: Path
) -> None:
    default = _objects(_install(certs, tmp_path / "default.yaml"))
    moved = _objects(_install(certs, tmp_path / "moved.yaml", "--image-repo", MOVED + "/"))

    pod_spec = _one(moved, "Deployment")["spec"]["template"]["spec"]
    assert pod_spec["containers"][0]["image"] == f"{MOVED}/webhook:{__version__}"
    config_map = _one(moved, "ConfigMap")
    config = parse_config(config_map["data"]["config.yaml"], origin="install.yaml")
    assert config.init.image == f"{MOVED}/mesh-init:{__version__}"
    # Envoy is published upstream and stays where the config says.
    assert config.proxy.image == "docker.io/envoyproxy/envoy"

    # Only the image line changes in the config (its comments stay); the
    # ConfigMap's name gets a new content hash, which the Deployment follows.
    before = _one(default, "ConfigMap")
    assert config_map["data"]["config.yaml"] == before["data"]["config.yaml"].replace(
        "ghcr.io/sidecar-injector/", f"{MOVED}/"
    )
    assert config_map["metadata"]["name"] != before["metadata"]["name"]
    assert config_map["metadata"]["labels"] == before["metadata"]["labels"]
    mounted = [v["configMap"]["name"] for v in pod_spec["volumes"] if "configMap" in v]
    assert mounted == [config_map["metadata"]["name"]]

    # Every other object is the default install's (the Secret's key pair aside: same certs).
    others = ("ConfigMap", "Deployment")
    assert [o for o in moved if o["kind"] not in others] == [
        o for o in default if o["kind"] not in others
    ]


@pytest.mark.parametrize("repo", ["a b", "/", "registry.example.com/mesh@sha256"])
def test_a_repository_that_cannot_prefix_an_image_is_refused_and_nothing_written(
    certs: Path, tmp_path: Path, repo: str
) -> None:
    done = _render(certs, tmp_path / "install.yaml", "--image-repo", repo)
    assert done.returncode == 1
    assert "--image-repo" in done.stderr
    assert not (tmp_path / "install.yaml").exists()
