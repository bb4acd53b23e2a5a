"""Pod-in-a-box: run an injected pod's ``mesh-init`` and ``mesh-proxy`` for real, no cluster.

A network namespace stands in for the pod sandbox, joined to the host
namespace by a veth pair, the way a CNI plugin would. Then the two injected
containers run exactly as their specs say: ``mesh-init``'s command as root in
the namespace, ``mesh-proxy``'s command after kubelet-style ``$(VAR)``
expansion, as its UID/GID, with the wheel's ``envoy`` first on PATH. Small
TCP servers that answer with the peer address they saw play the app (inside,
as another UID) and its upstreams (outside, on the host end of the veth).

Safety: the addresses come from 198.18.0.0/15, which RFC 2544 reserves for
network testing, one /30 per box; servers outside bind only the host end of
the veth, so every packet stays on the pair. Every wait has a deadline, and
``pod_box`` tears down processes, namespace and veth even when a step fails.

IPv6 (``pod_box(ipv6=True)``, alone or next to IPv4): a /64 per box from a
unique local prefix (RFC 4193, never routed beyond a site) fixed for these
tests, host end ``::1``, pod ``::2``, added without duplicate address detection
so they are usable at once. ``disable_ipv6=True`` turns IPv6 off inside the
pod's namespace with the sysctl a node or pod would use.

By hand (as root): ``python -m pytest -m netns tests/e2e -q`` or ``make e2e``.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import random
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from harness.kubelet import container_env, expanded_command, find_envoy
from tests.e2e.hostside import http_get

NETNS_PREFIX: Final = "podbox-"
VETH_PREFIX: Final = "pbx"
APP_UID: Final = 4321
TEST_RANGE: Final = ipaddress.ip_network("198.18.0.0/15")
TEST_RANGE6: Final = ipaddress.ip_network("fd53:1a5f:7e00::/48")

# Every process this module starts, so a test can prove none outlived its box.
STARTED_PIDS: list[int] = []
# Every namespace and host-side veth this process created: other worktrees may
# run pod-in-a-box at the same time, and their boxes are not ours to report.
CREATED_NAMES: list[str] = []

# The in-namespace helper, run as ``python -c``: it must not need the repository
# (the app UID cannot read a root-owned virtualenv under /root), so it is
# self-contained, imports everything it needs up front, and drops to the requested UID *before* creating its socket:
# the kernel records a socket's owner at creation, which is what the
# ``--uid-owner`` rule matches.
_HELPER: Final = r"""
import encodings.idna, os, signal, socket, sys, urllib.error, urllib.request  # all before the UID drop
cmd, uid = sys.argv[1], int(sys.argv[2])
if uid:
    os.setgroups([]); os.setgid(uid); os.setuid(uid)
if cmd == "serve":
    try:  # one socket for both families where the pod has IPv6
        srv = socket.socket(socket.AF_INET6)
        srv.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        host = "::"
    except OSError:
        srv, host = socket.socket(), "0.0.0.0"
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((host, int(sys.argv[3])))
    srv.listen(16)
    print("ready", flush=True)
    while True:
        conn, peer = srv.accept()
        with conn:
            conn.sendall(f"{peer[0].removeprefix('::ffff:')} {peer[1]}\n".encode())
elif cmd == "connect":
    with socket.create_connection((sys.argv[3], int(sys.argv[4])), timeout=5) as conn:
        print(conn.makefile().readline().strip())
elif cmd == "get":
    try:
        with urllib.request.urlopen(sys.argv[3], timeout=5) as resp:
            print(resp.status); print(resp.read().decode())
    except urllib.error.HTTPError as err:
        print(err.code)
elif cmd == "get-many":  # one new connection per request
    for _ in range(int(sys.argv[4])):
        with urllib.request.urlopen(sys.argv[3], timeout=5) as resp:
            print(resp.status, resp.read().decode().strip(), flush=True)
elif cmd == "hold":  # GETs on one kept-alive connection: one now, one on SIGUSR1, then close
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
    conn = socket.create_connection((sys.argv[3], int(sys.argv[4])), timeout=60)
    reader = conn.makefile("rb")
    def get():
        conn.sendall(b"GET / HTTP/1.1\r\nHost: mesh\r\n\r\n")
        status, length = reader.readline().split()[1].decode(), 0
        while line := reader.readline().strip():
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        return f"{status} {reader.read(length).decode().strip()}"
    print(get(), flush=True)
    signal.sigwait({signal.SIGUSR1})
    print(get(), flush=True)
    conn.close()
    print("closed", flush=True)
"""


def missing_requirement() -> str | None:
    """Why pod-in-a-box cannot run here, or None when it can."""
    if os.geteuid() != 0:
        return "needs root (network namespaces, iptables)"
    for tool, package in (
        ("ip", "iproute2"),
        ("iptables-restore", "iptables"),
        ("ip6tables-restore", "iptables"),
        ("ip6tables", "iptables"),
        ("unshare", "util-linux"),
        ("setpriv", "util-linux"),
        ("bash", "bash"),
    ):
        if shutil.which(tool) is None:
            return f"needs {tool} (Debian package {package})"
    try:
        find_envoy()
    except FileNotFoundError as err:
        return str(err)
    return None


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


def _pick_subnet() -> ipaddress.IPv4Network:
    """A /30 in the test range that no interface on this host uses yet."""
    used = subprocess.run(
        ["ip", "-4", "-o", "addr", "show"], capture_output=True, text=True, check=True, timeout=10
    ).stdout
    for _ in range(100):
        base = int(TEST_RANGE.network_address) + 4 * random.randrange(TEST_RANGE.num_addresses // 4)  # noqa: S311 - uniqueness, not secrecy
        subnet = ipaddress.ip_network(f"{ipaddress.IPv4Address(base)}/30")
        if f" {subnet[1]}/" not in used and f" {subnet[2]}/" not in used:
            return subnet  # type: ignore[return-value]
    raise RuntimeError("no free /30 in 198.18.0.0/15")


def _pick_subnet6() -> ipaddress.IPv6Network:
    """A /64 in the IPv6 test range that no interface on this host uses yet."""
    used = subprocess.run(
        ["ip", "-6", "-o", "addr", "show"], capture_output=True, text=True, check=True, timeout=10
    ).stdout
    for _ in range(100):
        subnet = ipaddress.IPv6Network(
            (int(TEST_RANGE6.network_address) + (random.randrange(2**16) << 64), 64)  # noqa: S311 - uniqueness, not secrecy
        )
        if f" {str(subnet.network_address).removesuffix('::')}:" not in used:
            return subnet
    raise RuntimeError(f"no free /64 in {TEST_RANGE6}")


def url_host(address: str) -> str:
    """An address as the host part of a URL (IPv6 in brackets)."""
    return f"[{address}]" if ":" in address else address


def _wait_line(proc: subprocess.Popen[str], *, deadline: float) -> str:
    """The next stdout line of ``proc``, or an error once the deadline passes."""
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 0.1)
        if ready:
            return proc.stdout.readline().strip()
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before answering")
    raise TimeoutError("no answer before the deadline")


def _stop(proc: subprocess.Popen[Any]) -> None:
    """End one process we started (its own session), by id; SIGKILL if it lingers."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)
    for stream in (proc.stdout, proc.stderr, proc.stdin):
        if stream is not None:
            stream.close()


@dataclass
class Box:
    """One pod sandbox: a network namespace, its veth pair, and what runs inside."""

    name: str
    host_if: str
    pod_if: str
    host_ip: str
    pod_ip: str
    workdir: Path
    procs: list[subprocess.Popen[Any]] = field(default_factory=list)
    proxy: subprocess.Popen[Any] | None = None
    # (host end, pod end) per address family the pod has; host_ip/pod_ip above
    # are the primary family's (IPv4 when the pod has it), as status.podIP is.
    families: dict[int, tuple[str, str]] = field(default_factory=dict)

    def addresses(self, family: int) -> tuple[str, str]:
        """(host end, pod end) of one family; KeyError when the pod lacks it."""
        return self.families[family]

    # --- running things inside ------------------------------------------------------

    def _argv(self, argv: Sequence[str], uid: int | None) -> list[str]:
        prefix = ["ip", "netns", "exec", self.name]
        if uid is not None:
            prefix += ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--"]
        return [*prefix, *argv]

    def run(
        self,
        argv: Sequence[str],
        *,
        uid: int | None = None,
        env: Mapping[str, str] | None = None,
        timeout: float = 20,
    ) -> subprocess.CompletedProcess[str]:
        """Run to completion inside the namespace (as root unless ``uid``)."""
        return subprocess.run(
            self._argv(argv, uid),
            env=dict(env) if env is not None else None,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def start(
        self,
        argv: Sequence[str],
        *,
        uid: int | None = None,
        env: Mapping[str, str] | None = None,
        log: str | None = None,
    ) -> subprocess.Popen[str]:
        """Start a long-running process inside the namespace, in its own session."""
        out: Any = subprocess.PIPE
        if log is not None:
            out = (self.workdir / log).open("w")
        try:
            proc = subprocess.Popen(
                self._argv(argv, uid),
                env=dict(env) if env is not None else None,
                stdout=out,
                stderr=subprocess.STDOUT if log is not None else subprocess.PIPE,
                text=True,
                start_new_session=True,
            )
        finally:
            if log is not None:
                out.close()
        self.procs.append(proc)
        STARTED_PIDS.append(proc.pid)
        return proc

    def _helper(self, *args: str) -> list[str]:
        return [sys.executable, "-I", "-S", "-c", _HELPER, *args]

    def start_app_server(self, port: int, *, uid: int = APP_UID) -> None:
        """A server on 0.0.0.0:``port`` in the pod that tells each client its address."""
        proc = self.start(self._helper("serve", str(uid), str(port)))
        line = _wait_line(proc, deadline=time.monotonic() + 10)
        if line != "ready":
            raise RuntimeError(f"app server on {port} said {line!r}")

    def connect_as_app(self, host: str, port: int, *, uid: int = APP_UID) -> str:
        """Connect from inside the pod as the app's UID; the server's answer."""
        result = self.run(self._helper("connect", str(uid), host, str(port)), timeout=15)
        if result.returncode != 0:
            raise ConnectionError(result.stderr.strip().splitlines()[-1])
        return result.stdout.strip()

    def get_inside(self, url: str) -> tuple[int, str]:
        """HTTP GET from inside the namespace as root: status and body."""
        result = self.run(self._helper("get", "0", url), timeout=15)
        if result.returncode != 0:
            raise ConnectionError(result.stderr.strip())
        status, _, body = result.stdout.partition("\n")
        return int(status), body

    def stats(self) -> dict[str, int]:
        """Envoy's counters and gauges, read from its admin port inside the pod."""
        status, body = self.get_inside("http://127.0.0.1:15000/stats?format=json")
        assert status == 200, body
        found: dict[str, int] = {}
        for item in json.loads(body)["stats"]:
            if isinstance(item.get("value"), int):
                found[item["name"]] = item["value"]
        return found

    def get_as_app(self, url: str, *, uid: int = APP_UID) -> tuple[int, str]:
        """HTTP GET from inside the pod as the app's UID (so it is redirected): status and body."""
        result = self.run(self._helper("get", str(uid), url), timeout=15)
        if result.returncode != 0:
            raise ConnectionError(result.stderr.strip())
        status, _, body = result.stdout.partition("\n")
        return int(status), body

    def hold_as_app(self, host: str, port: int, *, uid: int = APP_UID) -> subprocess.Popen[str]:
        """An HTTP connection from the app, kept alive: a GET now, another on SIGUSR1, then closed.

        Prints ``<status> <body>`` for each GET, then ``closed``.
        """
        return self.start(self._helper("hold", str(uid), host, str(port)))

    def get_many_as_app(self, url: str, count: int, *, uid: int = APP_UID) -> list[str]:
        """``count`` GETs as the app's UID, each on a new connection; ``"<status> <body>"`` each."""
        result = self.run(self._helper("get-many", str(uid), url, str(count)), timeout=15 + count)
        if result.returncode != 0:
            raise ConnectionError(result.stderr.strip())
        return result.stdout.splitlines()

    def config_dump(self) -> dict[str, Any]:
        """Envoy's /config_dump with endpoints (EDS included), from its admin port."""
        status, body = self.get_inside("http://127.0.0.1:15000/config_dump?include_eds")
        assert status == 200, body
        dump: dict[str, Any] = json.loads(body)
        return dump

    def redirected_to(self, port: int) -> int:
        """Connections the pod's nat rules have redirected to ``port`` so far.

        Summed over every ``REDIRECT --to-ports port`` rule (nat rules see the
        first packet of each connection only, so packets are connections).
        """
        listing = self.run(["iptables", "-t", "nat", "-L", "-n", "-v", "-x"])
        assert listing.returncode == 0, listing.stderr
        return sum(
            int(line.split()[0])
            for line in listing.stdout.splitlines()
            if line.rstrip().endswith(f"redir ports {port}")
        )

    def add_mesh_only_address(self) -> str:
        """An unused test address that only the mesh can answer: a service VIP.

        It gets an on-link route through the pod's interface, so a connection
        that the proxy fails to take over dies at the veth (no host owns the
        address, no ARP answer) instead of following the default route off
        this machine.
        """
        address = str(_pick_subnet()[1])
        _ip("-n", self.name, "route", "add", f"{address}/32", "dev", self.pod_if)
        return address

    # --- the injected containers --------------------------------------------------

    def pod_fields(self, pod: Mapping[str, Any]) -> dict[str, str]:
        """The downward-API values the kubelet would have for this pod in this box."""
        meta = pod.get("metadata") or {}
        return {
            "metadata.name": meta.get("name", "pod"),
            "metadata.namespace": meta.get("namespace", "default"),
            "status.podIP": self.pod_ip,
            "spec.serviceAccountName": (pod.get("spec") or {}).get("serviceAccountName")
            or "default",
        }

    def container_environ(
        self, pod: Mapping[str, Any], container: Mapping[str, Any]
    ) -> dict[str, str]:
        """Process environment for a container: PATH (envoy first) plus its spec env."""
        path = f"{find_envoy().parent}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
        return {"PATH": path, **container_env(container, self.pod_fields(pod))}

    def run_init(
        self, pod: Mapping[str, Any], container: Mapping[str, Any], *, hide_ipv6: bool = False
    ) -> str:
        """Run ``mesh-init`` as specified, as root in the pod; its output (the saved table).

        ``hide_ipv6`` makes the script see no ``/proc/net/if_inet6``, as on a
        kernel booted with ``ipv6.disable=1`` (this one has IPv6): in a private
        mount namespace an empty tmpfs covers the shell's own ``/proc/PID/net``,
        which ``/proc/net`` points to, and the shell then execs the script under
        that same PID. Only the script's shell is affected; the tools it starts
        see the real tables.
        """
        env = self.container_environ(pod, container)
        argv = expanded_command(container, env)
        if hide_ipv6:
            assert argv[:2] == ["sh", "-c"], argv[:2]
            wrapper = 'mount -t tmpfs none "/proc/$$/net" && exec sh -c "$0"'
            argv = ["unshare", "--mount", "sh", "-c", wrapper, argv[2]]
        result = self.run(argv, env=env)
        if result.returncode != 0:
            raise RuntimeError(f"mesh-init failed ({result.returncode}): {result.stderr}")
        return result.stdout

    def start_proxy(
        self,
        pod: Mapping[str, Any],
        container: Mapping[str, Any],
        *,
        wrapper: Sequence[str] = (),
    ) -> None:
        """Start ``mesh-proxy`` as specified, as its UID/GID, in the pod.

        ``wrapper`` is a command prefix run as root first (e.g. one that
        installs a seccomp filter, harness/no_ipv6.py).
        """
        env = self.container_environ(pod, container)
        uid = container["securityContext"]["runAsUser"]
        gid = container["securityContext"]["runAsGroup"]
        argv = expanded_command(container, env)
        self.proxy = self.start(
            [
                *wrapper,
                "setpriv",
                f"--reuid={uid}",
                f"--regid={gid}",
                "--clear-groups",
                "--",
                *argv,
            ],
            env=env,
            log="envoy.log",
        )

    def start_hook(self, pod: Mapping[str, Any], phase: str) -> subprocess.Popen[str]:
        """Run mesh-proxy's lifecycle hook as the kubelet does: in the pod, as its user, with its env."""
        proxy = next(
            c
            for c in [*(pod["spec"].get("initContainers") or []), *pod["spec"]["containers"]]
            if c["name"] == "mesh-proxy"
        )
        command = proxy["lifecycle"][phase]["exec"]["command"]
        return self.start(
            command,
            uid=proxy["securityContext"]["runAsUser"],
            env=self.container_environ(pod, proxy),
        )

    def wait_for_hook_polls(
        self, hook: subprocess.Popen[str], count: int, *, timeout: float = 60
    ) -> None:
        """Until the admin listener answered ``count`` requests besides these reads, or ``hook`` ended.

        A waiting preStop hook polls the admin stats; this is how a test knows
        it has looked at the current state (rather than sleeping and hoping).
        """
        key = "http.admin.downstream_rq_total"
        base = self.stats()[key]
        deadline = time.monotonic() + timeout
        ours = 0
        while self.stats()[key] - base - (ours := ours + 1) < count and hook.poll() is None:
            assert time.monotonic() < deadline, "the hook stopped polling"

    def wait_ready(self, *, timeout: float = 20) -> None:
        """Until /healthz/ready on the pod IP answers 200 (what the kubelet probes)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                if http_get(f"http://{url_host(self.pod_ip)}:15021/healthz/ready")[0] == 200:
                    return
            if self.proxy is not None and self.proxy.poll() is not None:
                break  # Envoy exited: waiting longer cannot help
            time.sleep(0.1)
        raise TimeoutError(f"proxy not ready in {timeout}s:\n{self.envoy_log()[-3000:]}")

    def envoy_log(self) -> str:
        """What Envoy wrote, for failure messages."""
        path = self.workdir / "envoy.log"
        return path.read_text(errors="replace") if path.exists() else ""

    # --- teardown -----------------------------------------------------------------

    def close(self) -> None:
        """Stop every process, then remove the namespace and the veth (idempotent)."""
        for proc in reversed(self.procs):
            _stop(proc)
        # Deleting the namespace destroys the pod end, which takes the pair with it;
        # the explicit link delete covers a failure before the move into the namespace.
        subprocess.run(
            ["ip", "netns", "del", self.name], capture_output=True, timeout=10, check=False
        )
        subprocess.run(
            ["ip", "link", "del", self.host_if], capture_output=True, timeout=10, check=False
        )
        shutil.rmtree(self.workdir, ignore_errors=True)


@contextlib.contextmanager
def pod_box(*, ipv4: bool = True, ipv6: bool = False, disable_ipv6: bool = False) -> Iterator[Box]:
    """A fresh, wired-up pod sandbox, torn down on exit whatever happened.

    IPv4 only by default; ``ipv6=True`` adds an IPv6 pair next to it (dual
    stack), or alone with ``ipv4=False``; ``disable_ipv6=True`` sets
    ``net.ipv6.conf.{all,default}.disable_ipv6=1`` in the pod's namespace.
    """
    if not (ipv4 or ipv6):
        raise ValueError("a pod needs at least one address family")
    tag = f"{os.getpid() % 10000:04d}{random.randrange(1000):03d}"  # noqa: S311 - uniqueness, not secrecy
    families: dict[int, tuple[str, str]] = {}
    if ipv4:
        subnet = _pick_subnet()
        families[4] = (str(subnet[1]), str(subnet[2]))
    if ipv6:
        subnet6 = _pick_subnet6()
        families[6] = (str(subnet6[1]), str(subnet6[2]))
    primary = families[4] if ipv4 else families[6]
    CREATED_NAMES.extend((f"{NETNS_PREFIX}{tag}", f"{VETH_PREFIX}{tag}h"))
    box = Box(
        name=f"{NETNS_PREFIX}{tag}",
        host_if=f"{VETH_PREFIX}{tag}h",
        pod_if=f"{VETH_PREFIX}{tag}p",
        host_ip=primary[0],
        pod_ip=primary[1],
        workdir=Path(tempfile.mkdtemp(prefix="podbox-")),
        families=families,
    )
    try:
        _ip("netns", "add", box.name)
        _ip("link", "add", box.host_if, "type", "veth", "peer", "name", box.pod_if)
        _ip("link", "set", box.pod_if, "netns", box.name)
        inside = ("-n", box.name)
        if disable_ipv6:
            subprocess.run(
                ["ip", "netns", "exec", box.name, "sysctl", "-qw",
                 "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1"],
                check=True, capture_output=True, timeout=10,
            )  # fmt: skip
        for family, (host_ip, pod_ip) in families.items():
            length, extra = ("30", ()) if family == 4 else ("64", ("nodad",))
            _ip("addr", "add", f"{host_ip}/{length}", "dev", box.host_if, *extra)
            _ip(*inside, "addr", "add", f"{pod_ip}/{length}", "dev", box.pod_if, *extra)
        _ip("link", "set", box.host_if, "up")
        _ip(*inside, "link", "set", "lo", "up")
        _ip(*inside, "link", "set", box.pod_if, "up")
        for family, (host_ip, _pod_ip) in families.items():
            _ip(*inside, f"-{family}", "route", "add", "default", "via", host_ip)
        yield box
    finally:
        box.close()


def leftovers() -> list[str]:
    """Anything this process left on the host: namespaces, veths, live processes."""
    found: list[str] = []
    netns = subprocess.run(
        ["ip", "netns", "list"], capture_output=True, text=True, timeout=10, check=False
    )
    found += [
        line.split()[0]
        for line in netns.stdout.splitlines()
        if line.startswith(NETNS_PREFIX) and line.split()[0] in CREATED_NAMES
    ]
    links = subprocess.run(
        ["ip", "-o", "link", "show"], capture_output=True, text=True, timeout=10, check=False
    )
    for line in links.stdout.splitlines():
        name = line.split(":")[1].strip().split("@")[0]
        if name.startswith(VETH_PREFIX) and name in CREATED_NAMES:
            found.append(name)
    for pid in STARTED_PIDS:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, 0)
            status = Path(f"/proc/{pid}/stat").read_text().split()[2]
            if status != "Z":
                found.append(f"pid {pid}")
    return found


def own_leftovers() -> list[str]:
    """``leftovers()`` of this process only: box names start with its pid's tag.

    Other worktrees may run pod-in-a-box on the same host at the same time;
    their live boxes are not ours to count.
    """
    mine = f"{os.getpid() % 10000:04d}"
    return [
        item
        for item in leftovers()
        if item.startswith("pid ")
        or item.removeprefix(NETNS_PREFIX).removeprefix(VETH_PREFIX).startswith(mine)
    ]
