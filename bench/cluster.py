"""Pod creation end to end: what the mesh costs kube-apiserver, etcd and the webhook.

Built from the e2e parts: the control plane of ``harness/kube/control_plane.py`` (real
etcd and kube-apiserver), the real install rendered from ``manifests/`` and
applied as ``make deploy`` would (``harness/kube/install.py``), and the
webhook as a local ``sidecar-injector serve`` (with the install's config and
a watch on this apiserver) reached through the install's Service.

Eight clients (asyncio, one kept-alive TLS connection each, as the admin)
create ``Plan.pods`` pods per case and round, cases alternated round by round
(the order rotates, so none always runs first):

- ``plain``: a one-container pod in a namespace that is not opted in: the
  webhook is not called;
- ``direct``: the same pod as the webhook injects it, created directly in
  that namespace: no webhook call, but the apiserver and etcd store what a
  meshed pod is (the fair baseline for the next case);
- ``meshed``: the plain pod in an opted-in namespace: one webhook call each;
- ``policy``: the plain pod in an opted-in namespace where policy mode's
  admission policies inject (``bench.cluster_policy``): no webhook call;
- ``direct-all``, ``meshed-all``, ``policy-all``: the same three with a
  namespace that sets every setting key (current tree only).

For each case: pods/s, CPU per pod of kube-apiserver, etcd and the webhook
(``utime + stime`` from ``/proc``, also the load client's own; their sum is
the cluster's CPU per pod, compared across modes in ``cpu_ratios``), and for
``meshed`` the apiserver's own histogram of webhook calls
(``apiserver_admission_webhook_admission_duration_seconds``: mean from the
sum and count, p50 interpolated within its buckets). All pods are deleted
between cases, outside the measured windows.

With a "before" tree (``bench.before``) its ``serve`` takes turns with the
current one behind the Service (``direct`` then stores *its* injected pod),
so BENCHMARKS.md shows both from the same run.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import os
import random
import shutil
import signal
import ssl
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import jsonpatch
import orjson

from bench import cluster_policy, workload
from bench.cluster_load import ClusterBenchError, measure
from bench.service import cpu_seconds
from harness.kube.binaries import ControlPlaneError, build_binaries, cached_bin_dir
from harness.kube.control_plane import ControlPlane
from harness.kube.install import (
    NAMESPACE,
    SERVICE,
    make_certs,
    render_install,
    service_port_name,
)
from harness.metrics import families
from harness.server import free_port, parse_metrics, wait_ready
from harness.tls_client import https_get

ROOT = Path(__file__).resolve().parent.parent
# The variant served from this tree (the other, with --before, is "before").
CURRENT_VARIANT = "after"
PLAIN_NS: Final = "bench-plain"
MESHED_NS: Final = "bench-meshed"
MESHED_ALL_NS: Final = "bench-meshed-all"  # every setting key set (cluster_policy.EVERY_KEY)
HISTOGRAM: Final = "apiserver_admission_webhook_admission_duration_seconds"
WEBHOOKS: Final = ("namespace.sidecar.mesh.io", "object.sidecar.mesh.io")


class ClusterUnavailable(Exception):
    """The control plane could not be built or started; the message is the reason."""


@dataclass(frozen=True, slots=True)
class Plan:
    """Pods per case and round, concurrent clients, rounds (after one unmeasured warm-up);
    ``settle``: wait for the control plane to go quiet before each case (off only
    where the figures mean nothing, as in ``--quick``)."""

    pods: int = 300
    clients: int = 8
    rounds: int = 5
    settle: bool = True


def unavailable_reason() -> str | None:
    """Why the control plane cannot be had here, else None."""
    if shutil.which("kubectl") is None:
        return "kubectl is not on PATH"
    if cached_bin_dir() is None and shutil.which("go") is None:
        return (
            "kube-apiserver is built from source and neither a cached build nor 'go' is "
            "available (run `make control-plane` where Go is)"
        )
    return None


# --- processes ------------------------------------------------------------------------


@dataclass
class Webhook:
    """A ``serve`` process of one tree (current or before) with the install's certificates."""

    name: str
    cli: Path
    config: Path
    certs: Path
    kubeconfig: Path
    log: Path
    port: int = 0
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def start(self) -> None:
        """Start and wait for ``/readyz`` (namespace watch synced)."""
        self.port = free_port()
        argv = [str(self.cli), "serve", "--port", str(self.port), "--cert-dir", str(self.certs)]
        argv += ["--config", str(self.config), "--kubeconfig", str(self.kubeconfig)]
        env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
        with self.log.open("wb") as sink:
            self.process = subprocess.Popen(
                argv, stdout=sink, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        try:
            wait_ready(self.port, self.certs / "ca.crt", self.process, time.monotonic() + 120)
        except RuntimeError as err:
            raise ClusterBenchError(f"{self.name}: {err}: {self.log.read_text()[-2000:]}") from None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def mutate_calls(self) -> float:
        """``/mutate`` requests answered so far, from its ``/metrics``."""
        status, body, _ = https_get(self.port, self.certs / "ca.crt", "/metrics", timeout=30)
        if status != 200:
            raise ClusterBenchError(f"{self.name}: /metrics answered {status}")
        return sum(
            value
            for key, value in parse_metrics(body.decode()).items()
            if key.startswith("sidecar_injector_requests_total{") and 'endpoint="mutate"' in key
        )

    def injected(self, pod: dict[str, Any], namespace: str) -> dict[str, Any]:
        """``pod`` as this webhook injects it (its own patch, applied here)."""
        review = orjson.dumps(
            {
                "apiVersion": "admission.k8s.io/v1",
                "kind": "AdmissionReview",
                "request": {
                    "uid": "bench-direct",
                    "kind": {"group": "", "version": "v1", "kind": "Pod"},
                    "resource": {"group": "", "version": "v1", "resource": "pods"},
                    "namespace": namespace,
                    "operation": "CREATE",
                    "object": pod,
                },
            }
        )
        context = ssl.create_default_context(cafile=str(self.certs / "ca.crt"))
        conn = http.client.HTTPSConnection("127.0.0.1", self.port, context=context, timeout=30)
        try:
            conn.request("POST", "/mutate", review, {"Content-Type": "application/json"})
            answer = orjson.loads(conn.getresponse().read())["response"]
        finally:
            conn.close()
        if "patch" not in answer:
            raise ClusterBenchError(f"{self.name} did not inject the benchmark pod: {answer}")
        patch = orjson.loads(base64.b64decode(answer["patch"]))
        injected: dict[str, Any] = jsonpatch.apply_patch(pod, patch)
        return injected

    def stop(self) -> None:
        """SIGTERM (it drains), SIGKILL if it lingers."""
        if self.process is None or self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


# --- the API server -------------------------------------------------------------------


class Api:
    """Plain HTTPS calls to kube-apiserver as the admin (client certificate)."""

    def __init__(self, control_plane: ControlPlane) -> None:
        work = control_plane.workdir
        self.context = ssl.create_default_context(cafile=str(control_plane.ca_file))
        self.context.load_cert_chain(work / "admin.crt", work / "admin.key")
        self.port = int(control_plane.server.rsplit(":", 1)[1])

    def call(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        """One request on a fresh connection: (status, body)."""
        conn = http.client.HTTPSConnection(
            "127.0.0.1", self.port, context=self.context, timeout=120
        )
        try:
            headers = {"Content-Type": "application/json", "Accept": "application/json"}
            conn.request(method, path, body, headers)
            reply = conn.getresponse()
            return reply.status, reply.read()
        finally:
            conn.close()

    def histogram(self) -> dict[str, Any]:
        """Our webhooks' admission-duration histogram, summed over its label sets."""
        status, body = self.call("GET", "/metrics")
        if status != 200:
            raise ClusterBenchError(f"apiserver /metrics answered {status}")
        buckets: dict[float, float] = {}
        total = count = 0.0
        for family in families(body.decode(), [HISTOGRAM]):
            for sample in family.samples:
                labels = sample.labels
                if labels.get("name") not in WEBHOOKS or labels.get("type") != "admit":
                    continue
                if sample.name.endswith("_bucket"):
                    bound = float(labels["le"])
                    buckets[bound] = buckets.get(bound, 0.0) + sample.value
                elif sample.name.endswith("_sum"):
                    total += sample.value
                elif sample.name.endswith("_count"):
                    count += sample.value
        return {"buckets": buckets, "sum": total, "count": count}

    def empty(self, namespace: str) -> None:
        """Delete every pod of ``namespace`` (one deletecollection) and wait until none is left."""
        status, body = self.call("DELETE", f"/api/v1/namespaces/{namespace}/pods")
        if status != 200:
            raise ClusterBenchError(f"deleting pods in {namespace}: {status} {body[:300]!r}")
        deadline = time.monotonic() + 300
        while True:
            _, listed = self.call("GET", f"/api/v1/namespaces/{namespace}/pods?limit=1")
            if not orjson.loads(listed)["items"]:
                return
            if time.monotonic() > deadline:
                raise ClusterBenchError(f"pods of {namespace} still there after 300 s")
            time.sleep(0.2)


def histogram_delta(before: dict[str, Any], after: dict[str, Any]) -> dict[str, float]:
    """Calls, mean and interpolated p50 (ms) between two scrapes of :meth:`Api.histogram`."""
    count = after["count"] - before["count"]
    if count <= 0:
        nan = float("nan")
        return {"calls": 0.0, "mean_ms": nan, "p50_ms": nan, "first_ms": nan, "in_first": 0.0}
    mean = (after["sum"] - before["sum"]) / count * 1000
    bounds = sorted(after["buckets"])
    cumulative = [after["buckets"][b] - before["buckets"].get(b, 0.0) for b in bounds]
    p50, lower, below = float("nan"), 0.0, 0.0
    for bound, upto in zip(bounds, cumulative, strict=True):
        if upto >= count / 2:
            # Linear within the bucket: all the histogram can say.
            share = (count / 2 - below) / (upto - below) if upto > below else 1.0
            p50 = (
                (lower + (bound - lower) * share) * 1000 if bound != float("inf") else lower * 1000
            )
            break
        lower, below = bound, upto
    return {
        "calls": count,
        "mean_ms": mean,
        "p50_ms": p50,
        "first_ms": bounds[0] * 1000,  # the finest the histogram can tell
        "in_first": cumulative[0] / count,
    }


# --- the run ----------------------------------------------------------------------------

# Before a burst: until kube-apiserver and etcd together use less than this
# share of one core over SETTLE_WINDOW (deleting the last case's pods leaves
# them busy for a while), at most SETTLE_MAX seconds.
SETTLE_SHARE: Final = 0.15
SETTLE_WINDOW: Final = 0.5
SETTLE_MAX: Final = 20.0


def _settle(processes: dict[str, int]) -> None:
    pids = [processes["kube-apiserver"], processes["etcd"]]
    deadline = time.monotonic() + SETTLE_MAX
    while time.monotonic() < deadline:
        before = sum(cpu_seconds(pid) for pid in pids)
        time.sleep(SETTLE_WINDOW)
        if sum(cpu_seconds(pid) for pid in pids) - before < SETTLE_SHARE * SETTLE_WINDOW:
            return


@dataclass(frozen=True, slots=True)
class Variant:
    """A tree whose ``serve`` is measured: its console script and injector config."""

    name: str
    cli: Path
    config: Path


def _switch(control_plane: ControlPlane, api: Api, webhook: Webhook, port_name: str) -> None:
    """Point the Service at ``webhook`` and create pods until the apiserver calls it."""
    control_plane.route_service_to_loopback(
        NAMESPACE, SERVICE, port=webhook.port, port_name=port_name
    )
    calls = webhook.mutate_calls()
    body = orjson.dumps(workload.one_container_pod(name_prefix="canary-"))
    deadline = time.monotonic() + 120
    while webhook.mutate_calls() <= calls:
        if time.monotonic() > deadline:
            raise ClusterBenchError(
                f"the apiserver never called {webhook.name} through the Service"
            )
        api.call("POST", f"/api/v1/namespaces/{MESHED_NS}/pods", body)
        time.sleep(0.2)


class _Session:
    """One run on one control plane: the install, the webhooks, the cases."""

    def __init__(self, control_plane: ControlPlane, work: Path, plan: Plan) -> None:
        self.control_plane = control_plane
        self.work = work
        self.plan = plan
        self.api = Api(control_plane)
        self.port_name = ""
        self.webhooks: dict[str, Webhook] = {}
        self.plain = workload.one_container_pod()
        self.direct: dict[str, dict[str, Any]] = {}
        self.direct_all: dict[str, dict[str, Any]] = {}
        self.routed: str | None = None

    def install(self, variants: Sequence[Variant], stack: contextlib.ExitStack) -> None:
        """The rendered install applied, two namespaces, one ``serve`` per variant."""
        control_plane, work = self.control_plane, self.work
        certs = make_certs(work / "certs")
        objects = render_install(certs, work / "install.yaml", kubectl=control_plane.kubectl_binary)
        self.port_name = service_port_name(objects)
        control_plane.kubectl("apply", "-f", str(work / "install.yaml"))
        control_plane.create_namespace(PLAIN_NS)
        control_plane.create_namespace(MESHED_NS, labels={"sidecar-injection": "enabled"})
        cluster_policy.every_key_namespace(control_plane, MESHED_ALL_NS)
        for variant in variants:
            webhook = Webhook(
                variant.name,
                variant.cli,
                variant.config,
                certs,
                control_plane.kubeconfig,
                work / f"serve-{variant.name}.log",
            )
            stack.callback(webhook.stop)
            webhook.start()
            self.webhooks[variant.name] = webhook
            self.direct[variant.name] = webhook.injected(self.plain, MESHED_NS)
            self.direct_all[variant.name] = webhook.injected(self.plain, MESHED_ALL_NS)
        cluster_policy.install(control_plane, self.api, variants[0].config)

    def cases(self) -> list[tuple[str, str | None]]:
        """(case, variant) pairs: plain and policy mode once, direct and meshed per variant,
        and with every setting key set for the current tree (the first variant)."""
        found: list[tuple[str, str | None]] = [("plain", None), ("policy", None)]
        found.append(("policy-all", None))
        for index, name in enumerate(self.webhooks):
            found += [("direct", name), ("meshed", name)]
            if index == 0:
                found += [("direct-all", name), ("meshed-all", name)]
        return found

    def case(self, case: str, variant: str | None) -> dict[str, Any]:
        """Measure one case, check what was stored and how often the webhook was called."""
        pids = self.control_plane.pids()
        processes = {"kube-apiserver": pids["kube-apiserver"], "etcd": pids["etcd"]}
        namespace, pod = PLAIN_NS, self.plain
        if case in ("policy", "policy-all"):
            namespace = (
                cluster_policy.POLICY_NS if case == "policy" else cluster_policy.POLICY_ALL_NS
            )
        if variant is not None:
            processes["webhook"] = self.webhooks[variant].pid
            if case in ("direct", "direct-all"):
                pod = (self.direct if case == "direct" else self.direct_all)[variant]
            else:
                namespace = MESHED_NS if case == "meshed" else MESHED_ALL_NS
                if self.routed != variant:
                    _switch(self.control_plane, self.api, self.webhooks[variant], self.port_name)
                    self.routed = variant
                    self.api.empty(MESHED_NS)
                    self.api.empty(MESHED_ALL_NS)
        if self.plan.settle:
            _settle(processes)
        scraped = self.api.histogram()
        result = measure(self.api, namespace=namespace, pod=pod, plan=self.plan, pods=processes)
        result["webhook_calls"] = histogram_delta(scraped, self.api.histogram())
        self.api.empty(namespace)
        pods = self.plan.pods
        if result["injected"] != (pods if case != "plain" else 0):
            raise ClusterBenchError(
                f"{case} {variant}: {result['injected']} of {pods} stored pods carry mesh-proxy"
            )
        # Every meshed pod is reviewed at least once (once with the install's
        # reinvocationPolicy Never; twice under IfNeeded, the ServiceAccount
        # plugin's token mount bringing it back); no other pod at all.
        calls = result["webhook_calls"]["calls"]
        if (calls < pods) if case in ("meshed", "meshed-all") else calls:
            raise ClusterBenchError(
                f"{case} {variant}: the apiserver called the webhook {calls} times"
            )
        return result


def run(work: Path, plan: Plan, *, variants: Sequence[Variant]) -> dict[str, Any]:
    """Start the control plane, install, measure; returns plain data for the report.

    Raises :class:`ClusterUnavailable` when the control plane cannot be built
    or started (the caller reports the section as skipped with that reason);
    anything going wrong after that is a failure.
    """
    work.mkdir(parents=True, exist_ok=True)
    try:
        control_plane = ControlPlane(bin_dir=build_binaries()).start()
    except ControlPlaneError as err:
        raise ClusterUnavailable(str(err).splitlines()[0]) from err
    with control_plane, contextlib.ExitStack() as stack:
        session = _Session(control_plane, work, plan)
        session.install(variants, stack)
        cases = session.cases()
        rounds: list[dict[str, Any]] = []
        for index in range(plan.rounds + 1):  # round 0 warms up, unrecorded
            # A new order every round (seeded, so runs repeat): no case always
            # comes first, or always follows the same one.
            order = list(cases)
            random.Random(index).shuffle(order)
            found = {
                case if variant is None else f"{case}:{variant}": session.case(case, variant)
                for case, variant in order
            }
            if index:
                rounds.append(found)
    return {
        "plan": {"pods": plan.pods, "clients": plan.clients, "rounds": plan.rounds},
        "variants": [v.name for v in variants],
        "rounds": rounds,
        "summary": summarize(rounds),
    }


def summarize(rounds: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Medians over rounds per case, and per-round ratios' medians."""
    keys = list(rounds[0])
    summary: dict[str, Any] = {"cases": {}, "ratios": {}}
    for key in keys:
        rows = [r[key] for r in rounds]
        cpu = {
            name: statistics.median(row["cpu_ms_per_pod"][name] for row in rows)
            for name in rows[0]["cpu_ms_per_pod"]
        }
        calls = [row["webhook_calls"] for row in rows if row["webhook_calls"]["calls"]]
        summary["cases"][key] = {
            "pods_per_s": statistics.median(row["pods_per_s"] for row in rows),
            "create_p50_ms": statistics.median(row["create_p50_ms"] for row in rows),
            "create_p99_ms": statistics.median(row["create_p99_ms"] for row in rows),
            "stored_bytes": statistics.median(row["stored_bytes"] for row in rows),
            "cpu_ms_per_pod": cpu,
            "webhook_calls_per_pod": (
                statistics.median(row["webhook_calls"]["calls"] / row["pods"] for row in rows)
            ),
            "webhook_mean_ms": statistics.median(c["mean_ms"] for c in calls) if calls else None,
            "webhook_p50_ms": statistics.median(c["p50_ms"] for c in calls) if calls else None,
            "webhook_in_first": statistics.median(c["in_first"] for c in calls) if calls else None,
            "webhook_first_ms": calls[0]["first_ms"] if calls else None,
        }
    for key in keys:
        case, _, variant = key.partition(":")
        for base in ("plain", f"direct:{variant}"):
            if case == "meshed" or (case == "direct" and base == "plain"):
                summary["ratios"][f"{key} / {base}"] = statistics.median(
                    r[key]["pods_per_s"] / r[base]["pods_per_s"] for r in rounds
                )
    # Policy mode against this tree's webhook and direct creation, whichever
    # variant the rounds list first.
    now = CURRENT_VARIANT
    pairs = [
        ("policy", f"direct:{now}"),
        (f"meshed:{now}", f"direct:{now}"),
        ("policy", f"meshed:{now}"),
        ("policy-all", f"direct-all:{now}"),
        (f"meshed-all:{now}", f"direct-all:{now}"),
        ("policy-all", f"meshed-all:{now}"),
    ]
    summary["cpu_ratios"] = {}
    for key, base in pairs:
        if key in keys and base in keys:
            summary["ratios"][f"{key} / {base}"] = statistics.median(
                r[key]["pods_per_s"] / r[base]["pods_per_s"] for r in rounds
            )
            summary["cpu_ratios"][f"{key} / {base}"] = statistics.median(
                cluster_policy.cluster_cpu(r[key]) / cluster_policy.cluster_cpu(r[base])
                for r in rounds
            )
    for key in keys:
        summary["cases"][key]["cluster_cpu_ms_per_pod"] = statistics.median(
            cluster_policy.cluster_cpu(r[key]) for r in rounds
        )
    return summary


def variants_for(before_cli: Path | None, before_config: Path | None) -> list[Variant]:
    """The current tree, and the "before" one when given."""
    config = ROOT / "manifests" / "base" / "injector-config.yaml"
    found = [Variant(CURRENT_VARIANT, Path(sys.executable).parent / "sidecar-injector", config)]
    if before_cli is not None and before_config is not None:
        found.append(Variant("before", before_cli, before_config))
    return found
