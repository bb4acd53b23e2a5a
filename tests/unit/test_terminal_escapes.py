"""What people read never carries a raw control character or escape sequence.

Object names, file names and what a cluster says reach terminals: ``inject``
wrote a pod's name raw to stderr (an OSC title and a clear-screen sequence
reached the terminal), ``check`` printed server strings raw, and kubectl
shows ``/mutate``'s ``status.message`` and warnings to its user as they are.
``escape_controls`` writes them out instead; these tests send real escape
sequences through the function, the app and the log formatter (the real
command line is in ``tests/process/test_terminal_escapes.py``).
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient
from hypothesis import given
from hypothesis import strategies as st

from tests import builders
from webhook.cluster.namespaces_file import StaticNamespaces
from webhook.engine.config import InjectorConfig
from webhook.engine.values import escape_controls
from webhook.service import admission
from webhook.service.answers import warning_header
from webhook.service.app import create_app
from webhook.service.logs import JsonFormatter

# An OSC window title, a clear screen, and an 8-bit CSI.
HOSTILE = "web\x1b]0;title\x07\x1b[2J\x9b"
SHOWN = "web\\x1b]0;title\\x07\\x1b[2J\\x9b"
RAW = re.compile(
    "[\x00-\x09\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]"
)


def raw_controls(text: str) -> list[str]:
    """The characters a terminal would act on (newlines between lines aside)."""
    return RAW.findall(text)


# --- the function --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("plain text", "plain text"),
        ("\x1b]0;title\x07", "\\x1b]0;title\\x07"),
        ("\x1b[2J", "\\x1b[2J"),
        ("a\x9bb", "a\\x9bb"),
        ("\x00\x08\x0d\x7f", "\\x00\\x08\\x0d\\x7f"),
        ("line\nbreak\ttab", "line\\x0abreak\\x09tab"),
        ("abc\u202edcba", "abc\\u202edcba"),
        ("\u2066isolate\u2069", "\\u2066isolate\\u2069"),
        ("\u2028", "\\u2028"),
        ("naïve café 日本 ✓", "naïve café 日本 ✓"),
        ("already \\x1b shown", "already \\x1b shown"),
    ],
)
def test_what_a_terminal_acts_on_is_written_out_and_the_rest_left_alone(
    text: str, shown: str
) -> None:
    assert escape_controls(text) == shown


@given(st.text())
def test_escaping_leaves_nothing_a_terminal_acts_on_and_is_idempotent(text: str) -> None:
    shown = escape_controls(text)
    assert RAW.search(shown) is None
    assert "\n" not in shown
    assert escape_controls(shown) == shown


# --- admission and preview -----------------------------------------------------------


def pod(name: str = HOSTILE, container: str = "app", **metadata: Any) -> bytes:
    """A pod named ``name`` whose one container is ``container``, as bytes."""
    containers = [{"name": container, "image": "nginx"}]
    return orjson.dumps(builders.pod(name, containers=containers, **metadata))


@pytest.fixture(scope="module")
def client() -> TestClient:
    source = StaticNamespaces({"demo": builders.enabled_namespace()})
    return TestClient(create_app(config=InjectorConfig(), namespaces=source))


def review(obj: bytes) -> bytes:
    return builders.review_bytes(orjson.loads(obj), uid="u-1")


def test_mutate_refuses_a_pod_with_its_name_escaped_in_the_message(client: TestClient) -> None:
    answer = client.post(
        "/mutate",
        content=review(pod(container="mesh-proxy")),
        headers={"Content-Type": "application/json"},
    ).json()["response"]
    assert answer["allowed"] is False
    message = answer["status"]["message"]
    assert message.startswith(f"Pod {SHOWN}: ")
    assert raw_controls(message) == []


def test_admission_messages_and_warnings_are_escaped_whoever_wrote_them() -> None:
    refused = admission.denied("u", HOSTILE, warnings=[HOSTILE])
    assert refused["status"]["message"] == SHOWN
    assert refused["warnings"] == [SHOWN]
    assert admission.allowed("u", warnings=[HOSTILE])["warnings"] == [SHOWN]
    assert admission.patched("u", [], warnings=[HOSTILE])["warnings"] == [SHOWN]


def test_preview_errors_and_warnings_are_escaped(client: TestClient) -> None:
    refused = client.post(
        "/preview",
        content=pod(container="mesh-proxy"),
        headers={"Content-Type": "application/json"},
        params={"namespace": "demo"},
    )
    assert refused.status_code == 400
    assert refused.json()["error"].startswith(f"Pod {SHOWN}: ")
    assert raw_controls(refused.text) == []
    assert "\\u001b" not in refused.text
    assert warning_header(HOSTILE) == f'299 - "{SHOWN.replace(chr(92), chr(92) * 2)}"'


def test_serve_log_lines_escape_what_json_allows_raw() -> None:
    record = logging.LogRecord("webhook", logging.INFO, __file__, 1, HOSTILE, None, None)
    record.fields = {"name": HOSTILE}
    line = JsonFormatter().format(record)
    assert raw_controls(line) == []
    assert json.loads(line)["name"] == HOSTILE
