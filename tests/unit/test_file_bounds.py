"""Every file a command reads is a regular file of bounded size, or a one-line error.

``webhook.manifests.files.read_file`` and ``read_stream`` alone: a FIFO used
to hang a command, ``/dev/zero`` to grow it until a MemoryError traceback;
now each is refused by what the open file is, before a byte is read. Each
place a path enters the real command line is in
``tests/process/test_file_bounds.py``.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.builders import dev_zero, directory, fifo, sparse_file
from webhook.manifests import files
from webhook.manifests.files import FileError, read_file, read_stream

KINDS: dict[str, tuple[Callable[[Path], Path], str]] = {
    "fifo": (fifo, "cannot read: a FIFO, not a regular file"),
    "zero": (dev_zero, "cannot read: a character device, not a regular file"),
    "directory": (directory, "cannot read: a directory, not a regular file"),
}


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_anything_but_a_regular_file_is_refused_by_what_the_open_file_is(
    tmp_path: Path, kind: str
) -> None:
    make, reason = KINDS[kind]
    path = make(tmp_path / "input")
    with pytest.raises(FileError) as caught:
        read_file(path, limit=files.MiB)
    assert str(caught.value) == f"{path}: {reason}"
    assert caught.value.path == str(path)


def test_a_file_over_the_limit_is_refused_by_its_size_and_one_at_the_limit_is_read(
    tmp_path: Path,
) -> None:
    at = tmp_path / "at"
    at.write_bytes(b"x" * 1000)
    assert read_file(at, limit=1000) == b"x" * 1000
    with pytest.raises(FileError, match=r": cannot read: over the 999 bytes limit$"):
        read_file(at, limit=999)
    with pytest.raises(FileError, match=r"cannot read: over the 32 MiB limit$"):
        read_file(sparse_file(tmp_path / "sparse", 33 * files.MiB), limit=files.DOCUMENTS_LIMIT)


def test_a_file_that_claims_no_size_is_read_by_counting(tmp_path: Path) -> None:
    # /proc files report size 0 and are regular: the count, not the size, bounds them.
    assert b"VmRSS" in read_file("/proc/self/status", limit=64 * files.KiB)
    with pytest.raises(FileError, match="over the 16 bytes limit"):
        read_file("/proc/self/status", limit=16)


def test_a_missing_file_says_why_in_the_same_shape(tmp_path: Path) -> None:
    with pytest.raises(FileError) as caught:
        read_file(tmp_path / "missing", limit=10)
    assert str(caught.value) == f"{tmp_path / 'missing'}: cannot read: No such file or directory"


def test_a_stream_is_read_to_its_end_within_the_limit() -> None:
    assert read_stream(io.BytesIO(b"abc"), limit=3, origin="<stdin>") == b"abc"
    with pytest.raises(FileError, match=r"^<stdin>: cannot read: over the 2 bytes limit$"):
        read_stream(io.BytesIO(b"abc"), limit=2, origin="<stdin>")


@pytest.mark.parametrize(
    ("limit", "text"),
    [(files.MiB, "1 MiB"), (64 * files.KiB, "64 KiB"), (1000, "1000 bytes"), (1536, "1536 bytes")],
)
def test_limits_read_as_people_write_them(limit: int, text: str) -> None:
    assert files.size_text(limit) == text
