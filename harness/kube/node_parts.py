"""The node's parts around :class:`harness.kube.node.Node`: its components' configuration files
(containerd, CNI, kubelet, kube-proxy), the apiserver flags a node needs, the
machine-wide lock and the start-up timer. The configs are pure functions of
paths and names, so the Node only writes them and starts the processes. Why each setting is what it is: the
comments below and the module docstring of :mod:`harness.kube.node`.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Final

from harness.kube.control_plane import ControlPlane
from harness.kube.host import BRIDGE, CNI_BIN_DIR, NodeError
from harness.kube.pki import SERVICE_CLUSTER_IP_RANGE

NODE_NAME: Final = "localhost"
POD_CIDR: Final = "10.244.0.0/24"
NODE_IP: Final = "10.244.0.1"
LOCK_FILE: Final = Path("/run/lock/sidecar-injector-node.lock")


def containerd_config(
    *, root: Path, base: Path, socket: Path, sandbox_image: str, cni_conf: Path
) -> str:
    """containerd's ``config.toml``: ``root`` kept in the cache, state and runc under ``base``."""
    # TOML written by hand: the standard library reads TOML but does not write it.
    return f"""version = 2
root = "{root}"
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
  address = "{socket}"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{sandbox_image}"
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


def cni_config(work: Path) -> dict[str, Any]:
    """The bridge network: pods on ``POD_CIDR``, IPAM state under ``work``."""
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


def kubelet_config(*, work: Path, ca_file: Path, containerd_socket: Path) -> dict[str, Any]:
    """The KubeletConfiguration: webhook authn/authz against ``ca_file``, logs under ``work``."""
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": True},
            "x509": {"clientCAFile": str(ca_file)},
        },
        "authorization": {"mode": "Webhook"},
        # This VM: cgroup v1, managed directly.
        "cgroupDriver": "cgroupfs",
        "failCgroupV1": False,
        "containerRuntimeEndpoint": f"unix://{containerd_socket}",
        "podLogsDir": str(work / "pod-logs"),
        # No cluster DNS and no host resolver: pods use addresses.
        "resolvConf": "",
        "clusterDomain": "cluster.local",
        "maxPods": 250,
        # Secret/ConfigMap volume updates within seconds (see harness.kube.node).
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


def kube_proxy_config(kubeconfig: Path) -> dict[str, Any]:
    """The KubeProxyConfiguration: iptables mode, the host's conntrack settings left alone."""
    return {
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
def host_lock(timeout: float) -> Iterator[IO[str]]:
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
