"""The "before" in BENCHMARKS.md: the webhook at an older commit, served from a tree of its own.

:func:`prepare` exports the commit's files with ``git archive`` (the
repository is not touched: no worktree is registered, no branch moved) and
installs them into a virtualenv of their own, constrained to the library
versions of the running interpreter's environment, so that the old code is
measured on the same FastAPI, uvicorn and orjson as the new one. Prepared
trees are kept and reused, next to the e2e binaries in
``${SIDECAR_INJECTOR_CACHE:-~/.cache/sidecar-injector}/bench-before/`` (outside
the repository, where linters and pytest would find a second copy of it).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from harness.kube.binaries import cache_root

ROOT = Path(__file__).resolve().parent.parent


class BeforeError(RuntimeError):
    """The commit cannot be exported or installed; the message says why."""


@dataclass(frozen=True, slots=True)
class Tree:
    """An installed tree of an older commit."""

    rev: str
    path: Path

    @property
    def cli(self) -> Path:
        """Its ``sidecar-injector`` console script."""
        return self.path / ".venv" / "bin" / "sidecar-injector"

    @property
    def injector_config(self) -> Path:
        """The install's injector config as that commit shipped it."""
        return self.path / "manifests" / "base" / "injector-config.yaml"


def _run(argv: list[str], *, cwd: Path, what: str, timeout: float = 900) -> str:
    try:
        done = subprocess.run(
            argv, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as err:
        raise BeforeError(f"{what}: {err}") from None
    if done.returncode != 0:
        raise BeforeError(f"{what} failed: {(done.stderr or done.stdout).strip()[-1500:]}")
    return done.stdout


def prepare(rev: str, root: Path | None = None) -> Tree:
    """Export and install ``rev`` under ``root`` (default: the cache; reused when done)."""
    root = root if root is not None else cache_root() / "bench-before"
    sha = _run(
        ["git", "rev-parse", "--short", f"{rev}^{{commit}}"], cwd=ROOT, what=f"git rev-parse {rev}"
    )
    tree = Tree(sha.strip(), root.resolve() / sha.strip())
    ready = tree.path / ".venv" / ".bench-ready"
    if ready.exists() and tree.cli.exists():
        return tree
    shutil.rmtree(tree.path, ignore_errors=True)
    tree.path.mkdir(parents=True)
    archive = subprocess.Popen(["git", "archive", tree.rev], cwd=ROOT, stdout=subprocess.PIPE)
    assert archive.stdout is not None
    untar = subprocess.run(["tar", "-x", "-C", str(tree.path)], stdin=archive.stdout, check=False)
    archive.stdout.close()
    if archive.wait() != 0 or untar.returncode != 0:
        raise BeforeError(f"git archive {tree.rev} | tar -x failed")
    _run([sys.executable, "-m", "venv", str(tree.path / ".venv")], cwd=tree.path, what="venv")
    pip = str(tree.path / ".venv" / "bin" / "pip")
    frozen = _run(
        [sys.executable, "-m", "pip", "freeze", "--exclude-editable"], cwd=ROOT, what="pip freeze"
    )
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as constraints:
        constraints.write(frozen)
    try:
        _run(
            [pip, "install", "--quiet", "--constraint", constraints.name, "."],
            cwd=tree.path,
            what=f"pip install of {tree.rev}",
        )
    finally:
        Path(constraints.name).unlink()
    ready.touch()
    return tree
