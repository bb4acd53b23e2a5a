"""A one-node Kubernetes cluster on this machine, from real parts.

The control plane of :mod:`tests.e2e.cluster` runs no pods. This module adds
a node, so the install runs the way users run it: containerd (Debian's 1.6)
with runc and the CNI ``bridge`` + ``host-local`` plugins, a kubelet,
kube-scheduler and kube-proxy built from the same pinned Kubernetes module
(``build_control_plane.sh node``), and the images of :mod:`tests.e2e.images`
imported into containerd.

What the node looks like, and why:

* Node name ``localhost``, InternalIP ``10.244.0.1`` on a bridge of its own
  (``sinode0``, made before anything starts); pods get addresses from
  ``10.244.0.0/24`` on that bridge, no masquerade and no default route: the
  pod network is this machine and nothing else. Pods have one route more,
  the Service range via the bridge, so the injector reaches the apiserver at
  the ``kubernetes`` Service address through kube-proxy, as in any cluster.
  The host routes the Service range into the bridge too, so a cluster IP that
  kube-proxy has not programmed yet can never leave the machine.
* kube-apiserver listens on all addresses and advertises ``10.244.0.1`` (the
  ``kubernetes`` Service's endpoint). It calls webhooks through the Service's
  cluster IP (aggregator routing off, the apiserver's default), which
  kube-proxy translates, and reaches the kubelet as ``localhost``
  (``--kubelet-preferred-address-types=Hostname,InternalIP``) for logs and exec.
* containerd's root directory (image content and snapshots) is kept in the
  cache (``<cache>/containerd``), because importing the images takes far
  longer than starting a node; each image carries a label with its input hash,
  so only new builds are imported. Containers never outlive a run there: the
  teardown removes them, and a root that still has some (a run that was
  killed) is wiped and filled again.
* Settings this kind of VM needs (found the hard way, see issue 15): cgroup v1
  with the ``cgroupfs`` driver and ``failCgroupV1: false``; containerd's
  ``restrict_oom_score_adj`` (without CAP_SYS_RESOURCE a negative
  ``oom_score_adj`` fails every sandbox); nothing raises rlimits.
* The kubelet syncs pods every 10 s instead of every minute, so a Secret
  update reaches mounted volumes within seconds rather than a minute; the
  mechanism (an atomic ``..data`` swap) is the same.

Host state. A kubelet and containerd are machine-wide by nature: the kubelet's
port 10250, ``/var/log/containers``, host iptables chains (kube-proxy's and
the kubelet's), sysctls the kubelet sets (``vm.overcommit_memory``,
``kernel.panic``...), ``ip_forward`` (set by the bridge plugin), cgroups under
``kubepods``, network namespaces under ``/run/netns``. Everything else
(containerd's root and state, the kubelet's root directory, CNI config and
IPAM state, pod logs) lives in one temporary directory, but for containerd's
image store in the cache. So:

* one node per machine at a time, enforced by a lock file;
* :meth:`Node.start` records the host state first (:class:`HostState`) and
  :meth:`Node.stop` puts it back: pods are stopped by the kubelet (so CNI
  releases their network), then the processes go, mounts are unmounted,
  cgroups removed, every iptables rule and chain that appeared is deleted,
  sysctls restored, the bridge deleted and the directory removed. ``stop``
  returns whatever still differs from the recorded state, and the test
  fixtures fail on it.

By hand: ``make node`` (:mod:`tests.e2e.run_node`).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Final

import yaml

from tests.e2e.cluster import (
    SERVICE_CLUSTER_IP_RANGE,
    ControlPlane,
    ControlPlaneError,
    _terminate,
    cache_root,
    pinned_version,
)
from tests.e2e.images import BuiltImage, unmount_under

HERE: Final = Path(__file__).resolve().parent
BUILD_SCRIPT: Final = HERE / "build_control_plane.sh"

NODE_NAME: Final = "localhost"
BRIDGE: Final = "sinode0"
POD_CIDR: Final = "10.244.0.0/24"
NODE_IP: Final = "10.244.0.1"
KUBERNETES_SERVICE_IP: Final = "10.96.0.1"
CNI_BIN_DIR: Final = Path("/usr/lib/cni")
CNI_PLUGINS: Final = ("bridge", "host-local", "loopback")
LOCK_FILE: Final = Path("/run/lock/sidecar-injector-node.lock")
IMAGE_HASH_LABEL: Final = "sidecar-injector.e2e/input-hash"
NODE_IMAGES: Final = ("webhook", "mesh-init", "envoy", "busybox")

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


# --- binaries -------------------------------------------------------------------------


def cached_node_bin_dir(version: str | None = None) -> Path | None:
    """kubelet, kube-scheduler and kube-proxy for ``version``, if already built."""
    directory = cache_root() / f"kube-node-{version or pinned_version()}"
    if all(os.access(directory / b, os.X_OK) for b in ("kubelet", "kube-scheduler", "kube-proxy")):
        return directory
    return None


def build_node_binaries(*, timeout: float = 3600.0) -> Path:
    """Build (or reuse) the node binaries; output streams to stderr like the control plane's."""
    cached = cached_node_bin_dir()
    if cached is not None:
        return cached
    result = subprocess.run(
        ["bash", str(BUILD_SCRIPT), "node"],
        stdout=subprocess.PIPE,
        text=True,
        timeout=timeout,
        check=False,
    )
    if result.returncode != 0:
        raise NodeError(f"{BUILD_SCRIPT} node failed with exit code {result.returncode}")
    return Path(result.stdout.strip().splitlines()[-1])


# --- host state -----------------------------------------------------------------------


def _run(*argv: str, check: bool = True, input: str | None = None) -> str:
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
    for line in _run(f"{family}-save", check=False).splitlines():
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


def _links() -> set[str]:
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
            links=frozenset(_links()),
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
            _run(f"{family}-restore", "--noflush", input="\n".join(script) + "\n", check=False)


def restore_sysctls(before: HostState) -> None:
    """Write back every recorded sysctl that changed (ip_forward first: it resets the rest)."""
    for name, value in before.sysctls.items():
        if value is None or _read_sysctl(name) == value:
            continue
        with contextlib.suppress(OSError):
            Path("/proc/sys", name).write_text(value + "\n", encoding="utf-8")


# --- the processes --------------------------------------------------------------------


@dataclass
class _Proc:
    name: str
    process: subprocess.Popen[bytes]
    log: Path


class NodeControlPlane(ControlPlane):
    """The e2e control plane, reachable from pods and able to reach the kubelet."""

    def _workdir_apiserver_args(self, work: Path) -> list[str]:
        return [
            # Pods reach the apiserver at the kubernetes Service, which
            # kube-proxy sends to the advertised address on the node's bridge.
            "--bind-address=0.0.0.0",
            f"--advertise-address={NODE_IP}",
            "--endpoint-reconciler-type=lease",
            # A kube-proxy runs: call webhooks at their Service's cluster IP,
            # as an apiserver does by default.
            "--enable-aggregator-routing=false",
            # The node is called localhost; logs and exec go there.
            "--kubelet-preferred-address-types=Hostname,InternalIP",
            f"--kubelet-client-certificate={work / 'admin.crt'}",
            f"--kubelet-client-key={work / 'admin.key'}",
        ]


@contextlib.contextmanager
def _host_lock(timeout: float) -> Iterator[IO[str]]:
    """The machine-wide node lock; NodeError naming the holder if it stays taken."""
    LOCK_FILE.parent.mkdir(parents=True, exist_ok=True)
    handle = LOCK_FILE.open("a+")
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() > deadline:
                handle.seek(0)
                holder = handle.read().strip() or "unknown"
                handle.close()
                raise NodeError(
                    f"another node is running on this machine ({holder}); one at a time, "
                    f"since a kubelet owns port 10250 and host paths (lock {LOCK_FILE})"
                ) from None
            time.sleep(1)
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()}\n")
    handle.flush()
    try:
        yield handle
    finally:
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()


@dataclass
class StartupTimes:
    """Seconds per start-up phase, for the report."""

    phases: dict[str, float] = field(default_factory=dict)

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Time the block as ``name``."""
        started = time.monotonic()
        try:
            yield
        finally:
            self.phases[name] = round(time.monotonic() - started, 2)


class Node:
    """Control plane + containerd + kubelet + kube-scheduler + kube-proxy on this machine.

    Use as a context manager, or :meth:`start` / :meth:`stop` (``stop`` is
    safe after a failed ``start`` and returns what it could not restore)::

        with Node(images=build_images()) as node:
            node.kubectl("get", "nodes")
    """

    def __init__(
        self,
        *,
        images: Mapping[str, BuiltImage],
        control_plane_bin_dir: Path,
        node_bin_dir: Path,
        sandbox_image: str,
        startup_timeout: float = 180.0,
        lock_timeout: float = 600.0,
    ) -> None:
        self.images = dict(images)
        self.node_bin_dir = node_bin_dir
        self.sandbox_image = sandbox_image
        self.startup_timeout = startup_timeout
        self.lock_timeout = lock_timeout
        self.control_plane = NodeControlPlane(
            bin_dir=control_plane_bin_dir, startup_timeout=startup_timeout
        )
        self.times = StartupTimes()
        self._stack = contextlib.ExitStack()
        self._procs: list[_Proc] = []
        self._workdir: Path | None = None
        self._before: HostState | None = None

    # -- public surface --

    @property
    def workdir(self) -> Path:
        """containerd's root and state, the kubelet's root, CNI config, logs."""
        if self._workdir is None:
            raise NodeError("the node is not running")
        return self._workdir

    @property
    def kubeconfig(self) -> Path:
        """The admin kubeconfig."""
        return self.control_plane.kubeconfig

    @property
    def containerd_socket(self) -> Path:
        """containerd's gRPC socket (for ``ctr --address``)."""
        return self.workdir / "containerd" / "containerd.sock"

    @staticmethod
    def containerd_root() -> Path:
        """containerd's root (images, snapshots), kept in the cache between runs."""
        return cache_root() / "containerd"

    def log_path(self, component: str) -> Path:
        """Log of ``containerd``, ``kubelet``, ``kube-scheduler`` or ``kube-proxy``."""
        return self.workdir / f"{component}.log"

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 60.0
    ) -> subprocess.CompletedProcess[str]:
        """kubectl as the cluster admin (see :meth:`ControlPlane.kubectl`)."""
        return self.control_plane.kubectl(*args, input=input, check=check, timeout=timeout)

    def ctr(self, *args: str, check: bool = True, timeout: float = 300.0) -> str:
        """``ctr`` against this node's containerd, in the Kubernetes namespace."""
        done = subprocess.run(
            ["ctr", "--address", str(self.containerd_socket), "--namespace", "k8s.io", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and done.returncode != 0:
            raise NodeError(f"ctr {' '.join(args)} failed: {done.stderr.strip()}")
        return done.stdout

    def wait_for(self, condition: Callable[[], bool], *, what: str, timeout: float = 120.0) -> None:
        """Poll ``condition`` (failing fast if a node process died)."""

        def checked() -> bool:
            self._check_alive()
            return condition()

        self.control_plane.wait_for(checked, what=what, timeout=timeout, interval=0.5)

    def memory_mib(self) -> dict[str, float]:
        """Resident memory (MiB) of each node and control-plane process, and of the pods."""
        usage: dict[str, float] = {}
        pids = {p.name: p.process.pid for p in self._procs} | self.control_plane.pids()
        for name, pid in pids.items():
            usage[name] = _rss_mib(pid)
        kubepods = Path("/sys/fs/cgroup/memory/kubepods/memory.usage_in_bytes")
        if kubepods.exists():
            usage["pods (kubepods cgroup)"] = int(kubepods.read_text()) / 2**20
        return usage

    # -- lifecycle --

    def __enter__(self) -> Node:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        leftovers = self.stop()
        if leftovers and exc is None:
            raise NodeError("teardown left host state behind:\n  " + "\n  ".join(leftovers))

    def start(self) -> Node:
        """Take the lock, record the host state, start everything, wait for the node to be Ready."""
        if self._workdir is not None:
            return self
        reason = unsupported_reason()
        if reason is not None:
            raise NodeError(f"this machine cannot run a node: {reason}")
        missing = missing_packages()
        if missing:
            raise NodeError("missing packages for the node: apt-get install " + " ".join(missing))
        self._stack.enter_context(_host_lock(self.lock_timeout))
        self._before = HostState.capture()
        self._workdir = Path(tempfile.mkdtemp(prefix="sidecar-injector-node-"))
        try:
            self._start_all()
        except BaseException as error:
            report = self._log_report()
            leftovers = self.stop()
            if leftovers:
                report += "\nteardown left behind:\n  " + "\n  ".join(leftovers)
            if isinstance(error, NodeError | ControlPlaneError):
                raise NodeError(f"{error}\n{report}") from error
            raise
        return self

    def stop(self) -> list[str]:
        """Tear everything down and restore the host; return what still differs."""
        if self._before is None:
            self._stack.close()
            return []
        try:
            self._stop_pods()
        finally:
            try:
                for name in ("kubelet", "kube-proxy", "kube-scheduler"):
                    self._stop_component(name)
                self._remove_containers()
            finally:
                for proc in reversed(self._procs):
                    _terminate(proc.process)
                self._procs.clear()
                self._kill_leftover_processes()
                self.control_plane.stop()
                self._restore_host()
        before, self._before = self._before, None
        leftovers = before.differences(HostState.capture())
        self._stack.close()
        return leftovers

    # -- start-up --

    def _start_all(self) -> None:
        work = self.workdir
        with self.times.phase("bridge"):
            self._make_bridge()
        with self.times.phase("control plane"):
            self.control_plane.start()
        with self.times.phase("containerd"):
            self._start_containerd(work)
        with self.times.phase("image import"):
            self.import_images()
        with self.times.phase("kubelet, scheduler, kube-proxy"):
            self._start_kube_proxy(work)
            self._start_scheduler(work)
            self._start_kubelet(work)
        with self.times.phase("node ready"):
            self.wait_for(
                self._node_ready, what="node localhost to be Ready", timeout=self.startup_timeout
            )
            self.wait_for(
                _kubernetes_service_reachable,
                what=f"kube-proxy to route the kubernetes Service ({KUBERNETES_SERVICE_IP}:443)",
                timeout=self.startup_timeout,
            )

    def _make_bridge(self) -> None:
        if BRIDGE in _links():
            raise NodeError(f"network link {BRIDGE} already exists: a node left behind?")
        _run("ip", "link", "add", BRIDGE, "type", "bridge")
        _run("ip", "addr", "add", f"{NODE_IP}/24", "dev", BRIDGE)
        _run("ip", "link", "set", BRIDGE, "up")
        # Cluster IPs stay on this machine even before kube-proxy programs them.
        _run("ip", "route", "add", SERVICE_CLUSTER_IP_RANGE, "dev", BRIDGE, "src", NODE_IP)

    def _spawn(self, name: str, argv: Sequence[str]) -> None:
        log = self.log_path(name)
        with log.open("wb") as sink:
            process = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=sink,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                start_new_session=True,
            )
        self._procs.append(_Proc(name, process, log))

    def _check_alive(self) -> None:
        for proc in self._procs:
            code = proc.process.poll()
            if code is not None:
                raise NodeError(f"{proc.name} exited with code {code}")

    def _start_containerd(self, work: Path) -> None:
        base = work / "containerd"
        base.mkdir()
        cni_conf = work / "cni" / "net.d"
        cni_conf.mkdir(parents=True)
        (cni_conf / "10-sidecar-injector-node.conflist").write_text(
            json.dumps(self._cni_config(work), indent=2), encoding="utf-8"
        )
        config = base / "config.toml"
        config.write_text(self._containerd_config(base, cni_conf), encoding="utf-8")
        self._spawn_containerd(config)
        if self.ctr("containers", "list", "--quiet").split():
            # A killed run left containers: the kubelet would find sandboxes
            # of pods it never knew. Start from an empty root instead.
            self._stop_component("containerd")
            unmount_under(self.containerd_root())
            shutil.rmtree(self.containerd_root())
            self._spawn_containerd(config)

    def _stop_component(self, name: str) -> None:
        for proc in [p for p in self._procs if p.name == name]:
            _terminate(proc.process)
            self._procs.remove(proc)

    def _spawn_containerd(self, config: Path) -> None:
        self.containerd_root().mkdir(parents=True, exist_ok=True)
        self._spawn("containerd", ["containerd", "--config", str(config)])

        def answering() -> bool:
            if not self.containerd_socket.exists():
                return False
            return (
                subprocess.run(
                    ["ctr", "--address", str(self.containerd_socket), "version"],
                    capture_output=True,
                    check=False,
                ).returncode
                == 0
            )

        self.wait_for(answering, what="containerd to answer", timeout=60)

    def _containerd_config(self, base: Path, cni_conf: Path) -> str:
        # TOML written by hand: the standard library reads TOML but does not write it.
        return f"""version = 2
root = "{self.containerd_root()}"
state = "{base / "state"}"
# Plugins that would write outside our directories or are of no use here.
disabled_plugins = [
  "io.containerd.internal.v1.opt",
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs",
  "io.containerd.tracing.processor.v1.otlp",
]

[grpc]
  address = "{self.containerd_socket}"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{self.sandbox_image}"
  # No CAP_SYS_RESOURCE in this VM: a negative oom_score_adj (the sandbox's
  # default) would fail every pod with "can't get final child's PID from pipe".
  restrict_oom_score_adj = true
  disable_apparmor = true
  stream_server_address = "127.0.0.1"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "{base / "runc"}"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{CNI_BIN_DIR}"
    conf_dir = "{cni_conf}"
    max_conf_num = 1
"""

    def _cni_config(self, work: Path) -> dict[str, Any]:
        return {
            "cniVersion": "1.0.0",
            "name": "sidecar-injector-node",
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": BRIDGE,
                    "isGateway": True,
                    # The pod network is this machine: nothing to masquerade for.
                    "ipMasq": False,
                    "hairpinMode": True,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": POD_CIDR, "gateway": NODE_IP}]],
                        # No default route: only the Service range, via the node.
                        "routes": [{"dst": SERVICE_CLUSTER_IP_RANGE}],
                        "dataDir": str(work / "cni" / "ipam"),
                    },
                }
            ],
        }

    def node_images(self) -> list[BuiltImage]:
        """The images pods run (not the bases the project's Dockerfiles build on)."""
        return [self.images[key] for key in NODE_IMAGES]

    def import_images(self) -> list[str]:
        """``ctr images import`` each image containerd lacks; return the tags imported.

        An image counts as present when its tag carries the label with the
        input hash of the archive it came from.
        """
        present: dict[str, str] = {}
        for line in self.ctr("images", "list").splitlines()[1:]:
            fields = line.split()
            labels = (
                dict(item.split("=", 1) for item in fields[-1].split(",") if "=" in item)
                if fields
                else {}
            )
            present[fields[0]] = labels.get(IMAGE_HASH_LABEL, "")
        imported = []
        for image in self.node_images():
            wanted = image.info["input_hash"]
            if present.get(image.tag) == wanted:
                continue
            self.ctr("images", "import", str(image.archive))
            self.ctr("images", "label", image.tag, f"{IMAGE_HASH_LABEL}={wanted}")
            imported.append(image.tag)
        listed = self.ctr("images", "list", "--quiet").split()
        missing = [i.tag for i in self.node_images() if i.tag not in listed]
        if missing:
            raise NodeError(f"images missing after import: {missing}")
        return imported

    def _start_kubelet(self, work: Path) -> None:
        kubeconfig = self.control_plane.write_user_kubeconfig(
            work / "kubelet.kubeconfig", f"system:node:{NODE_NAME}", "system:nodes"
        )
        root = work / "kubelet"
        root.mkdir()
        config = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "authentication": {
                "anonymous": {"enabled": False},
                "webhook": {"enabled": True},
                "x509": {"clientCAFile": str(self.control_plane.ca_file)},
            },
            "authorization": {"mode": "Webhook"},
            # This VM: cgroup v1, managed directly.
            "cgroupDriver": "cgroupfs",
            "failCgroupV1": False,
            "containerRuntimeEndpoint": f"unix://{self.containerd_socket}",
            "podLogsDir": str(work / "pod-logs"),
            # No cluster DNS and no host resolver: pods use addresses.
            "resolvConf": "",
            "clusterDomain": "cluster.local",
            "maxPods": 250,
            # Secret/ConfigMap volume updates within seconds (see the module docstring).
            "syncFrequency": "10s",
            "serializeImagePulls": False,
            # Thresholds for a shared developer disk: evict only when truly full,
            # and never garbage-collect the imported images (they cannot be pulled).
            "evictionHard": {
                "memory.available": "100Mi",
                "nodefs.available": "1%",
                "imagefs.available": "1%",
                "nodefs.inodesFree": "1%",
            },
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "failSwapOn": False,
            "protectKernelDefaults": False,
            "healthzBindAddress": "127.0.0.1",
            "readOnlyPort": 0,
        }
        config_file = work / "kubelet.yaml"
        config_file.write_text(yaml.safe_dump(config), encoding="utf-8")
        self._spawn(
            "kubelet",
            [
                str(self.node_bin_dir / "kubelet"),
                f"--config={config_file}",
                f"--kubeconfig={kubeconfig}",
                f"--root-dir={root}",
                f"--hostname-override={NODE_NAME}",
                f"--node-ip={NODE_IP}",
                "--v=1",
            ],
        )

    def _start_scheduler(self, work: Path) -> None:
        kubeconfig = self.control_plane.write_user_kubeconfig(
            work / "kube-scheduler.kubeconfig", "system:kube-scheduler"
        )
        self._spawn(
            "kube-scheduler",
            [
                str(self.node_bin_dir / "kube-scheduler"),
                f"--kubeconfig={kubeconfig}",
                "--leader-elect=false",
                # No metrics/health endpoint: it would need a port and delegated auth.
                "--secure-port=0",
            ],
        )

    def _kube_proxy_config(self, work: Path) -> Path:
        kubeconfig = self.control_plane.write_user_kubeconfig(
            work / "kube-proxy.kubeconfig", "system:kube-proxy"
        )
        config = {
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
            "kind": "KubeProxyConfiguration",
            "clientConnection": {"kubeconfig": str(kubeconfig)},
            "hostnameOverride": NODE_NAME,
            "mode": "iptables",
            "clusterCIDR": POD_CIDR,
            "healthzBindAddress": "127.0.0.1:10256",
            "metricsBindAddress": "127.0.0.1:10249",
            # Leave the host's conntrack settings alone.
            "conntrack": {
                "maxPerCore": 0,
                "min": 0,
                "tcpEstablishedTimeout": "0s",
                "tcpCloseWaitTimeout": "0s",
            },
            # No NodePorts on 127.0.0.1: that needs route_localnet on the host.
            "iptables": {"localhostNodePorts": False},
        }
        path = work / "kube-proxy.yaml"
        path.write_text(yaml.safe_dump(config), encoding="utf-8")
        return path

    def _start_kube_proxy(self, work: Path) -> None:
        self._spawn(
            "kube-proxy",
            [str(self.node_bin_dir / "kube-proxy"), f"--config={self._kube_proxy_config(work)}"],
        )

    def _node_ready(self) -> bool:
        done = self.kubectl("get", "node", NODE_NAME, "-o", "json", check=False)
        if done.returncode != 0:
            return False
        conditions = json.loads(done.stdout)["status"].get("conditions") or []
        return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)

    # -- teardown --

    def _stop_pods(self) -> None:
        """Let the kubelet stop every pod, so CNI releases addresses and veths.

        The node is cordoned first, so controllers' replacement pods stay
        Pending; force deletion, because graceful shutdowns would only add
        time here. Best effort: whatever is left is killed afterwards.
        """
        if self._workdir is None or not self._procs or not self.control_plane.pids():
            return
        if not any(p.name == "kubelet" and p.process.poll() is None for p in self._procs):
            return
        self.kubectl("cordon", NODE_NAME, check=False)
        self.kubectl(
            "delete", "pods", "--all", "--all-namespaces", "--force", "--grace-period=0",
            "--wait=false", check=False, timeout=120,
        )  # fmt: skip

        def sandboxes_gone() -> bool:
            listing = self.ctr("tasks", "list", check=False).splitlines()[1:]
            return not any("RUNNING" in line.split() for line in listing)

        with contextlib.suppress(NodeError, ControlPlaneError):
            self.wait_for(sandboxes_gone, what="the kubelet to stop every pod", timeout=90)

    def _remove_containers(self) -> None:
        """Delete every container from containerd's (cached) root, tasks first.

        The kubelet would garbage-collect them a minute later; the root is
        kept for the images, and containers must not outlive the run in it.
        """
        if not any(p.name == "containerd" and p.process.poll() is None for p in self._procs):
            return
        for task in self.ctr("tasks", "list", "--quiet", check=False).split():
            self.ctr("tasks", "delete", "--force", task, check=False)
        containers = self.ctr("containers", "list", "--quiet", check=False).split()
        if containers:
            self.ctr("containers", "delete", *containers, check=False)

    def _kill_leftover_processes(self) -> None:
        """SIGKILL containers and shims a failed teardown left (found by cgroup and path)."""
        if self._workdir is None:
            return
        victims: set[int] = set()
        for procs in Path("/sys/fs/cgroup").glob("*/kubepods/**/cgroup.procs"):
            with contextlib.suppress(OSError, ValueError):
                victims.update(int(p) for p in procs.read_text().split())
        marker = str(self._workdir).encode()
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

    def _restore_host(self) -> None:
        before = self._before
        assert before is not None
        work = self._workdir
        if work is not None:
            unmount_under(work)
        # Sandboxes' /dev/shm mounts live under containerd's root.
        unmount_under(self.containerd_root())
        for leftover in ("sandboxes", "containers"):
            for entry in (self.containerd_root() / "io.containerd.grpc.v1.cri" / leftover).glob(
                "*"
            ):
                shutil.rmtree(entry, ignore_errors=True)
        for name in sorted(_cni_netns() - before.netns):
            path = NETNS_DIR / name
            subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)
            with contextlib.suppress(OSError):
                path.unlink()
        self._remove_cgroups(before)
        if work is not None and (work / "kube-proxy.yaml").exists():
            # kube-proxy knows its own rules best; the diff below catches the rest.
            subprocess.run(
                [str(self.node_bin_dir / "kube-proxy"), "--cleanup",
                 f"--config={work / 'kube-proxy.yaml'}"],
                capture_output=True, check=False, timeout=60,
            )  # fmt: skip
        restore_iptables(before)
        if BRIDGE in _links() and BRIDGE not in before.links:
            _run("ip", "link", "del", BRIDGE, check=False)
        for link in _links() - before.links:
            if link.startswith("veth"):
                _run("ip", "link", "del", link, check=False)
        restore_sysctls(before)
        for path in FIXED_PATHS:
            if not before.paths.get(str(path), True) and path.exists():
                unmount_under(path)
                shutil.rmtree(path, ignore_errors=True)
        if work is not None:
            shutil.rmtree(work, ignore_errors=True)
            self._workdir = None

    @staticmethod
    def _remove_cgroups(before: HostState) -> None:
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

    def _log_report(self, lines: int = 30) -> str:
        parts = []
        for proc in self._procs:
            try:
                tail = proc.log.read_text(errors="replace").splitlines()[-lines:]
            except OSError:
                tail = ["<no log>"]
            body = "\n".join(f"    {line}" for line in tail)
            parts.append(f"--- last {lines} lines of {proc.name} ---\n{body}")
        return "\n".join(parts)


def _kubernetes_service_reachable() -> bool:
    with socket.socket() as probe:
        probe.settimeout(2)
        try:
            probe.connect((KUBERNETES_SERVICE_IP, 443))
        except OSError:
            return False
        return True


def _rss_mib(pid: int) -> float:
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
