"""Kept for tests/test_check.py only, which imports ``CLI`` from here; the runner is harness.server.

Delete this package when that file moves into a tier and imports harness.server.
"""

from harness.server import CLI, running_server

__all__ = ["CLI", "running_server"]
