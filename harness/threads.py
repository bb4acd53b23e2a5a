"""Waiting for threads without fixed sleeps: poll for a condition, or for a thread to block.

Shared by the namespace cache's tests, which drive fetches from many threads
and must know when each one is waiting before they let an answer through.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

# Far longer than anything here should take, short enough to fail a hang.
PATIENCE = 10.0


def eventually(
    check: Callable[[], bool], *, timeout: float = PATIENCE, what: str = "condition"
) -> None:
    """Poll ``check`` until it holds; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.01)


def waiting_for_a_future(thread: threading.Thread) -> bool:
    """Whether ``thread`` is blocked waiting for a future (a fetch waiting for its GET)."""
    frame = sys._current_frames().get(thread.ident or -1)
    while frame is not None:
        code = frame.f_code
        if code.co_name in ("wait", "result") and code.co_filename.endswith(
            str(Path("concurrent", "futures", "_base.py"))
        ):
            return True
        frame = frame.f_back
    return False
