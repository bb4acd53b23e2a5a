"""The service against generated requests, and the golden inputs: the CLI, /preview and /mutate
agree on every one.
"""

from __future__ import annotations

import contextlib
import io
import shlex
from typing import Any

import orjson
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness.server import Server, WebhookClient
from tests.builders import GOLDEN, review
from tests.process.calls import decoded_patch, mutate, preview
from tests.profiles import examples
from webhook.cli.commands import main as cli_main

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)


def _review_variant(draw: st.DrawFn) -> bytes:
    doc: Any = review(uid=draw(st.text(max_size=8)) or "u")
    request = doc["request"]
    for key in draw(st.lists(st.sampled_from(sorted(request)), max_size=3)):
        request[key] = draw(json_values)
    obj = request.get("object")
    if isinstance(obj, dict):
        for key in draw(
            st.lists(st.sampled_from(["metadata", "spec", "kind", "apiVersion"]), max_size=2)
        ):
            obj[key] = draw(json_values)
        if isinstance(obj.get("spec"), dict):
            for key in draw(
                st.lists(st.sampled_from(["containers", "initContainers"]), max_size=2)
            ):
                obj["spec"][key] = draw(spec_lists)
        if isinstance(obj.get("metadata"), dict) and draw(st.booleans()):
            obj["metadata"]["annotations"] = draw(
                st.dictionaries(
                    st.sampled_from(
                        [
                            "sidecar.mesh.io/proxy-cpu-request",
                            "sidecar.mesh.io/include-inbound-ports",
                            "sidecar.mesh.io/exclude-outbound-cidrs",
                            "sidecar.mesh.io/native-sidecar",
                            "sidecar.mesh.io/xds-address",
                            "sidecar.mesh.io/status",
                            "sidecar.mesh.io/inject",
                        ]
                    ),
                    st.text(max_size=12),
                    max_size=3,
                )
            )
            if draw(st.booleans()):
                obj["metadata"]["annotations"] = {"sidecar.mesh.io/status": draw(status_texts)}
    return orjson.dumps(doc)


# Status annotations the injector could have written, listing containers a
# pod may or may not have (with containers that are not lists, they found a bug).
status_texts = st.sampled_from(
    [
        '{"version":"0","initContainers":["mesh-init"]}',
        '{"version":"0","containers":["mesh-proxy"],"initContainers":["mesh-init"]}',
        '{"version":"0","containers":["a"],"replaced":"x"}',
    ]
)


# What a client may send for spec.containers or spec.initContainers.
spec_lists = (
    st.sampled_from([7, True, 1.5, {"name": "mesh-init"}, [7], [{"name": ["mesh-init"]}]])
    | json_values
)


# YAML maps may have keys of any scalar type; Kubernetes objects may not.
yaml_values = st.recursive(
    st.none() | st.booleans() | st.integers(-100, 100) | st.text(max_size=10),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.text(max_size=10) | st.integers(-5, 5) | st.booleans() | st.none(),
            children,
            max_size=4,
        )
    ),
    max_leaves=20,
)


@st.composite
def bodies(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["bytes", "json", "review", "yaml"]))
    if kind == "bytes":
        return draw(st.binary(max_size=200))
    if kind == "json":
        return orjson.dumps(draw(json_values))
    if kind == "review":
        return _review_variant(draw)
    return yaml.safe_dump(draw(yaml_values)).encode()


# h11 (the client side) refuses header values with surrounding spaces.
header_text = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40
).map(str.strip)


content_types = (
    st.sampled_from(
        [
            None,
            "application/json",
            "application/json; charset=utf-8",
            "application/yaml",
            "text/plain",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=x",
        ]
    )
    | header_text
)


queries = st.dictionaries(
    st.sampled_from(["namespace", "label", "annotation", "output", "timeout", "x"])
    | st.text(max_size=5),
    st.sampled_from(["demo", "json", "yaml", "patch", "diff", "a=b", "sidecar-injection=enabled"])
    | st.text(max_size=10),
    max_size=3,
)


def test_no_generated_request_gets_a_server_error_or_reaches_the_internal_error_path(
    server: Server, client: WebhookClient
) -> None:
    """2,000 generated requests (CI's profile; fewer locally), then the server's own counters
    and log must show no bug.

    The check of the counters lives in this test (not in one that runs after
    it) so it means the same when run alone.
    """

    @settings(
        max_examples=examples(2000),
        deadline=None,
        derandomize=True,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(
        path=st.sampled_from(["/mutate", "/preview"]),
        body=bodies(),
        content_type=content_types,
        query=queries,
    )
    def one_request(
        path: str, body: bytes, content_type: str | None, query: dict[str, str]
    ) -> None:
        response = client.post(path, body, content_type=content_type, params=query)
        assert response.status_code < 500, (response.status_code, response.text)
        assert response.status_code in (200, 400, 413, 415)

    one_request()
    samples = server.metrics()
    answered = sum(
        value
        for name, value in samples.items()
        if name.startswith("sidecar_injector_requests_total{")
    )
    assert answered >= examples(2000)
    assert not [name for name in samples if 'outcome="error"' in name]
    assert "internal error" not in server.log()
    assert "Traceback" not in server.log()
    assert server.proc.poll() is None


GOLDEN_CASES = sorted(p.stem for p in (GOLDEN / "inputs").glob("*.yaml"))


def golden_query(name: str) -> tuple[str, dict[str, Any], list[str]]:
    text = (GOLDEN / "inputs" / f"{name}.yaml").read_text()
    args = shlex.split(text.splitlines()[0].removeprefix("# args:"))
    params: dict[str, Any] = {"label": [], "annotation": []}
    position = 0
    while position < len(args):
        flag, value = args[position], args[position + 1]
        position += 2
        if flag == "--namespace":
            params["namespace"] = value
        elif flag in ("--label", "--annotation"):
            params[flag[2:]].append(value)
    return text, params, args


def cli_patch(name: str, args: list[str]) -> tuple[int, str]:
    """``sidecar-injector inject -o patch`` in-process (a process per case would be slow)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.chdir(GOLDEN), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli_main(["inject", "-f", f"inputs/{name}.yaml", *args, "-o", "patch"])
    return code, out.getvalue()


@pytest.mark.parametrize("name", GOLDEN_CASES)
def test_a_golden_input_gets_the_clis_patch_from_preview_and_mutate(
    client: WebhookClient, name: str
) -> None:
    text, params, args = golden_query(name)
    code, cli_out = cli_patch(name, args)
    response = preview(client, text, "application/yaml", output="patch", **params)
    if code != 0:
        assert response.status_code == 400, response.text
        return
    assert response.status_code == 200, response.text
    assert response.json() == orjson.loads(cli_out)

    docs = [d for d in yaml.safe_load_all(text) if d is not None]
    plain_namespace = not params["label"] and not params["annotation"] and "namespace" in params
    if len(docs) == 1 and docs[0].get("kind") == "Pod" and plain_namespace:
        # /mutate knows only the namespace source, so only cases without
        # assumed labels can be replayed through it.
        obj = docs[0]
        doc = review(obj, namespace=params["namespace"], uid=f"golden-{name}")
        answer = mutate(client, doc)
        assert decoded_patch(answer) == orjson.loads(cli_out)
