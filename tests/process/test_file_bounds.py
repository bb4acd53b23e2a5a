"""Every file a command reads is a regular file of bounded size, or a one-line error.

Each place a path enters the real command line: ``inject``/``uninject -f``
(and stdin), ``--config``, ``--namespaces-file``, ``certs --out``, ``serve
--cert-dir``. A FIFO used to hang the command, ``/dev/zero`` to grow it
until a MemoryError traceback; now each is refused by what the open file
is, before a byte is read, and the process stays small
(``tests/process/cli_process.py`` measures it). The reading helper alone is
in ``tests/unit/test_file_bounds.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.builders import dev_zero, directory, fifo, sparse_file
from tests.process.cli_process import PEAK_RSS_LIMIT_KIB, Ran, run_cli
from webhook.manifests import files

POD = b"apiVersion: v1\nkind: Pod\nmetadata: {name: web}\nspec: {containers: [{name: app, image: nginx}]}\n"

KINDS: dict[str, tuple[Callable[[Path], Path], str]] = {
    "fifo": (fifo, "cannot read: a FIFO, not a regular file"),
    "zero": (dev_zero, "cannot read: a character device, not a regular file"),
    "directory": (directory, "cannot read: a directory, not a regular file"),
}


def oversized(path: Path) -> Path:
    """A sparse file of 33 MiB: over every limit, yet nothing written to disk."""
    return sparse_file(path, 33 * files.MiB)


# --- where paths enter the command line ------------------------------------------------


def assert_refused(ran: Ran, message: str) -> None:
    """Exit 1, nothing on stdout, the last stderr line the error, a small process."""
    assert ran.code == 1, ran.err[-2000:]
    assert ran.out == b""
    assert "Traceback" not in ran.err.decode(errors="replace")
    assert ran.err_lines[-1] == f"sidecar-injector: error: {message}"
    assert ran.peak_kib < PEAK_RSS_LIMIT_KIB


@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("command", ["inject", "uninject"])
def test_inject_and_uninject_refuse_a_manifest_that_is_not_a_regular_file(
    tmp_path: Path, kind: str, command: str
) -> None:
    make, reason = KINDS[kind]
    path = make(tmp_path / "manifest.yaml")
    ran = run_cli(command, "-f", str(path), tmp_path=tmp_path)
    assert_refused(ran, f"{path}: {reason}")
    assert len(ran.err_lines) == 1


def test_inject_refuses_a_manifest_over_32_mib_by_its_size(tmp_path: Path) -> None:
    path = oversized(tmp_path / "manifest.yaml")
    ran = run_cli("inject", "-f", str(path), tmp_path=tmp_path)
    assert_refused(ran, f"{path}: cannot read: over the 32 MiB limit")


def test_inject_reads_at_most_32_mib_of_stdin(tmp_path: Path) -> None:
    endless = tmp_path / "stdin"
    endless.write_bytes(b"#" * (files.DOCUMENTS_LIMIT + 1))
    ran = run_cli("inject", "-f", "-", stdin=endless, tmp_path=tmp_path)
    assert_refused(ran, "<stdin>: cannot read: over the 32 MiB limit")


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_inject_refuses_a_config_that_is_not_a_regular_file(tmp_path: Path, kind: str) -> None:
    make, reason = KINDS[kind]
    manifest = tmp_path / "pod.yaml"
    manifest.write_bytes(POD)
    config = make(tmp_path / "config.yaml")
    ran = run_cli("inject", "-f", str(manifest), "--config", str(config), tmp_path=tmp_path)
    assert_refused(ran, f"{config}: {reason.replace('cannot read', 'cannot read config')}")


def test_inject_refuses_a_config_over_1_mib(tmp_path: Path) -> None:
    manifest = tmp_path / "pod.yaml"
    manifest.write_bytes(POD)
    config = tmp_path / "config.yaml"
    config.write_bytes(b"#" * (files.CONFIG_LIMIT + 1))
    ran = run_cli("inject", "-f", str(manifest), "--config", str(config), tmp_path=tmp_path)
    assert_refused(ran, f"{config}: cannot read config: over the 1 MiB limit")


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_inject_refuses_a_namespaces_file_that_is_not_a_regular_file(
    tmp_path: Path, kind: str
) -> None:
    make, reason = KINDS[kind]
    manifest = tmp_path / "pod.yaml"
    manifest.write_bytes(POD)
    namespaces = make(tmp_path / "namespaces.yaml")
    ran = run_cli(
        "inject", "-f", str(manifest), "--namespaces-file", str(namespaces), tmp_path=tmp_path
    )
    assert_refused(ran, f"{namespaces}: {reason}")


@pytest.mark.parametrize("name", ["ca.crt", "ca.key"])
@pytest.mark.parametrize("kind", ["fifo", "zero"])
@pytest.mark.parametrize("renew", [False, True])
def test_certs_refuses_a_ca_file_that_is_not_a_regular_file(
    tmp_path: Path, name: str, kind: str, renew: bool
) -> None:
    out = tmp_path / "certs"
    assert run_cli("certs", "--out", str(out), tmp_path=tmp_path).code == 0
    (out / name).unlink()
    make, reason = KINDS[kind]
    make(out / name)
    ran = run_cli("certs", "--out", str(out), *(["--renew"] if renew else []), tmp_path=tmp_path)
    assert_refused(ran, f"{out / name}: {reason}")


@pytest.mark.parametrize("name", ["tls.crt", "tls.key"])
@pytest.mark.parametrize("kind", ["fifo", "zero"])
def test_certs_renew_replaces_a_serving_file_that_is_not_a_regular_file(
    tmp_path: Path, name: str, kind: str
) -> None:
    # tls.crt is only looked at for the names to keep, tls.key never read:
    # an unreadable one is treated as absent and replaced by a regular file.
    out = tmp_path / "certs"
    assert run_cli("certs", "--out", str(out), tmp_path=tmp_path).code == 0
    (out / name).unlink()
    KINDS[kind][0](out / name)
    ran = run_cli("certs", "--out", str(out), "--renew", tmp_path=tmp_path)
    assert ran.code == 0, ran.err
    assert (out / name).is_file()
    assert not (out / name).is_symlink()
    assert ran.peak_kib < PEAK_RSS_LIMIT_KIB


@pytest.mark.parametrize("name", ["tls.crt", "tls.key"])
@pytest.mark.parametrize("kind", ["fifo", "zero"])
def test_serve_refuses_a_serving_file_that_is_not_a_regular_file(
    tmp_path: Path, name: str, kind: str
) -> None:
    out = tmp_path / "certs"
    assert run_cli("certs", "--out", str(out), tmp_path=tmp_path).code == 0
    (out / name).unlink()
    make, reason = KINDS[kind]
    make(out / name)
    namespaces = tmp_path / "namespaces.yaml"
    namespaces.write_text("")
    ran = run_cli(
        "serve",
        "--cert-dir",
        str(out),
        "--port",
        "1",  # never bound: the certificate is refused first
        "--namespaces-file",
        str(namespaces),
        tmp_path=tmp_path,
    )
    assert ran.code == 1
    assert ran.out == b""
    assert ran.err_lines[-1] == (
        f"sidecar-injector: error: no usable certificate in {out}/ ({out / name}: {reason});"
        f" make one with: sidecar-injector certs --out {out}"
    )
    assert ran.peak_kib < PEAK_RSS_LIMIT_KIB


@pytest.mark.parametrize("option", ["--config", "--namespaces-file"])
def test_serve_refuses_a_config_or_namespaces_file_that_is_a_fifo(
    tmp_path: Path, option: str
) -> None:
    out = tmp_path / "certs"
    assert run_cli("certs", "--out", str(out), tmp_path=tmp_path).code == 0
    path = fifo(tmp_path / "input.yaml")
    ran = run_cli(
        "serve", "--cert-dir", str(out), "--port", "1", option, str(path), tmp_path=tmp_path
    )
    verb = "cannot read config" if option == "--config" else "cannot read"
    assert ran.code == 1
    assert ran.out == b""
    assert ran.err_lines[-1] == (
        f"sidecar-injector: error: {path}: {verb}: a FIFO, not a regular file"
    )
