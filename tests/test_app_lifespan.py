"""What the app does once at start-up, checked in-process."""

from __future__ import annotations

import gc

from fastapi.testclient import TestClient

from webhook.app import create_app
from webhook.config import InjectorConfig
from webhook.namespaces import StaticNamespaces


def test_start_up_freezes_the_heap_so_full_collections_stay_short() -> None:
    gc.unfreeze()
    try:
        app = create_app(config=InjectorConfig(), namespaces=StaticNamespaces())
        with TestClient(app) as client:
            assert client.get("/healthz").status_code == 200
            assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
