"""Hostile settings where they enter: a real ``serve`` over TLS, and the real CLI.

``test_settings.py`` proves each refusal on the resolver in-process; this
file proves the same inputs get the same one-line answer at both edges users
reach: a 400 with the message from ``/mutate`` and ``/preview`` (never a 500),
and exit 1 with one line on stderr from ``inject`` (never a traceback). The
server then still admits an ordinary pod.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from harness.server import Server, WebhookClient, running_server
from tests.builders import DEMO_NAMESPACES, pod, review_bytes

CLI = str(Path(sys.executable).parent / "sidecar-injector")
INJECT = [CLI, "inject", "-f", "-", "--label", "sidecar-injection=enabled"]
P = "sidecar.mesh.io/"

# (annotation key, value, what the message must say)
HOSTILE = [
    pytest.param("proxy-cpu-request", "1e1000000", "is too large", id="1e1000000"),
    pytest.param("proxy-cpu-request", "9e2147483647", "is too large", id="9e2147483647"),
    pytest.param("proxy-memory-limit", "1E999999999", "is too large", id="1E9.."),
    pytest.param(
        "exclude-outbound-ports",
        ",".join(str(1024 + i) for i in range(3000)),
        "exclude-outbound-ports",
        id="3000 ports",
    ),
    pytest.param(
        "exclude-outbound-cidrs",
        ",".join(f"10.{i // 256}.{i % 256}.0/24" for i in range(5000)),
        "exclude-outbound-cidrs",
        id="5000 CIDRs",
    ),
    pytest.param(
        "exclude-outbound-ports", "\u0668\u0660", "exclude-outbound-ports", id="Arabic-Indic"
    ),
    pytest.param(
        "exclude-outbound-ports", "\uff18\uff10", "exclude-outbound-ports", id="full-width"
    ),
    pytest.param("xds-address", "xds.mesh-system.svc:15010\n", "xds-address", id="xds newline"),
]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running_server(
        tmp_path_factory.mktemp("edges"), namespaces_yaml=DEMO_NAMESPACES
    ) as running:
        yield running


@pytest.fixture(scope="module")
def client(server: Server) -> WebhookClient:
    return server.client()


@pytest.mark.parametrize(("key", "value", "message"), HOSTILE)
def test_a_hostile_pod_setting_is_a_one_line_400_from_mutate_and_preview(
    client: WebhookClient, key: str, value: str, message: str
) -> None:
    obj = pod(namespace="demo", annotations={P + key: value})
    mutated = client.post("/mutate", review_bytes(obj))
    assert mutated.status_code == 200, mutated.text
    answer = mutated.json()["response"]
    assert answer["allowed"] is False
    assert answer["status"]["code"] == 400
    assert message in answer["status"]["message"]
    assert "\n" not in answer["status"]["message"]

    previewed = client.post("/preview", orjson.dumps(obj), params={"namespace": "demo"})
    assert previewed.status_code == 400, previewed.text
    assert message in previewed.json()["error"]

    ordinary = client.post(
        "/mutate", review_bytes(pod(namespace="demo", annotations={}), uid="after")
    )
    assert ordinary.json()["response"]["allowed"] is True


@pytest.mark.parametrize(("key", "value", "message"), HOSTILE)
def test_a_hostile_setting_is_one_line_and_exit_1_from_inject(
    key: str, value: str, message: str
) -> None:
    as_pod = subprocess.run(
        INJECT,
        input=orjson.dumps(pod(namespace="demo", annotations={P + key: value})),
        capture_output=True,
        timeout=120,
        check=False,
    )
    as_namespace = subprocess.run(
        [*INJECT, "--annotation", f"{P}{key}={value}"],
        input=orjson.dumps(pod(namespace="demo", annotations={})),
        capture_output=True,
        timeout=120,
        check=False,
    )
    for result in (as_pod, as_namespace):
        err = result.stderr.decode()
        assert result.returncode == 1, err
        assert result.stdout == b""
        assert message in err
        assert err.count("\n") == 1, err
        assert "Traceback" not in err
