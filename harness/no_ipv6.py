"""Run a program as if the kernel had no IPv6: ``socket(AF_INET6, ...)`` fails.

On a node booted with ``ipv6.disable=1`` creating an IPv6 socket fails with
EAFNOSUPPORT. This kernel has IPv6, so tests that need the other case run the
program under a seccomp filter that gives exactly that answer to exactly that
call and lets everything else through. Usage (x86-64 Linux only)::

    python -m harness.no_ipv6 PROGRAM ARGS...

The filter is installed in this process (after ``PR_SET_NO_NEW_PRIVS``, which
an unprivileged process needs for it) and survives the ``exec``.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import socket
import struct
import sys

_PR_SET_NO_NEW_PRIVS = 38
_PR_SET_SECCOMP = 22
_SECCOMP_MODE_FILTER = 2
_AUDIT_ARCH_X86_64 = 0xC000003E
_NR_SOCKET_X86_64 = 41
_RET_ALLOW = 0x7FFF0000
_RET_ERRNO = 0x00050000
# BPF opcodes: load word at absolute offset, jump if equal, return.
_LD_W_ABS, _JEQ_K, _RET_K = 0x20, 0x15, 0x06
# struct seccomp_data: nr at 0, arch at 4, args[0] at 16.
_NR, _ARCH, _ARG0 = 0, 4, 16


def supported() -> bool:
    """Whether this helper can work here."""
    return sys.platform == "linux" and platform.machine() == "x86_64"


def _stmt(code: int, k: int) -> bytes:
    return struct.pack("HBBI", code, 0, 0, k)


def _jump(code: int, k: int, if_true: int, if_false: int) -> bytes:
    return struct.pack("HBBI", code, if_true, if_false, k)


def _program() -> bytes:
    return b"".join(
        [
            _stmt(_LD_W_ABS, _ARCH),
            _jump(_JEQ_K, _AUDIT_ARCH_X86_64, 1, 0),
            _stmt(_RET_K, _RET_ALLOW),
            _stmt(_LD_W_ABS, _NR),
            _jump(_JEQ_K, _NR_SOCKET_X86_64, 0, 3),
            _stmt(_LD_W_ABS, _ARG0),
            _jump(_JEQ_K, socket.AF_INET6, 0, 1),
            _stmt(_RET_K, _RET_ERRNO | errno.EAFNOSUPPORT),
            _stmt(_RET_K, _RET_ALLOW),
        ]
    )


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def install() -> None:
    """From now on, in this process and what it execs, IPv6 sockets cannot be created."""
    if not supported():
        raise OSError("the no-IPv6 filter is written for x86-64 Linux")
    libc = ctypes.CDLL(None, use_errno=True)
    program = _program()
    buffer = ctypes.create_string_buffer(program)
    fprog = _SockFprog(len(program) // 8, ctypes.cast(buffer, ctypes.c_void_p))
    if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS)")
    if libc.prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_SECCOMP)")


if __name__ == "__main__":
    install()
    os.execvp(sys.argv[1], sys.argv[1:])  # noqa: S606 - the program the caller names
