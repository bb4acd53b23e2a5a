"""Namespace reads no client can amplify, against a real ``serve`` and a slow API server.

The fake API server answers every namespace GET only after 2 s (as a loaded
API server did when the problem was found) and serves a watch. A flood of
80 kept-alive connections from 127.0.0.2 sends reviews naming random (or a
few repeated) namespaces, while genuine reviews arrive from 127.0.0.1 for
namespaces created a moment before, opted in. Before, every review naming an
unknown namespace sent a GET, and the genuine pods were refused 10 times out
of 10 ("64 other namespaces are being read"). Now an unknown namespace is
awaited on the live watch, a name read as missing is remembered, and reads
are bounded per client (``webhook.service.namespace_lookup``).
"""

from __future__ import annotations

import itertools
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from harness.fake_kube_api import FakeKubeAPI
from harness.server import Server, WebhookClient, running_server
from harness.tls_client import SERVICE_HOSTNAME, client_context, connect
from tests.builders import pod, review_bytes
from webhook.cluster.namespace_cache.options import ABSENT_SECONDS
from webhook.service.namespace_lookup import READS_PER_CLIENT

FLOODER = "127.0.0.2"
FLOOD_CONNECTIONS = 80
GET_SECONDS = 2.0
# kube-apiserver's deadline for one review in our install (timeoutSeconds: 5).
CLIENT_DEADLINE = 5.0
EVENTUALLY = 60.0
ENABLED = {"sidecar-injection": "enabled"}


def review(namespace: str, uid: str) -> bytes:
    return review_bytes(pod(None, image="nginx", generateName="web-"), namespace=namespace, uid=uid)


@pytest.fixture
def api(fake_api: FakeKubeAPI) -> FakeKubeAPI:
    fake_api.get_delay = GET_SECONDS
    return fake_api


@pytest.fixture
def server(tmp_path: Path, api: FakeKubeAPI) -> Iterator[Server]:
    config = api.write_kubeconfig(tmp_path / "kubeconfig")
    with running_server(tmp_path, args=["--kubeconfig", str(config)]) as running:
        yield running


class Flood:
    """``connections`` kept-alive connections from ``source``, each sending reviews back to back.

    Each review names ``names()``; ``answers`` counts how they were answered.
    """

    def __init__(
        self, server: Server, names: Callable[[], str], *, connections: int, source: str
    ) -> None:
        self.server = server
        self.names = names
        self.source = source
        self.answers: Counter[str] = Counter()
        self.started = self.stopped = 0.0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, name=f"flood-{i}", daemon=True)
            for i in range(connections)
        ]

    def __enter__(self) -> Flood:
        self.started = time.monotonic()
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(EVENTUALLY)
        self.stopped = time.monotonic()

    @property
    def total(self) -> int:
        with self._lock:
            return sum(self.answers.values())

    def _run(self) -> None:
        transport = httpx.HTTPTransport(
            verify=client_context(self.server.ca_file), local_address=self.source
        )
        with httpx.Client(base_url=self.server.url, transport=transport, timeout=30) as raw:
            client = WebhookClient(raw)
            for index in itertools.count():
                if self._stop.is_set():
                    return
                try:
                    response = client.post("/mutate", review(self.names(), f"flood-{index}"))
                    answer = response.json()["response"]
                    outcome = "allowed" if answer["allowed"] else str(answer["status"]["code"])
                except (httpx.HTTPError, ValueError, KeyError) as err:
                    outcome = type(err).__name__
                with self._lock:
                    self.answers[outcome] += 1


def genuine_review(server: Server, namespace: str) -> dict[str, Any]:
    """One review from 127.0.0.1 on a new TLS connection, within the client's deadline."""
    body = review(namespace, f"genuine-{namespace}")
    deadline = time.monotonic() + CLIENT_DEADLINE
    with connect(server.port, server.ca_file, timeout=CLIENT_DEADLINE) as sock:
        sock.sendall(
            (
                f"POST /mutate HTTP/1.1\r\nHost: {SERVICE_HOSTNAME}\r\nConnection: close\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
            ).encode()
            + body
        )
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
            sock.settimeout(max(0.01, deadline - time.monotonic()))
    head, _, payload = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), received
    answer: dict[str, Any] = orjson.loads(payload)["response"]
    return answer


def burst_starts(times: list[float]) -> list[float]:
    """When each burst of reads began: a read more than half a spell after a burst's start begins one."""
    starts: list[float] = []
    for at in sorted(times):
        if not starts or at - starts[-1] > ABSENT_SECONDS / 2:
            starts.append(at)
    return starts


def test_80_connections_naming_random_namespaces_neither_delay_nor_refuse_new_opted_in_ones(
    api: FakeKubeAPI, server: Server
) -> None:
    with Flood(
        server,
        lambda: f"random-{uuid.uuid4().hex[:12]}",
        connections=FLOOD_CONNECTIONS,
        source=FLOODER,
    ) as flood:
        # The flood is under way: its reads are at their bound, its other
        # reviews are refused.
        server.wait_for_metric(
            'sidecar_injector_namespace_reads_refused_total{reason="client_busy"}',
            lambda refused: refused >= FLOOD_CONNECTIONS,
            timeout=EVENTUALLY,
        )
        for index in range(10):
            name = f"team-{index}"
            api.add(name, ENABLED)  # created a moment before its first pod
            answer = genuine_review(server, name)
            assert answer["allowed"] is True, answer
            assert "patch" in answer, answer
    # The genuine namespaces came from the watch, never read.
    assert not [name for name in api.get_names if name.startswith("team-")]
    # The flood's reads: at most READS_PER_CLIENT at a time, each held for the
    # 2 s an answer takes (a read's wait ends at the fetch timeout, 2 s, just
    # as its GET does), so at most READS_PER_CLIENT every 2 s of flood.
    assert api.max_gets_at_once <= 2 * READS_PER_CLIENT
    flood_seconds = flood.stopped - flood.started
    bound = READS_PER_CLIENT * (flood_seconds / GET_SECONDS + 2)
    assert api.requests["get"] <= bound, (api.requests["get"], flood_seconds)
    assert flood.total > 5 * api.requests["get"], (flood.answers, api.requests["get"])


def test_names_read_as_missing_are_remembered_and_one_created_afterwards_is_injected(
    api: FakeKubeAPI, server: Server
) -> None:
    # Only a read answered within the injector's fetch timeout (2 s, as long
    # as the slow GETs above) can find a name missing; a GET that times out
    # says nothing about the name. So here the API server answers at once.
    api.get_delay = 0.0
    missing = [f"missing-{index}" for index in range(READS_PER_CLIENT)]
    cycle = itertools.cycle(missing)
    lock = threading.Lock()

    def next_name() -> str:
        with lock:
            return next(cycle)

    refused = 'sidecar_injector_namespace_reads_refused_total{reason="absent"}'
    with Flood(server, next_name, connections=FLOOD_CONNECTIONS, source=FLOODER):
        server.wait_for_metric(refused, lambda count: count >= FLOOD_CONNECTIONS)
        deadline = time.monotonic() + EVENTUALLY
        while api.gets_at_once or set(api.get_names) != set(missing):
            assert time.monotonic() < deadline, api.get_names
            time.sleep(0.05)
        # Every name has been read and found missing. The flood goes on naming
        # them, second after second: refused, and read again only once the
        # absence is forgotten. The reviews that passed the memory just before
        # a read found the name missing send a few more reads at once (a burst,
        # over within milliseconds); a new burst begins only after a whole
        # remembered spell. Without the memory the flood reads them over and
        # over, and nothing is refused as absent.
        before = server.metrics()[refused]
        server.wait_for_metric(refused, lambda count: count >= before + 2 * FLOOD_CONNECTIONS)
        for name in missing:
            starts = burst_starts([at for read, at in api.reads() if read == name])
            gaps = [later - earlier for earlier, later in itertools.pairwise(starts)]
            assert all(gap >= ABSENT_SECONDS for gap in gaps), (name, gaps)
        # Created now: the watch delivers it and forgets it was missing, so
        # its first pod is injected, not refused on the remembered absence.
        api.add(missing[0], ENABLED)
        answer = genuine_review(server, missing[0])
        assert answer["allowed"] is True, answer
        assert "patch" in answer, answer
