"""The image cache key: what goes into a build context, and that any change to it rebuilds.

A stale cached image would make the node tests run yesterday's code, so the
hash must cover exactly what buildah sends (after ``.dockerignore``), and
change with every byte of it. These run without root, buildah or a cache.
"""

from __future__ import annotations

from pathlib import Path

from harness.kube.images import REPO, ImageSpec, context_files, input_hash, product_tags


def test_webhook_context_is_what_dockerignore_allows() -> None:
    files = {f.as_posix() for f in context_files(REPO)}
    assert {
        "pyproject.toml",
        "README.md",
        "constraints.txt",
        "webhook/__init__.py",
        "webhook/cli/commands.py",
    } <= files
    assert "webhook/engine/inject.py" in files
    # Never the virtualenv, private keys, tests or git.
    assert not {f for f in files if f.split("/")[0] in {".venv", "certs", "tests", ".git"}}
    assert not {f for f in files if "__pycache__" in f or f.endswith(".pyc")}


def _context(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_dockerignore_patterns(tmp_path: Path) -> None:
    context = _context(
        tmp_path,
        {
            ".dockerignore": "*\n!app/\n**/*.log\n!keep.txt\n/app/secret\n",
            "Dockerfile": "FROM scratch\n",
            "keep.txt": "",
            "drop.txt": "",
            "app/main.py": "",
            "app/deep/x.log": "",
            "app/secret/key": "",
            "other/main.py": "",
        },
    )
    assert [f.as_posix() for f in context_files(context)] == ["app/main.py", "keep.txt"]


def test_input_hash_follows_every_input(tmp_path: Path) -> None:
    context = _context(
        tmp_path / "ctx", {".dockerignore": "*\n!src/\n", "src/a.py": "1", "notes.txt": "x"}
    )
    dockerfile = _context(tmp_path / "df", {"Dockerfile": "FROM base\n"}) / "Dockerfile"
    spec = ImageSpec("app", "example/app:1", dockerfile, context=context, bases=("base",))
    first = input_hash(spec, ["base-hash"])
    assert input_hash(spec, ["base-hash"]) == first
    # Outside the context: no rebuild.
    (context / "notes.txt").write_text("y")
    assert input_hash(spec, ["base-hash"]) == first
    changes = []
    (context / "src" / "a.py").write_text("2")
    changes.append(input_hash(spec, ["base-hash"]))
    (context / "src" / "b.py").write_text("")
    changes.append(input_hash(spec, ["base-hash"]))
    dockerfile.write_text("FROM base\nRUN true\n")
    changes.append(input_hash(spec, ["base-hash"]))
    changes.append(input_hash(spec, ["other-base-hash"]))
    (context / ".dockerignore").write_text("*\n!src/\n!notes.txt\n")
    changes.append(input_hash(spec, ["other-base-hash"]))
    assert len({first, *changes}) == 1 + len(changes)


def test_product_tags_come_from_the_manifests() -> None:
    tags = product_tags()
    assert tags["webhook"].startswith("ghcr.io/sidecar-injector/webhook:")
    assert tags["mesh-init"].startswith("ghcr.io/sidecar-injector/mesh-init:")
    assert tags["envoy"].startswith("docker.io/envoyproxy/envoy:v")
