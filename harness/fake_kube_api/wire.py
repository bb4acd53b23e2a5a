"""Shared by every endpoint of the fake API server: Status, version, canned replies, hold cap."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# No request in a test should be held longer than this, whatever the test forgets.
MAX_HOLD_SECONDS = 60.0


@dataclass(frozen=True)
class CannedReply:
    """A raw answer: status, body bytes, extra headers."""

    status: int
    body: bytes
    headers: tuple[tuple[str, str], ...] = (("Content-Type", "application/json"),)


def status(code: int, reason: str, message: str) -> dict[str, Any]:
    """A ``Status`` object as kube-apiserver sends with an error."""
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


def version_info(git_version: str) -> dict[str, str]:
    """What ``GET /version`` answers for ``git_version`` (``v1.33.0``): major, minor, gitVersion."""
    major, minor = git_version.lstrip("v").split(".")[:2]
    return {"major": major, "minor": minor, "gitVersion": git_version}
