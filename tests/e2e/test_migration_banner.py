"""The model migration's banner (glimpse/frontend/migration.js) in headless chromium, on the
real gateway: GET /admin/model is answered by playwright with each state; the page's timers
run on playwright's clock."""

from __future__ import annotations

from typing import Any

import pytest

from tests.e2e.polled import Answers, PolledTab

pytestmark = pytest.mark.browser

RUNNING = {"state": "running", "model": "glimpse-tiny-32", "done": 1234, "total": 5000,
           "eta_s": 300.0}
SWITCHED = {"state": "switched", "model": "glimpse-tiny-32", "done": 5000, "total": 5000}


class Tab(PolledTab):
    """A page polling GET /admin/model."""

    def __init__(self, browser: Any, gateway_url: str, answers: Answers) -> None:
        super().__init__(browser, gateway_url, "/admin/model", answers)


def test_the_banner_follows_a_migration_then_names_the_new_model(
    browser: Any, gateway_url: str, tabs: list[Tab]
) -> None:
    tab = Tab(browser, gateway_url, [(200, RUNNING), (200, SWITCHED), (200, {"state": "idle"})])
    tabs.append(tab)
    banner = tab.page.locator("#migration-banner")
    banner.wait_for(state="visible")
    assert banner.text_content() == (
        "Moving to the model glimpse-tiny-32: 1,234 of 5,000 photos (24 %), about 5 min left. "
        "Searches use the current model until it is done.")
    assert banner.get_attribute("role") == "status"
    tab.page.clock.run_for(2_500)  # the next look while running: 2 s
    tab.wait_calls(2)
    tab.page.wait_for_function(
        "document.getElementById('migration-banner').textContent.startsWith('Searches now')")
    tab.page.clock.run_for(31_000)  # then every 30 s
    tab.wait_calls(3)
    banner.wait_for(state="hidden")


def test_a_page_without_the_key_asks_once(
    browser: Any, gateway_url: str, tabs: list[Tab]
) -> None:
    refusal = {"error": "no", "error_type": "unauthorized", "details": None}
    tab = Tab(browser, gateway_url, [(401, refusal)])
    tabs.append(tab)
    tab.wait_calls(1)
    tab.page.clock.run_for(120_000)
    assert tab.calls == 1
    assert not tab.page.locator("#migration-banner").is_visible()
