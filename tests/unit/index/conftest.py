"""Fixtures of the index service tests: a fresh app on a temp data dir, started and ready."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from glimpse.index.main import create_app
from tests.unit.index.helpers import settings, wait_ready


@pytest.fixture
def make_client(tmp_path: Path) -> Iterator[Callable[..., TestClient]]:
    """Start an index app (lifespan run, ready) with settings overrides; closed at the end."""
    opened: list[TestClient] = []

    def make(**overrides: Any) -> TestClient:
        overrides.setdefault("data_dir", tmp_path / "index")
        client = TestClient(create_app(settings(**overrides)))
        client.__enter__()
        opened.append(client)
        wait_ready(client)
        return client

    yield make
    for client in reversed(opened):
        client.__exit__(None, None, None)


@pytest.fixture
def client(make_client: Callable[..., TestClient]) -> TestClient:
    return make_client()
