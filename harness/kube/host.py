"""What a node changes on this machine, recorded before it starts and put back after it stops.

A kubelet and containerd are machine-wide by nature (see :mod:`harness.kube.node`):
host iptables chains, sysctls, mounts, network links and namespaces, cgroups
and a few fixed paths. :class:`HostState` records the part a node makes, the
``restore_*`` functions put it back, and :meth:`HostState.differences` says
what still differs. Also here: whether this machine can run a node at all.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from harness.kube.binaries import cache_root
from harness.kube.images import unmount_under

BRIDGE: Final = "sinode0"
CNI_BIN_DIR: Final = Path("/usr/lib/cni")
CNI_PLUGINS: Final = ("bridge", "host-local", "loopback")

# Host paths a kubelet/containerd writes whatever it is told.
CONTAINER_LOGS: Final = Path("/var/log/containers")
CNI_CACHE: Final = Path("/var/lib/cni")
NETNS_DIR: Final = Path("/run/netns")
DEFAULT_KUBELET_ROOT: Final = Path("/var/lib/kubelet")
# Removed at teardown when the node created them. /run/netns is not: other
# processes (ip netns) share it; only the node's cni-* namespaces are its own.
FIXED_PATHS: Final = (CONTAINER_LOGS, CNI_CACHE, DEFAULT_KUBELET_ROOT)

# What the kubelet (protectKernelDefaults: false), the bridge plugin and
# kube-proxy may change; recorded before and written back after.
SYSCTLS: Final = (
    "net/ipv4/ip_forward",
    "net/ipv4/conf/all/forwarding",
    "net/ipv4/conf/all/route_localnet",
    "net/ipv6/conf/all/forwarding",
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "kernel/panic",
    "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
    "net/netfilter/nf_conntrack_max",
    "net/bridge/bridge-nf-call-iptables",
)

PACKAGES: Final = {
    "containerd": "containerd",
    "ctr": "containerd",
    "runc": "runc",
    "iptables": "iptables",
    "ip6tables": "iptables",
    "ip": "iproute2",
    "mount": "mount",
    "buildah": "buildah",
    "debootstrap": "debootstrap",
}


class NodeError(RuntimeError):
    """The node could not be set up, started or torn down."""


# --- can this machine run a node? ---------------------------------------------------


def unsupported_reason() -> str | None:
    """Why this machine cannot run a node at all (no root, kernel features), else None.

    Only these are reasons to skip. Missing packages are not: they are one
    ``apt-get install`` away (:func:`missing_packages`), and a test that
    skipped for them would hide a broken CI set-up.
    """
    if os.geteuid() != 0:
        return "a kubelet and containerd need root"
    filesystems = Path("/proc/filesystems").read_text(encoding="utf-8")
    if "overlay" not in filesystems:
        return "the kernel has no overlay filesystem (containerd's snapshotter needs it)"
    controllers = _cgroup_controllers()
    missing = {"cpu", "memory", "pids"} - controllers
    if missing:
        return f"cgroup controllers {sorted(missing)} are not available"
    if not Path("/proc/sys/net/ipv4/ip_forward").exists():
        return "the kernel has no IPv4 forwarding sysctl"
    probe = subprocess.run(["iptables", "-t", "nat", "-S"], capture_output=True, check=False)
    if probe.returncode != 0:
        return f"iptables' nat table is not usable: {probe.stderr.decode().strip()}"
    return None


def _cgroup_controllers() -> set[str]:
    unified = Path("/sys/fs/cgroup/cgroup.controllers")
    if unified.exists():
        return set(unified.read_text(encoding="utf-8").split())
    return {p.name for p in Path("/sys/fs/cgroup").iterdir() if p.is_dir()}


def missing_packages() -> list[str]:
    """Debian packages whose commands or CNI plugins are missing."""
    wanted = {package for command, package in PACKAGES.items() if shutil.which(command) is None}
    if not all((CNI_BIN_DIR / plugin).exists() for plugin in CNI_PLUGINS):
        wanted.add("containernetworking-plugins")
    return sorted(wanted)


# --- host state -----------------------------------------------------------------------


def run(*argv: str, check: bool = True, input: str | None = None) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, input=input, check=False)
    if check and done.returncode != 0:
        raise NodeError(f"{' '.join(argv)} failed: {done.stderr.strip()}")
    return done.stdout


def _read_sysctl(name: str) -> str | None:
    try:
        return Path("/proc/sys", name).read_text(encoding="utf-8").strip()
    except OSError:
        return None


BUILTIN_CHAINS: Final = frozenset({"PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"})


def _iptables_save(family: str) -> dict[str, tuple[list[str], list[str]]]:
    """``{table: (chains, rules)}`` from ``<family>-save`` (rules without counters).

    A built-in chain with the ACCEPT policy is left out of ``chains``: with
    the nf_tables backend a table springs into existence with its built-in
    chains when first used, and such an empty, accepting table filters
    nothing. It cannot be deleted without the ``nft`` tool either, so it is
    not counted as state. A built-in chain with another policy is kept (as
    ``NAME:POLICY``), so a changed policy shows up.
    """
    tables: dict[str, tuple[list[str], list[str]]] = {}
    if shutil.which(f"{family}-save") is None:
        return tables
    table = ""
    for line in run(f"{family}-save", check=False).splitlines():
        if line.startswith("*"):
            table = line[1:]
            tables[table] = ([], [])
        elif line.startswith(":") and table:
            name, policy = line[1:].split()[:2]
            if name not in BUILTIN_CHAINS:
                if name.startswith(OUR_CHAIN_PREFIXES):
                    tables[table][0].append(name)
            elif policy != "ACCEPT":
                tables[table][0].append(f"{name}:{policy}")
        elif line.startswith("-A ") and table and _is_ours(line):
            tables[table][1].append(line)
    return tables


# The machine is shared: other test processes make network namespaces, veths,
# mounts and netfilter rules of their own meanwhile. Only what a node makes
# is recorded, restored and checked: kube-proxy's and the kubelet's KUBE-*
# chains, CNI's CNI-* chains and cni-* namespaces, the bridge and its veths,
# and mounts under the node's own directories.
OUR_CHAIN_PREFIXES: Final = ("KUBE-", "CNI-")


def _is_ours(rule: str) -> bool:
    """Whether an ``-A CHAIN ...`` line belongs to kube-proxy, the kubelet or CNI."""
    words = rule.split()
    if words[1].startswith(OUR_CHAIN_PREFIXES):
        return True
    jumps = {words[i + 1] for i, word in enumerate(words[:-1]) if word in {"-j", "-g"}}
    return any(j.startswith(OUR_CHAIN_PREFIXES) for j in jumps) or "kubernetes" in rule


def _is_our_mount(point: str) -> bool:
    return (
        "/sidecar-injector-node-" in point
        or point.startswith((str(cache_root() / "containerd"), f"{NETNS_DIR}/cni-"))
        or point.startswith(tuple(str(p) for p in FIXED_PATHS))
    )


def _mount_points() -> set[str]:
    with open("/proc/self/mountinfo", encoding="utf-8") as info:
        points = {line.split()[4].replace("\\040", " ") for line in info}
    return {p for p in points if _is_our_mount(p)}


def links() -> set[str]:
    return {n for n in os.listdir("/sys/class/net") if n == BRIDGE or n.startswith("veth")}


def _cni_netns() -> set[str]:
    if not NETNS_DIR.is_dir():
        return set()
    return {name for name in os.listdir(NETNS_DIR) if name.startswith("cni-")}


def _kubepods_cgroups() -> set[str]:
    found = set()
    for hierarchy in Path("/sys/fs/cgroup").iterdir():
        if (hierarchy / "kubepods").is_dir() or (hierarchy / "kubepods.slice").is_dir():
            found.add(hierarchy.name)
    if (Path("/sys/fs/cgroup") / "kubepods").is_dir():
        found.add("(unified)")
    return found


@dataclass(frozen=True)
class HostState:
    """What a node changes on the host, recorded so that teardown can restore and check it."""

    iptables: Mapping[str, Mapping[str, tuple[list[str], list[str]]]]
    sysctls: Mapping[str, str | None]
    mounts: frozenset[str]
    links: frozenset[str]
    netns: frozenset[str]
    paths: Mapping[str, bool]
    cgroups: frozenset[str]

    @classmethod
    def capture(cls) -> HostState:
        """The state now."""
        return cls(
            iptables={family: _iptables_save(family) for family in ("iptables", "ip6tables")},
            sysctls={name: _read_sysctl(name) for name in SYSCTLS},
            mounts=frozenset(_mount_points()),
            links=frozenset(links()),
            netns=frozenset(_cni_netns()),
            paths={str(path): path.exists() for path in FIXED_PATHS},
            cgroups=frozenset(_kubepods_cgroups()),
        )

    def differences(self, now: HostState) -> list[str]:
        """How ``now`` differs from this recorded state, one line per difference."""
        out: list[str] = []
        for family, tables in now.iptables.items():
            before = self.iptables.get(family, {})
            for table, (chains, rules) in tables.items():
                old_chains, old_rules = before.get(table, ([], []))
                for chain in sorted(set(chains) - set(old_chains)):
                    out.append(f"{family} -t {table}: chain {chain} added")
                for rule in _multiset_minus(rules, old_rules):
                    out.append(f"{family} -t {table}: rule added: {rule}")
        for name, value in self.sysctls.items():
            if now.sysctls.get(name) != value:
                out.append(f"sysctl {name}: {value} -> {now.sysctls.get(name)}")
        out += [f"mount added: {m}" for m in sorted(now.mounts - self.mounts)]
        out += [f"network link added: {link}" for link in sorted(now.links - self.links)]
        out += [f"network namespace added: {n}" for n in sorted(now.netns - self.netns)]
        for path, existed in self.paths.items():
            if now.paths.get(path) != existed:
                out.append(f"{path}: {'created' if not existed else 'removed'}")
        out += [f"cgroup kubepods added in {c}" for c in sorted(now.cgroups - self.cgroups)]
        return out


def _multiset_minus(after: Sequence[str], before: Sequence[str]) -> list[str]:
    """Lines of ``after`` not accounted for by ``before`` (duplicates counted)."""
    remaining: dict[str, int] = {}
    for line in before:
        remaining[line] = remaining.get(line, 0) + 1
    extra = []
    for line in after:
        if remaining.get(line, 0) > 0:
            remaining[line] -= 1
        else:
            extra.append(line)
    return extra


def restore_iptables(before: HostState) -> None:
    """Delete every rule and chain that appeared since ``before``, in both families.

    Only the difference, and only the node's (:func:`_is_ours`), is touched:
    rules that were there before stay, and so do rules other processes add
    meanwhile.
    Done per table in one ``iptables-restore --noflush`` transaction: first
    the added rules of old chains (which may jump to new chains), then new
    chains are flushed and deleted.
    """
    for family in ("iptables", "ip6tables"):
        if shutil.which(f"{family}-restore") is None:
            continue
        now = _iptables_save(family)
        old = before.iptables.get(family, {})
        for table, (chains, rules) in now.items():
            old_chains, old_rules = old.get(table, ([], []))
            # Policies of built-in chains are not ours to change back (and
            # nothing here sets them); the state check reports them.
            new_chains = [c for c in chains if c not in set(old_chains) and ":" not in c]
            added = [r for r in _multiset_minus(rules, old_rules) if r.split()[1] not in new_chains]
            if not new_chains and not added:
                continue
            script = [f"*{table}"]
            script += ["-D " + rule[3:] for rule in reversed(added)]
            script += [f"-F {chain}" for chain in new_chains]
            script += [f"-X {chain}" for chain in new_chains]
            script.append("COMMIT")
            run(f"{family}-restore", "--noflush", input="\n".join(script) + "\n", check=False)


def restore_sysctls(before: HostState) -> None:
    """Write back every recorded sysctl that changed (ip_forward first: it resets the rest)."""
    for name, value in before.sysctls.items():
        if value is None or _read_sysctl(name) == value:
            continue
        with contextlib.suppress(OSError):
            Path("/proc/sys", name).write_text(value + "\n", encoding="utf-8")


def kill_leftover_processes(workdir: Path) -> None:
    """SIGKILL containers and shims a failed teardown left (found by cgroup and path)."""
    victims: set[int] = set()
    for procs in Path("/sys/fs/cgroup").glob("*/kubepods/**/cgroup.procs"):
        with contextlib.suppress(OSError, ValueError):
            victims.update(int(p) for p in procs.read_text().split())
    marker = str(workdir).encode()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if marker in (entry / "cmdline").read_bytes():
                    victims.add(int(entry.name))
    victims.discard(os.getpid())
    for pid in victims:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, 9)
    deadline = time.monotonic() + 10
    while victims and time.monotonic() < deadline:
        victims = {pid for pid in victims if Path(f"/proc/{pid}").exists()}
        time.sleep(0.1)


def restore_host(
    before: HostState, *, workdir: Path | None, containerd_root: Path, kube_proxy: Path
) -> None:
    """Unmount, delete and write back what the node added since ``before``.

    ``workdir`` (the node's directory) is removed last; ``kube_proxy`` is the
    binary whose ``--cleanup`` removes its own rules before the diff does.
    """
    if workdir is not None:
        unmount_under(workdir)
    # Sandboxes' /dev/shm mounts live under containerd's root.
    unmount_under(containerd_root)
    for leftover in ("sandboxes", "containers"):
        for entry in (containerd_root / "io.containerd.grpc.v1.cri" / leftover).glob("*"):
            shutil.rmtree(entry, ignore_errors=True)
    for name in sorted(_cni_netns() - before.netns):
        path = NETNS_DIR / name
        subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)
        with contextlib.suppress(OSError):
            path.unlink()
    remove_cgroups(before)
    if workdir is not None and (workdir / "kube-proxy.yaml").exists():
        # kube-proxy knows its own rules best; the diff below catches the rest.
        subprocess.run(
            [str(kube_proxy), "--cleanup", f"--config={workdir / 'kube-proxy.yaml'}"],
            capture_output=True, check=False, timeout=60,
        )  # fmt: skip
    restore_iptables(before)
    if BRIDGE in links() and BRIDGE not in before.links:
        run("ip", "link", "del", BRIDGE, check=False)
    for link in links() - before.links:
        if link.startswith("veth"):
            run("ip", "link", "del", link, check=False)
    restore_sysctls(before)
    for path in FIXED_PATHS:
        if not before.paths.get(str(path), True) and path.exists():
            unmount_under(path)
            shutil.rmtree(path, ignore_errors=True)
    if workdir is not None:
        shutil.rmtree(workdir, ignore_errors=True)


WORKDIR_PREFIX: Final = "sidecar-injector-node-"


def _bridged_veths() -> set[str]:
    return {
        link
        for link in links()
        if link.startswith("veth")
        and os.path.realpath(f"/sys/class/net/{link}/master").endswith(f"/{BRIDGE}")
    }


def _without_ours(state: HostState) -> HostState:
    """``state`` as it would be with no node's leftovers in it."""
    return HostState(
        iptables={
            family: {
                table: (
                    [c for c in chains if ":" in c or not c.startswith(OUR_CHAIN_PREFIXES)],
                    [r for r in rules if not _is_ours(r)],
                )
                for table, (chains, rules) in tables.items()
            }
            for family, tables in state.iptables.items()
        },
        sysctls=state.sysctls,
        mounts=frozenset(),
        links=state.links - {BRIDGE} - _bridged_veths(),
        netns=frozenset(),
        paths=state.paths,
        cgroups=frozenset(),
    )


def reclaim_leftovers(*, containerd_root: Path, kube_proxy: Path) -> list[str]:
    """Undo what a node stopped without teardown left (its run was killed); say what it was.

    Called with the host lock held, so no node is running and every node
    directory, bridge, ``cni-*`` namespace and KUBE-/CNI- chain is a
    leftover. Sysctls and fixed paths stay as found: what they were before
    the killed run is not known.
    """
    now = HostState.capture()
    clean = _without_ours(now)
    stale = sorted(Path(tempfile.gettempdir()).glob(WORKDIR_PREFIX + "*"))
    found = [f"directory {d}" for d in stale] + clean.differences(now)
    if not found:
        return []
    workdirs: list[Path | None] = [*stale] if stale else [None]
    for workdir in workdirs:
        if workdir is not None:
            kill_leftover_processes(workdir)
        restore_host(clean, workdir=workdir, containerd_root=containerd_root, kube_proxy=kube_proxy)
    return found


def remove_cgroups(before: HostState) -> None:
    """Remove the kubelet's ``kubepods`` cgroups (deepest first) where it made them."""
    for hierarchy in Path("/sys/fs/cgroup").iterdir():
        top = hierarchy / "kubepods"
        if hierarchy.name in before.cgroups or not top.is_dir():
            continue
        for directory in sorted(
            (p for p in top.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True
        ):
            with contextlib.suppress(OSError):
                directory.rmdir()
        with contextlib.suppress(OSError):
            top.rmdir()


def rss_mib(pid: int) -> float:
    """Resident set of ``pid`` and its descendants, in MiB."""
    total = 0
    children = {pid}
    with contextlib.suppress(OSError):
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                with contextlib.suppress(OSError):
                    stat = (entry / "stat").read_text()
                    ppid = int(stat.rsplit(")", 1)[1].split()[1])
                    if ppid == pid:
                        children.add(int(entry.name))
    for member in children:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{member}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return round(total / 1024, 1)
