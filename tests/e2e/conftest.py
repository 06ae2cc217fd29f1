"""Browser tests: the real stack (index + encoder with the tiny model + gateway) as processes,
the sample photos ingested through the gateway, and Debian's headless chromium via playwright."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.photos import Photo, sample_photos
from tests.e2e.polled import PolledTab
from tests.support.procs import REPO

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ARTIFACTS = REPO / "artifacts" / "e2e"
# Files per ingest request: well inside the gateway's default limit.
INGEST_BATCH = 12


def _require_chromium() -> None:
    if CHROMIUM.exists():
        return
    reason = (
        f"{CHROMIUM} is missing: apt-get install chromium "
        "(ci/ensure_test_deps.sh does it in CI)"
    )
    if os.environ.get("CI"):
        pytest.fail(f"browser tests cannot run in CI: {reason}")
    pytest.skip(reason)


# Module scope, not session: while sync_playwright is open its event loop stays marked as
# running in this thread, and every asyncio test collected after the browser tests would fail
# with "Runner.run() cannot be called from a running event loop".
@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    _require_chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, browser: Any) -> Iterator[Any]:
    from tests.support.stack import start_stack

    with start_stack(tmp_path_factory.mktemp("e2e-stack")) as running:
        yield running


@pytest.fixture(scope="module")
def gateway_url(stack: Any) -> str:
    return str(stack.gateway_url).rstrip("/")


@pytest.fixture(scope="session")
def photos() -> list[Photo]:
    return sample_photos()


@pytest.fixture(scope="module")
def gallery(gateway_url: str, photos: list[Photo]) -> dict[str, int]:
    """Ingests the sample photos through the gateway; answers their ids by relative path."""
    ids: dict[str, int] = {}
    with httpx.Client(base_url=gateway_url, timeout=60.0) as client:
        for start in range(0, len(photos), INGEST_BATCH):
            batch = photos[start : start + INGEST_BATCH]
            files = [("files", (p.path, p.data, p.content_type)) for p in batch]
            response = client.post("/ingest", files=files)
            assert response.status_code == 200, response.text
            for item in response.json()["items"]:
                assert item["status"] in ("added", "exists"), item
                ids[item["path"]] = item["id"]
    assert len(ids) == len(photos)
    return ids


@pytest.fixture
def page(browser: Any, gateway_url: str, gallery: dict[str, int]) -> Iterator[Any]:
    """A fresh browser context on the page; fails the test on any uncaught script error."""
    context = browser.new_context(viewport={"width": 1280, "height": 800}, color_scheme="light")
    context.set_default_timeout(15_000)
    tab = context.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda exc: errors.append(str(exc)))
    tab.goto(gateway_url + "/")
    tab.wait_for_selector("html[data-ready]", state="attached")
    try:
        yield tab
    finally:
        context.close()
    assert errors == [], f"uncaught script errors on the page: {errors}"


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


@pytest.fixture
def tabs() -> Iterator[list[PolledTab]]:
    """The polled tabs a test opens (polled.py), closed after it; none may have thrown."""
    opened: list[PolledTab] = []
    yield opened
    for tab in opened:
        tab.context.close()
        assert tab.errors == [], f"uncaught script errors on the page: {tab.errors}"
