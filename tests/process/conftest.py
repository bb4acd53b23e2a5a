"""The process tier's shared ``serve``: one per module that asks for it, with the golden namespaces.

Files that need another set-up (limits, namespaces, arguments) define their
own ``server`` fixture, which takes precedence in that file.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from harness.server import Server, WebhookClient, running_server
from tests.builders import GOLDEN


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """``serve`` over TLS with the namespaces the golden inputs refer to."""
    namespaces = (GOLDEN / "namespaces.yaml").read_text()
    with running_server(tmp_path_factory.mktemp("serve"), namespaces_yaml=namespaces) as running:
        yield running


@pytest.fixture(scope="module")
def client(server: Server) -> WebhookClient:
    """A kept-alive verifying client of ``server``."""
    return server.client()
