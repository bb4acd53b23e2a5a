"""A one-node Kubernetes cluster on this machine, from real parts.

The control plane of :mod:`harness.kube.control_plane` runs no pods. This module adds
a node, so the install runs the way users run it: containerd (Debian's 1.6)
with runc and the CNI ``bridge`` + ``host-local`` plugins, a kubelet,
kube-scheduler and kube-proxy built from the same pinned Kubernetes module
(``build_control_plane.sh node``), and the images of :mod:`harness.kube.images`
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
* Settings this kind of VM needs (found the hard way): cgroup v1
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

By hand: ``make node`` (:mod:`harness.kube.run_node`).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import tempfile
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Final

import yaml

from harness.kube.binaries import ControlPlaneError, cache_root, pinned_version
from harness.kube.control_plane import log_tails, terminate
from harness.kube.host import (
    BRIDGE,
    WORKDIR_PREFIX,
    HostState,
    NodeError,
    kill_leftover_processes,
    links,
    missing_packages,
    reclaim_leftovers,
    restore_host,
    rss_mib,
    run,
    unsupported_reason,
)
from harness.kube.images import BuiltImage, unmount_under
from harness.kube.node_parts import (
    NODE_IP,
    NODE_NAME,
    NodeControlPlane,
    StartupTimes,
    cni_config,
    containerd_config,
    host_lock,
    kube_proxy_config,
    kubelet_config,
)
from harness.kube.pki import SERVICE_CLUSTER_IP_RANGE

__all__ = [
    "Node",
    "NodeError",
    "StartupTimes",
    "build_node_binaries",
    "cached_node_bin_dir",
    "missing_packages",
    "unsupported_reason",
]

HERE: Final = Path(__file__).resolve().parent
BUILD_SCRIPT: Final = HERE / "build_control_plane.sh"
KUBERNETES_SERVICE_IP: Final = "10.96.0.1"
IMAGE_HASH_LABEL: Final = "sidecar-injector.e2e/input-hash"
NODE_IMAGES: Final = ("webhook", "mesh-init", "envoy", "busybox")


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


# --- the processes --------------------------------------------------------------------


@dataclass
class _Proc:
    name: str
    process: subprocess.Popen[bytes]
    log: Path


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
            usage[name] = rss_mib(pid)
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
        self._stack.enter_context(host_lock(self.lock_timeout))
        reclaimed = reclaim_leftovers(
            containerd_root=self.containerd_root(), kube_proxy=self.node_bin_dir / "kube-proxy"
        )
        if reclaimed:
            warnings.warn(
                f"a node killed before its teardown had left {len(reclaimed)} changes on this"
                " host, undone now: "
                + "; ".join(reclaimed[:3])
                + ("; ..." if len(reclaimed) > 3 else ""),
                stacklevel=2,
            )
        self._before = HostState.capture()
        self._workdir = Path(tempfile.mkdtemp(prefix=WORKDIR_PREFIX))
        try:
            self._start_all()
        except BaseException as error:
            report = log_tails((p.name, p.log) for p in self._procs)
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
            _stop_pods(self)
        finally:
            try:
                for name in ("kubelet", "kube-proxy", "kube-scheduler"):
                    self._stop_component(name)
                _remove_containers(self)
            finally:
                for proc in reversed(self._procs):
                    terminate(proc.process)
                self._procs.clear()
                if self._workdir is not None:
                    kill_leftover_processes(self._workdir)
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
        if BRIDGE in links():
            raise NodeError(f"network link {BRIDGE} already exists: a node left behind?")
        run("ip", "link", "add", BRIDGE, "type", "bridge")
        run("ip", "addr", "add", f"{NODE_IP}/24", "dev", BRIDGE)
        run("ip", "link", "set", BRIDGE, "up")
        # Cluster IPs stay on this machine even before kube-proxy programs them.
        run("ip", "route", "add", SERVICE_CLUSTER_IP_RANGE, "dev", BRIDGE, "src", NODE_IP)

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
            json.dumps(cni_config(work), indent=2), encoding="utf-8"
        )
        config = base / "config.toml"
        config.write_text(
            containerd_config(
                root=self.containerd_root(),
                base=base,
                socket=self.containerd_socket,
                sandbox_image=self.sandbox_image,
                cni_conf=cni_conf,
            ),
            encoding="utf-8",
        )
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
            terminate(proc.process)
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
        config = kubelet_config(
            work=work, ca_file=self.control_plane.ca_file, containerd_socket=self.containerd_socket
        )
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
        config = kube_proxy_config(kubeconfig)
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

    def _restore_host(self) -> None:
        before = self._before
        assert before is not None
        restore_host(
            before,
            workdir=self._workdir,
            containerd_root=self.containerd_root(),
            kube_proxy=self.node_bin_dir / "kube-proxy",
        )
        self._workdir = None


def _stop_pods(node: Node) -> None:
    """Let the kubelet stop every pod, so CNI releases addresses and veths.

    The node is cordoned first, so controllers' replacement pods stay
    Pending; force deletion, because graceful shutdowns would only add
    time here. Best effort: whatever is left is killed afterwards.
    """
    if node._workdir is None or not node._procs or not node.control_plane.pids():
        return
    if not any(p.name == "kubelet" and p.process.poll() is None for p in node._procs):
        return
    node.kubectl("cordon", NODE_NAME, check=False)
    node.kubectl(
        "delete", "pods", "--all", "--all-namespaces", "--force", "--grace-period=0",
        "--wait=false", check=False, timeout=120,
    )  # fmt: skip

    def sandboxes_gone() -> bool:
        listing = node.ctr("tasks", "list", check=False).splitlines()[1:]
        return not any("RUNNING" in line.split() for line in listing)

    with contextlib.suppress(NodeError, ControlPlaneError):
        node.wait_for(sandboxes_gone, what="the kubelet to stop every pod", timeout=90)


def _remove_containers(node: Node) -> None:
    """Delete every container from containerd's (cached) root, tasks first.

    The kubelet would garbage-collect them a minute later; the root is
    kept for the images, and containers must not outlive the run in it.
    """
    if not any(p.name == "containerd" and p.process.poll() is None for p in node._procs):
        return
    for task in node.ctr("tasks", "list", "--quiet", check=False).split():
        node.ctr("tasks", "delete", "--force", task, check=False)
    containers = node.ctr("containers", "list", "--quiet", check=False).split()
    if containers:
        node.ctr("containers", "delete", *containers, check=False)


def _kubernetes_service_reachable() -> bool:
    with socket.socket() as probe:
        probe.settimeout(2)
        try:
            probe.connect((KUBERNETES_SERVICE_IP, 443))
        except OSError:
            return False
        return True
