"""The test tiers, by folder, and the guard that keeps the unit tier in-process.

``tests/unit/`` runs in the pytest process alone: no child process, no
connection beyond the loopback (in-process servers such as the fake API
server, ASGI test clients). ``tests/process/`` starts real processes
(``serve``, the CLI, envoy, openssl, wrk). ``tests/e2e/`` runs the control
plane, network namespaces and the real node. Each test gets its folder's
marker (``unit``, ``process``, ``e2e``), so ``-m unit`` and the folder
select the same tests.

The guard is an audit hook (:pep:`578`): while a unit test runs (set-up,
call and teardown), starting a process (``subprocess``, ``os.exec*``,
``os.posix_spawn``, ``os.fork``, ``os.system``) or connecting or resolving
beyond the loopback raises :class:`UnitTierViolation` where it happens and
fails the test at its end even if the code under test swallowed the error.
A test that needs a process belongs in ``tests/process/``.

Loaded as a plugin by ``tests/conftest.py``; relative to ``<rootdir>/tests``
so that a pytester session laid out the same way gets the same tiers.
"""

from __future__ import annotations

import socket
import sys
from collections.abc import Generator
from pathlib import Path
from typing import Any

import pytest

TIERS = ("unit", "process", "e2e")
_PROCESS_EVENTS = frozenset(
    {
        "subprocess.Popen",
        "os.system",
        "os.exec",
        "os.posix_spawn",
        "os.spawn",
        "os.fork",
        "os.forkpty",
    }
)
_LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost", "ip6-localhost", ""})


class UnitTierViolation(RuntimeError):
    """A unit test started a process or reached beyond the loopback."""


class Guard:
    """The audit hook's state: on while a unit test runs, and what it caught."""

    def __init__(self) -> None:
        self.active: str | None = None  # the running unit test's node id
        self.violations: list[str] = []

    def audit(self, event: str, args: tuple[Any, ...]) -> None:
        """The audit hook: raise (and remember) when the running unit test oversteps."""
        if self.active is None:
            return
        found = _violation(event, args)
        if found is not None:
            message = (
                f"{self.active}: {found}; a unit test runs in-process only "
                "(move it to tests/process/ if it needs a real process)"
            )
            self.violations.append(message)
            raise UnitTierViolation(message)

    def start(self, nodeid: str) -> None:
        """Guard ``nodeid`` from now on."""
        self.active = nodeid
        self.violations.clear()

    def stop(self) -> list[str]:
        """Stop guarding; what was caught meanwhile."""
        self.active = None
        caught, self.violations = self.violations, []
        return caught


def _violation(event: str, args: tuple[Any, ...]) -> str | None:
    if event in _PROCESS_EVENTS:
        what = args[1] if event == "subprocess.Popen" and len(args) > 1 else args[:1]
        shown = repr(list(what)[:3] if isinstance(what, list | tuple) else what)
        return f"{event} {shown[:200]}"
    if event == "socket.connect":
        sock, address = args[0], args[1]
        if getattr(sock, "family", None) in (socket.AF_INET, socket.AF_INET6):
            host = address[0] if isinstance(address, tuple) else address
            if not _is_loopback(str(host)):
                return f"a connection to {address!r}"
    elif event == "socket.getaddrinfo":
        host = args[0]
        if host is not None and not _is_loopback(
            str(host.decode() if isinstance(host, bytes) else host)
        ):
            return f"a name lookup of {host!r}"
    return None


def _is_loopback(host: str) -> bool:
    return host in _LOOPBACK_HOSTS or host.startswith("127.")


GUARD = Guard()
sys.addaudithook(GUARD.audit)


def tier_of(path: Path, root: Path) -> str | None:
    """The tier of a test file: its first folder under ``<root>/tests``, if a tier's."""
    try:
        first = path.relative_to(root / "tests").parts[0]
    except (ValueError, IndexError):
        return None
    return first if first in TIERS else None


def pytest_configure(config: pytest.Config) -> None:
    for tier, what in (
        ("unit", "in-process only (tests/unit/); a started process fails the test"),
        ("process", "starts real processes: serve, the CLI, envoy, openssl, wrk (tests/process/)"),
        ("e2e", "control plane, network namespaces, the real node (tests/e2e/)"),
    ):
        config.addinivalue_line("markers", f"{tier}: {what}")


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark each test with its folder's tier, and order the run.

    First of all hooks, so that ``-m unit`` sees the marks. A serial run goes
    unit, process, e2e: a broken build fails in seconds. Under pytest-xdist
    (``--dist loadfile --no-loadscope-reorder``; a unit of work is a file, or
    a folder under ``tests/e2e/``: ``unit_of_work``) the longest work goes
    first: the node, then the units that use the control plane, then the
    rest of e2e, so no worker is left with them at the end, and the worker
    busy with the node leaves the control plane's units to the others.
    """
    parallel = hasattr(config, "workerinput")
    ranks = {}
    for item in items:
        tier = tier_of(item.path, config.rootpath)
        if tier is not None:
            item.add_marker(getattr(pytest.mark, tier))
        ranks[item.nodeid] = _rank(item, tier, parallel=parallel)
    items.sort(key=lambda item: ranks[item.nodeid])


def _rank(item: pytest.Item, tier: str | None, *, parallel: bool) -> int:
    if not parallel:
        return TIERS.index(tier) if tier in TIERS else len(TIERS)
    if item.get_closest_marker("node") is not None:
        return 0
    if item.get_closest_marker("cluster") is not None:
        return 1
    return {"e2e": 2, "process": 3, "unit": 5}.get(tier or "", 4)


# Each folder under tests/e2e/ is one unit of work under pytest-xdist, not a
# file each: its files share package fixtures (an install, three revisions'
# processes, the real node) that would otherwise start once per worker that
# takes one of them, and a second node would only wait on the host lock.
E2E_ROOT = "tests/e2e/"


def unit_of_work(nodeid: str) -> str:
    """The unit of work ``nodeid`` belongs to: its folder under ``tests/e2e/``, else its file."""
    path = nodeid.split("::", 1)[0]
    if path.startswith(E2E_ROOT) and "/" in path[len(E2E_ROOT) :]:
        return E2E_ROOT + path[len(E2E_ROOT) :].split("/", 1)[0] + "/"
    return path


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """``--dist loadfile``, with each folder under ``tests/e2e/`` one unit of work."""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class FileOrFolderScheduling(LoadFileScheduling):  # type: ignore[misc]  # untyped
        def _split_scope(self, nodeid: str) -> str:
            return unit_of_work(nodeid)

    return FileOrFolderScheduling(config, log)


def _guarded(item: pytest.Item) -> Generator[None, object, object]:
    if item.get_closest_marker("unit") is None:
        return (yield)
    GUARD.start(item.nodeid)
    try:
        result = yield
    finally:
        caught = GUARD.stop()
    if caught:
        pytest.fail("\n".join(caught), pytrace=False)
    return result


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Generator[None, object, object]:
    return (yield from _guarded(item))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, object, object]:
    return (yield from _guarded(item))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(
    item: pytest.Item, nextitem: pytest.Item | None
) -> Generator[None, object, object]:
    if nextitem is None:
        # The session's own fixtures (another tier's, e.g. the control plane)
        # end in the last test's teardown; they are not the unit test's doing.
        return (yield)
    return (yield from _guarded(item))
