"""Hostile clients against a real ``serve`` process: the replica stays up, bounded and serving.

With ``failurePolicy: Fail`` a replica that is killed or stalled blocks pod
creation in every meshed namespace, so each bound is proven where it enters:
real TLS connections from threads that misbehave on purpose, memory read from
the server's own ``/proc/PID/status`` (VmHWM: the peak over the whole run),
counts read from ``/metrics``. Read deadlines are shortened with
``--read-timeout`` so the slow-client cases take seconds; every wait on the
server is a poll with a generous deadline, never a fixed sleep.
"""

from __future__ import annotations

import contextlib
import resource
import socket
import ssl
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import orjson
import pytest

from harness.server import Server, WebhookClient, running_server
from harness.tls_client import SERVICE_HOSTNAME, connect
from tests.builders import DEMO_NAMESPACES, review
from webhook.service.limits import Limits

MEMORY_BOUND_MIB = 400
READ_TIMEOUT = 2.0
# How long a test waits for the server to do something it must do within
# READ_TIMEOUT: generous, so a loaded machine is slow rather than failing.
EVENTUALLY = 60.0


def assert_admits(client: WebhookClient, uid: str) -> None:
    """One ordinary admission, answered in full with its patch."""
    response = client.post("/mutate", orjson.dumps(review(uid=uid)))
    assert response.status_code == 200, response.text
    answer = response.json()["response"]
    assert answer["uid"] == uid
    assert answer["allowed"] is True
    assert "patch" in answer


def head(path: str, length: int | None, content_type: str = "application/json") -> bytes:
    framing = f"Content-Length: {length}\r\n" if length is not None else ""
    return (
        f"POST {path} HTTP/1.1\r\nHost: {SERVICE_HOSTNAME}\r\n"
        f"Content-Type: {content_type}\r\n{framing}\r\n"
    ).encode()


def how_it_ended(sock: ssl.SSLSocket) -> str:
    """Wait for the server to end the connection; say how (a test deadline if it never does)."""
    sock.settimeout(EVENTUALLY)
    try:
        data = sock.recv(65536)
    except TimeoutError:
        return "still open"
    except (OSError, ssl.SSLError):
        return "closed by the server"
    if not data:
        return "closed by the server"
    return "answered " + data.split(b"\r\n", 1)[0].decode(errors="replace")


def stalled_upload(server: Server, declared: int, send: int) -> str:
    """Announce ``declared`` bytes, send ``send`` of them, then stop and wait."""
    with connect(server.port, server.ca_file, timeout=EVENTUALLY) as sock:
        piece = b" " * 65536
        try:
            sock.sendall(head("/mutate", declared))
            for _ in range(send // len(piece)):
                sock.sendall(piece)
        except (OSError, ssl.SSLError):
            return "closed while sending"
        return how_it_ended(sock)


def stalled_head(server: Server) -> str:
    """Stop half-way through the request's headers and wait."""
    with connect(server.port, server.ca_file, timeout=EVENTUALLY) as sock:
        sock.sendall(b"POST /mutate HTTP/1.1\r\nHost: x\r\nContent-Ty")
        return how_it_ended(sock)


def trickle(sock: ssl.SSLSocket, data: bytes, *, every: float = 0.1) -> str:
    """Send ``data`` a byte at a time, forever if need be, until the server cuts us off."""
    deadline = time.monotonic() + EVENTUALLY
    for index in range(10**9):
        if time.monotonic() > deadline:
            return "still open"
        try:
            sock.sendall(data[index % len(data) : index % len(data) + 1])
        except (OSError, ssl.SSLError):
            return "closed by the server"
        # A closed connection shows on the next send; a short poll for the
        # server's close keeps the loop honest when sends still succeed.
        sock.settimeout(every)
        try:
            if sock.recv(1) == b"":
                return "closed by the server"
        except TimeoutError:
            pass
        except (OSError, ssl.SSLError):
            return "closed by the server"
    return "still open"


def requests_by_outcome(server: Server, endpoint: str) -> Counter[str]:
    counts: Counter[str] = Counter()
    prefix = f'sidecar_injector_requests_total{{endpoint="{endpoint}",outcome="'
    for name, value in server.metrics().items():
        if name.startswith(prefix):
            counts[name.removeprefix(prefix).removesuffix('"}')] = int(value)
    return counts


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running_server(
        tmp_path_factory.mktemp("limits"),
        namespaces_yaml=DEMO_NAMESPACES,
        args=["--read-timeout", str(READ_TIMEOUT)],
    ) as running:
        yield running


@pytest.fixture(scope="module")
def client(server: Server) -> WebhookClient:
    return server.client()


# --- memory: stalled uploads ----------------------------------------------------------------


def test_70_stalled_7mb_uploads_and_20_stalled_heads_stay_under_400_mib_and_others_are_served(
    tmp_path: Path,
) -> None:
    """Stalled uploads and heads cost their reservation, never unbounded memory (docs/testing.md).

    Each upload announces 7 MB (under the 7 MiB cap) and sends 6.5 MB. The
    server reserves bodies against its budget, so most are refused at their
    headers (503) and the rest are dropped at the body deadline; the stalled
    heads are dropped at the header deadline. Meanwhile ordinary reviews
    are answered in full.
    """
    with running_server(
        tmp_path, namespaces_yaml=DEMO_NAMESPACES, args=["--read-timeout", "5"]
    ) as srv:
        client = srv.client()
        with ThreadPoolExecutor(max_workers=90) as pool:
            uploads = [pool.submit(stalled_upload, srv, 7_000_000, 6_500_000) for _ in range(70)]
            heads = [pool.submit(stalled_head, srv) for _ in range(20)]
            for number in range(10):
                assert_admits(client, f"during-{number}")
            upload_ends = Counter(future.result() for future in uploads)
            head_ends = Counter(future.result() for future in heads)

        assert set(upload_ends) <= {
            "answered HTTP/1.1 503 Service Unavailable",
            "closed by the server",
            "closed while sending",
        }, upload_ends
        assert head_ends == {"closed by the server": 20}
        assert srv.memory().peak_mib < MEMORY_BOUND_MIB
        assert_admits(client, "after")

        outcomes = requests_by_outcome(srv, "mutate")
        assert outcomes["busy"] >= 1  # 70 x 7 MB is far over the 64 MiB for large bodies
        assert outcomes["busy"] + outcomes["aborted"] == 70, outcomes
        assert outcomes["ok"] == 11
        assert set(outcomes) <= {"ok", "busy", "aborted"}
        timeouts = srv.metrics()
        assert timeouts['sidecar_injector_read_timeouts_total{phase="headers"}'] == 20
        assert timeouts['sidecar_injector_read_timeouts_total{phase="body"}'] == outcomes["aborted"]
        srv.wait_for_metric("sidecar_injector_request_body_bytes_held", lambda held: held == 0)
        assert "Traceback" not in srv.log()


def test_100_clients_announcing_1_mib_and_sending_nothing_block_no_admission(
    tmp_path: Path,
) -> None:
    """Announced bytes are not reserved: headers alone hold nothing of the body budget.

    Before, each announced Content-Length was reserved at once, and bodies up
    to 1 MiB could use the whole 96 MiB: 100 such heads made every real
    review a 503 until the body deadline dropped them, again and again.
    """
    with (
        running_server(tmp_path, namespaces_yaml=DEMO_NAMESPACES) as srv,
        contextlib.ExitStack() as stack,
    ):
        client = srv.client()
        socks = [
            stack.enter_context(connect(srv.port, srv.ca_file, timeout=EVENTUALLY))
            for _ in range(100)
        ]
        for sock in socks:
            sock.sendall(head("/mutate", 1024 * 1024))
        for number in range(5):
            assert_admits(client, f"while-heads-{number}")
        # A review over the large-body threshold is not blocked either.
        big = review(uid="while-heads-big")
        big["request"]["object"]["metadata"]["annotations"] = {"note": "x" * 200_000}
        response = client.post("/mutate", orjson.dumps(big))
        assert response.status_code == 200, response.text[:300]
        assert "patch" in response.json()["response"]
        # They were still waiting for their bodies all along: none has timed out yet,
        # and all 100 do later (the server had their heads).
        body_timeouts = 'sidecar_injector_read_timeouts_total{phase="body"}'
        assert srv.metrics().get(body_timeouts, 0) == 0
        assert srv.metrics()["sidecar_injector_request_body_bytes_held"] == 0
        srv.wait_for_metric(body_timeouts, lambda count: count == 100, timeout=EVENTUALLY)
        assert {how_it_ended(sock) for sock in socks} == {"closed by the server"}
        srv.wait_for_metric(
            'sidecar_injector_requests_total{endpoint="mutate",outcome="aborted"}',
            lambda count: count == 100,
        )
        assert requests_by_outcome(srv, "mutate") == Counter(ok=6, aborted=100)
        assert srv.memory().peak_mib < MEMORY_BOUND_MIB


def test_a_flood_of_connections_that_never_handshake_stays_bounded_and_then_clears(
    server: Server, client: WebhookClient
) -> None:
    """Each TLS connection costs memory before its first byte; their number is capped."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = min(hard, 4096)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, wanted), hard))
    try:
        flood: list[socket.socket] = []
        with contextlib.ExitStack() as stack:
            for index in range(min(1500, wanted - 200)):
                # From several addresses, each under the per-client cap, so the
                # flood meets the descriptor limit and the handshake deadline
                # (the cap itself has tests of its own). Past the descriptor
                # limit the server stops accepting for a moment; a connection
                # reset as it is accepted can land before connect returns.
                source = (f"127.0.0.{2 + index // 200}", 0)
                try:
                    sock = socket.create_connection(
                        ("127.0.0.1", server.port), timeout=EVENTUALLY, source_address=source
                    )
                except ConnectionResetError:
                    continue
                flood.append(stack.enter_context(sock))
            # The server drops them at the handshake deadline; wait until it has.
            deadline = time.monotonic() + EVENTUALLY
            for sock in flood:
                sock.settimeout(max(0.1, deadline - time.monotonic()))
                with contextlib.suppress(OSError):
                    assert sock.recv(1) == b""
        assert server.memory().peak_mib < MEMORY_BOUND_MIB
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    deadline = time.monotonic() + EVENTUALLY
    while True:
        try:
            assert_admits(client, "after-flood")
            break
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


# --- time: read deadlines -------------------------------------------------------------------


def test_a_client_that_stops_mid_headers_is_dropped_after_the_read_timeout(
    server: Server,
) -> None:
    before = server.metrics().get('sidecar_injector_read_timeouts_total{phase="headers"}', 0)
    with ThreadPoolExecutor(max_workers=20) as pool:
        ends = Counter(pool.map(lambda _: stalled_head(server), range(20)))
    assert ends == {"closed by the server": 20}
    after = server.metrics()['sidecar_injector_read_timeouts_total{phase="headers"}']
    assert after - before == 20


def test_a_deadline_not_an_idle_timeout_headers_trickled_a_byte_at_a_time_are_cut_off(
    server: Server,
) -> None:
    with connect(server.port, server.ca_file, timeout=EVENTUALLY) as sock:
        ended = trickle(sock, b"POST /mutate HTTP/1.1\r\nX-Padding: " + b"a" * 10_000)
    assert ended == "closed by the server"


def test_a_body_trickled_a_byte_at_a_time_is_cut_off_and_counted_as_aborted(
    server: Server,
) -> None:
    before = requests_by_outcome(server, "mutate")["aborted"]
    with connect(server.port, server.ca_file, timeout=EVENTUALLY) as sock:
        sock.sendall(head("/mutate", 100_000))
        ended = trickle(sock, b" ")
    assert ended == "closed by the server"
    server.wait_for_metric(
        'sidecar_injector_requests_total{endpoint="mutate",outcome="aborted"}',
        lambda count: count == before + 1,
    )


def test_a_client_that_hangs_up_mid_body_is_aborted_logged_at_info_and_not_an_error(
    server: Server, client: WebhookClient
) -> None:
    before = requests_by_outcome(server, "mutate")
    body = orjson.dumps(review(uid="hang-up"))
    with connect(server.port, server.ca_file, timeout=EVENTUALLY) as sock:
        sock.sendall(head("/mutate", len(body)) + body[: len(body) // 2])
        # The server must have the request in hand before we hang up, or
        # this would test a connection closed before any request.
        server.wait_for_metric("sidecar_injector_request_body_bytes_held", lambda held: held > 0)
    server.wait_for_metric(
        'sidecar_injector_requests_total{endpoint="mutate",outcome="aborted"}',
        lambda count: count == before["aborted"] + 1,
    )
    line = orjson.loads(server.wait_for_log("connection closed before the request was complete"))
    assert line["level"] == "info"
    assert line["endpoint"] == "mutate"
    assert 0 < line["received_bytes"] < len(body)
    assert requests_by_outcome(server, "mutate")["error"] == 0
    assert "Traceback" not in server.log()
    assert_admits(client, "after-hang-up")


def exchange(sock: ssl.SSLSocket, body: bytes) -> int:
    """One POST /mutate on a kept-alive raw connection; the response's status."""
    sock.sendall(head("/mutate", len(body)) + body)
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    header, _, rest = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in header.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(rest) < length:
        rest += sock.recv(65536)
    return int(header.split(b" ", 2)[1])


def test_idle_time_between_requests_is_not_held_against_the_next_request(
    server: Server,
) -> None:
    """After a response, keep-alive (120 s) governs the idle connection, not the read deadline.

    Instead of sleeping, a canary connection that stalls mid-headers is
    opened after the first response and waited out: had the idle connection
    been on a deadline, it would have been dropped before the canary was.
    """
    timeouts = 'sidecar_injector_read_timeouts_total{phase="headers"}'
    with connect(server.port, server.ca_file, timeout=EVENTUALLY) as kept:
        assert exchange(kept, orjson.dumps(review(uid="first"))) == 200
        before = server.metrics().get(timeouts, 0)
        assert stalled_head(server) == "closed by the server"
        assert exchange(kept, orjson.dumps(review(uid="second"))) == 200
    assert server.metrics()[timeouts] == before + 1


# --- shape of the request -------------------------------------------------------------------


def test_request_headers_over_16_kib_are_a_431_and_the_connection_closes(
    server: Server, client: WebhookClient
) -> None:
    with connect(server.port, server.ca_file, timeout=EVENTUALLY) as sock:
        sock.sendall(b"POST /mutate HTTP/1.1\r\nHost: x\r\nX-Padding: " + b"a" * 20_000)
        assert how_it_ended(sock) == "answered HTTP/1.1 431 Request Header Fields Too Large"
    assert_admits(client, "after-big-head")


def test_a_uid_over_256_bytes_is_a_400_that_neither_echoes_nor_logs_it(
    server: Server, client: WebhookClient
) -> None:
    uid = "u" * 200 + "X" * 57  # 257 bytes
    response = client.post("/mutate", orjson.dumps(review(uid=uid)))
    assert response.status_code == 400
    assert response.json() == {"error": "request.uid is longer than 256 bytes"}
    assert "X" * 57 not in server.log()
    exactly = "u" * 256
    assert client.post("/mutate", orjson.dumps(review(uid=exactly))).status_code == 200


@pytest.mark.parametrize(
    "namespace",
    [
        pytest.param("demo\r\nX-Injected: yes", id="CR LF"),
        pytest.param("Demo", id="upper case"),
        pytest.param("a" * 64, id="64 characters"),
        pytest.param("-demo", id="leading dash"),
        pytest.param("../demo", id="path"),
        pytest.param("démo", id="not ASCII"),
    ],
)
def test_a_malformed_namespace_is_a_400_on_preview_and_mutate(
    client: WebhookClient, namespace: str
) -> None:
    pod = orjson.dumps(review()["request"]["object"])
    previewed = client.post("/preview", pod, params={"namespace": namespace})
    assert previewed.status_code == 400
    assert "is not a valid namespace name" in previewed.json()["error"]
    assert "\r" not in previewed.text
    mutated = client.post("/mutate", orjson.dumps(review(namespace=namespace)))
    assert mutated.status_code == 400
    assert mutated.json() == {"error": "the pod's namespace is not a valid namespace name"}


def test_a_review_of_7_mib_of_empty_lists_is_refused_before_it_is_parsed(
    server: Server, client: WebhookClient
) -> None:
    """Parsed, this body would be far bigger as list objects and hold the event loop (docs/testing.md)."""
    body = b'{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":' + b"[[]"
    body += b",[]" * ((7 * 1024 * 1024 - len(body) - 10) // 3) + b"]}"
    response = client.post("/mutate", body)
    assert response.status_code == 400
    assert response.json() == {"error": "request body holds more than 131072 JSON values"}
    assert server.memory().peak_mib < MEMORY_BOUND_MIB
    assert_admits(client, "after-lists")


# --- /preview -------------------------------------------------------------------------------

POD_YAML = (
    "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web-{i}\nspec:\n"
    "  containers:\n  - name: app\n    image: nginx:1.27\n"
)
BIG_PREVIEWS = {
    "5 MB of pods": lambda: "".join("---\n" + POD_YAML.format(i=i) for i in range(55_000)),
    "5 MB of block list": lambda: POD_YAML.format(i=0) + "    args:\n" + "    - a\n" * 620_000,
    "5 MB of flow list": lambda: POD_YAML.format(i=0) + "    args: [" + "a," * 2_500_000 + "a]\n",
    "7 MiB of one string": lambda: POD_YAML.format(i=0) + "    args: [" + "a" * 7_000_000 + "]\n",
}


@pytest.mark.parametrize("shape", sorted(BIG_PREVIEWS))
def test_a_big_yaml_preview_is_answered_within_the_memory_bound(
    server: Server, client: WebhookClient, shape: str
) -> None:
    """Big YAML previews stay within the memory bound (what they cost unbounded: docs/testing.md)."""
    body = BIG_PREVIEWS[shape]().encode()
    response = client.post(
        "/preview", body, content_type="application/yaml", params={"namespace": "demo"}
    )
    if shape == "7 MiB of one string":  # few values: parsed, injected and answered
        assert response.status_code == 200, response.text[:300]
        assert response.json()["injected"] is True
    else:
        assert response.status_code == 400
        assert response.json() == {"error": "request body: more than 32768 values"}
    assert server.memory().peak_mib < MEMORY_BOUND_MIB
    assert_admits(client, f"after-{shape}")


def test_previews_at_the_value_bound_run_one_at_a_time_and_every_one_is_answered(
    server: Server, client: WebhookClient
) -> None:
    env = "".join(f"    - name: V{i}\n      value: x\n" for i in range(6_000))
    body = (POD_YAML.format(i=0) + "    env:\n" + env).encode()  # ~30,000 values

    def one(_: int) -> int:
        own = server.client()
        response = own.post(
            "/preview",
            body,
            content_type="application/yaml",
            params={"namespace": "demo", "output": "diff"},
        )
        assert response.status_code in (200, 503), response.text[:300]
        return response.status_code

    with ThreadPoolExecutor(max_workers=6) as pool:
        statuses = Counter(pool.map(one, range(6)))
    assert statuses[200] >= 1
    assert server.memory().peak_mib < MEMORY_BOUND_MIB
    assert_admits(client, "after-previews")


def many_pods(count: int) -> bytes:
    """A List of ``count`` minimal pods: the most output per byte of input a preview can get."""
    items = [
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": f"p{i}"},
            "spec": {"containers": [{"name": "a"}]},
        }
        for i in range(count)
    ]
    return orjson.dumps({"apiVersion": "v1", "kind": "List", "items": items})


# The longest settings a namespace may carry (webhook.engine.values: 128 items per
# list), so that every pod's init container and settings are as long as they get.
LONGEST_SETTINGS = {
    "sidecar.mesh.io/exclude-outbound-ports": ",".join(str(p) for p in range(10_000, 10_128)),
    "sidecar.mesh.io/exclude-inbound-ports": ",".join(str(p) for p in range(20_000, 20_128)),
    "sidecar.mesh.io/exclude-outbound-cidrs": ",".join(f"2001:db8:{i:x}::/48" for i in range(128)),
    "sidecar.mesh.io/include-outbound-cidrs": ",".join(f"10.{i}.0.0/16" for i in range(128)),
}
MAX_PREVIEW_OBJECTS = Limits().max_preview_objects


@pytest.mark.parametrize("output", ["json", "yaml", "patch", "diff"])
def test_a_preview_of_as_many_pods_as_allowed_with_the_longest_settings_stays_a_few_mib(
    server: Server, client: WebhookClient, output: str
) -> None:
    """Minimal pods within the input caps once made an answer far over them (docs/testing.md).

    The input was within its caps, the output was not: each pod gains a
    sidecar. The cap on objects bounds the answer to a few MiB.
    """
    annotations = [f"{key}={value}" for key, value in LONGEST_SETTINGS.items()]
    response = client.post(
        "/preview",
        many_pods(MAX_PREVIEW_OBJECTS),
        params={"namespace": "demo", "output": output, "annotation": annotations},
    )
    assert response.status_code == 200, response.text[:300]
    assert len(response.content) < 5 * 1024 * 1024
    if output == "json":
        summaries = response.json()
        assert len(summaries) == MAX_PREVIEW_OBJECTS
        assert all(summary["injected"] for summary in summaries)
    elif output == "patch":
        patches = response.json()
        assert len(patches) == MAX_PREVIEW_OBJECTS
        assert all(item["patch"] for item in patches)
    else:
        assert response.text.count("name: mesh-proxy") == MAX_PREVIEW_OBJECTS
    assert server.memory().peak_mib < MEMORY_BOUND_MIB
    assert_admits(client, f"after-{output}-preview")


def test_a_preview_of_one_object_more_than_allowed_is_a_400_naming_the_limit_and_the_cli(
    client: WebhookClient,
) -> None:
    response = client.post(
        "/preview", many_pods(MAX_PREVIEW_OBJECTS + 1), params={"namespace": "demo"}
    )
    assert response.status_code == 400
    assert response.json() == {
        "error": f"request body holds {MAX_PREVIEW_OBJECTS + 1} objects; a preview takes "
        f"at most {MAX_PREVIEW_OBJECTS} (inject more with: sidecar-injector inject -f FILE)"
    }
