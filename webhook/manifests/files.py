"""Bounded reads of the files the commands are given: regular files only, at most N bytes.

A path can name anything: a FIFO (a read waits for a writer that never
comes), ``/dev/zero`` or ``/dev/urandom`` (endless), a directory, a file that
grows while it is read. Every file the CLI and ``serve`` read goes through
:func:`read_file`: it opens without blocking, asks the open file (not the
path, which could be swapped between a check and the read) what it is,
refuses anything but a regular file, and reads at most ``limit`` bytes. A
wrong path then costs a one-line error, never a hang or the machine's memory.
Standard input, a pipe by nature, is read through :func:`read_stream` with
the same byte bound.

The limits are documented in docs/operations.md ("Bounds on what the
commands read"); each is far above what a sane input needs.
"""

from __future__ import annotations

import os
import stat
from typing import BinaryIO, Final

KiB: Final = 1024
MiB: Final = 1024 * KiB

# Manifests for inject/uninject (files and stdin) and the namespaces file:
# a whole platform's rendered manifests, or ``kubectl get ns -o yaml`` of
# tens of thousands of namespaces, are a fraction of this.
DOCUMENTS_LIMIT: Final = 32 * MiB
# The injector config: a few hundred bytes in practice.
CONFIG_LIMIT: Final = 1 * MiB
# A PEM certificate, chain or key (``certs``, ``serve``'s cert dir, a
# kubeconfig's certificate-authority): a few KiB; a CA bundle of every
# public root is about 200 KiB.
PEM_LIMIT: Final = 1 * MiB
# A kubeconfig, inline certificates of a hundred clusters included.
KUBECONFIG_LIMIT: Final = 4 * MiB
# A file a kubeconfig names (tokenFile, client-certificate, client-key,
# certificate-authority): a token or a PEM file.
CREDENTIAL_LIMIT: Final = 1 * MiB

_CHUNK: Final = 64 * KiB
_KINDS: Final = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


class FileError(Exception):
    """A file that could not be read within its bounds: ``<path>: cannot read: <reason>``.

    ``path`` and ``reason`` are kept apart for callers that phrase it their way.
    """

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: cannot read: {reason}")
        self.path = path
        self.reason = reason


def size_text(limit: int) -> str:
    """``1 MiB``, ``64 KiB``, ``100 bytes``: a limit as people read it."""
    for unit, name in ((MiB, "MiB"), (KiB, "KiB")):
        if limit >= unit and limit % unit == 0:
            return f"{limit // unit} {name}"
    return f"{limit} bytes"


def read_file(path: str | os.PathLike[str], *, limit: int) -> bytes:
    """The contents of the regular file ``path``, at most ``limit`` bytes; else ``FileError``.

    Opened with ``O_NONBLOCK`` (a FIFO opens at once instead of waiting for a
    writer) and ``O_NOCTTY``, then judged by ``fstat`` on the open descriptor.
    A file over ``limit`` is refused by its size before any byte is read, and
    one that grows past it while being read (or claims size 0, as /proc does)
    by counting.
    """
    name = os.fspath(path)
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as err:
        raise FileError(name, err.strerror or str(err)) from None
    try:
        mode = os.fstat(fd)
        for test, kind in _KINDS:
            if test(mode.st_mode):
                raise FileError(name, f"{kind}, not a regular file")
        if not stat.S_ISREG(mode.st_mode):
            raise FileError(name, "not a regular file")
        if mode.st_size > limit:
            raise FileError(name, _over(limit))
        return _read_fd(fd, name, limit)
    except OSError as err:
        raise FileError(name, err.strerror or str(err)) from None
    finally:
        os.close(fd)


def read_stream(stream: BinaryIO, *, limit: int, origin: str) -> bytes:
    """At most ``limit`` bytes from ``stream`` (standard input) to its end; else ``FileError``."""
    data = bytearray()
    try:
        while chunk := stream.read(min(_CHUNK, limit + 1 - len(data))):
            data += chunk
            if len(data) > limit:
                raise FileError(origin, _over(limit))
    except OSError as err:
        raise FileError(origin, err.strerror or str(err)) from None
    return bytes(data)


def _read_fd(fd: int, name: str, limit: int) -> bytes:
    data = bytearray()
    # One byte past the limit tells "exactly at the limit" from "over it".
    while chunk := os.read(fd, min(_CHUNK, limit + 1 - len(data))):
        data += chunk
        if len(data) > limit:
            raise FileError(name, _over(limit))
    return bytes(data)


def _over(limit: int) -> str:
    return f"over the {size_text(limit)} limit"
