"""The libraries' status line (glimpse/frontend/libraries.js) in headless chromium, on the real
gateway: GET /admin/libraries is answered by playwright where a state is needed (pending work,
a key required), by the gateway itself otherwise (no library configured: 404). The page's
timers run on playwright's clock, so the polling is checked without waiting for it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.e2e.polled import Answers, PolledTab

pytestmark = pytest.mark.browser

PHOTOS_BUSY = {"libraries": [
    {"name": "photos", "status": "scanning", "pending": 1234, "indexed": 10, "failed": 0},
    {"name": "nas", "status": "ok", "pending": 0, "indexed": 5, "failed": 1},
]}
ALL_IDLE = {"libraries": [
    {"name": "photos", "status": "ok", "pending": 0, "indexed": 1244, "failed": 0},
    {"name": "nas", "status": "ok", "pending": 0, "indexed": 5, "failed": 1},
]}


class Tab(PolledTab):
    """A page polling GET /admin/libraries."""

    def __init__(self, browser: Any, gateway_url: str, answers: Answers | None) -> None:
        super().__init__(browser, gateway_url, "/admin/libraries", answers)

    def line(self) -> str | None:
        """The status line's text, None while it is hidden."""
        locator = self.page.locator("#library-status")
        return str(locator.text_content()) if locator.is_visible() else None


def test_a_line_while_work_is_pending_gone_once_idle(
    browser: Any, gateway_url: str, tabs: list[Tab], artifacts: Path
) -> None:
    tab = Tab(browser, gateway_url, [(200, PHOTOS_BUSY), (200, ALL_IDLE), (200, PHOTOS_BUSY)])
    tabs.append(tab)
    status = tab.page.locator("#library-status")
    status.wait_for(state="visible")
    assert status.text_content() == "Indexing library photos: 1,234 files pending…"
    assert status.get_attribute("role") == "status"
    # In the footer, beside the collection's size.
    assert tab.page.locator("footer #stats + #library-status").count() == 1
    tab.page.screenshot(path=str(artifacts / "library-status.png"), full_page=True)

    tab.page.clock.run_for(2_500)  # the next look while busy: 2 s
    tab.wait_calls(2)
    status.wait_for(state="hidden")
    tab.page.clock.run_for(10_000)  # idle: no look for 30 s
    assert tab.calls == 2
    tab.page.clock.run_for(21_000)
    tab.wait_calls(3)
    status.wait_for(state="visible")


def test_several_busy_libraries_and_a_scan_without_a_count(
    browser: Any, gateway_url: str, tabs: list[Tab]
) -> None:
    both = {"libraries": [{"name": "photos", "status": "ok", "pending": 1},
                          {"name": "nas", "status": "scanning", "pending": 0}]}
    tab = Tab(browser, gateway_url, [(200, both)])
    tabs.append(tab)
    tab.page.locator("#library-status").wait_for(state="visible")
    assert tab.line() == "Indexing libraries photos, nas: 1 file pending…"
    only_scanning = {"libraries": [{"name": "nas", "status": "scanning", "pending": 0}]}
    other = Tab(browser, gateway_url, [(200, only_scanning)])
    tabs.append(other)
    other.page.locator("#library-status").wait_for(state="visible")
    assert other.line() == "Scanning library nas…"


@pytest.mark.parametrize("status", [401, 404])
def test_a_route_the_page_cannot_read_is_asked_once(
    browser: Any, gateway_url: str, tabs: list[Tab], status: int
) -> None:
    refusal = {"error": "no", "error_type": "unauthorized" if status == 401 else "not_found",
               "details": None}
    tab = Tab(browser, gateway_url, [(status, refusal)])
    tabs.append(tab)
    tab.wait_calls(1)
    tab.page.clock.run_for(5 * 60_000)
    tab.page.wait_for_timeout(200)
    assert tab.calls == 1 and tab.line() is None


def test_the_real_gateway_without_libraries(
    browser: Any, gateway_url: str, tabs: list[Tab]
) -> None:
    """The e2e stack configures no library: its 404 stops the polling, no line is shown."""
    tab = Tab(browser, gateway_url, None)
    tabs.append(tab)
    tab.wait_calls(1)
    tab.page.clock.run_for(5 * 60_000)
    tab.page.wait_for_timeout(200)
    assert tab.calls == 1 and tab.line() is None
    tab.page.wait_for_function(  # app.js works beside it
        "() => document.querySelector('#stats').textContent.includes('image')")
