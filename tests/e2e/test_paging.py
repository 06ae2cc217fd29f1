"""Paging up to the gateway's result window, in headless chromium against a stack whose window
(GATEWAY_MAX_RESULT_WINDOW) is smaller than the sample collection: the page ends cleanly there,
and an error that asking again cannot cure offers no "Try again"."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.test_frontend import PAGE_SIZE, result_ids, search

pytestmark = pytest.mark.browser

# Over one page and under the 53 sample photos, so the window ends the results, not the photos.
WINDOW = 50


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, browser: Any) -> Iterator[Any]:
    from tests.support.stack import start_stack

    root = tmp_path_factory.mktemp("e2e-paging")
    with start_stack(root, GATEWAY_MAX_RESULT_WINDOW=str(WINDOW)) as running:
        yield running


def search_pages(page: Any) -> list[tuple[int, int]]:
    """(k, offset) of every /search/text request the page makes from now on."""
    asked: list[tuple[int, int]] = []

    def note(request: Any) -> None:
        if request.url.endswith("/search/text"):
            body = request.post_data_json
            asked.append((body["k"], body["offset"]))

    page.on("request", note)
    return asked


def scroll_to_end(page: Any) -> None:
    page.evaluate("window.scrollTo(0, document.body.scrollHeight)")


def test_scrolling_ends_cleanly_at_the_result_window(
    page: Any, gateway_url: str, gallery: dict[str, int], artifacts: Path
) -> None:
    assert len(gallery) > WINDOW
    # The window is real: the gateway refuses a page that reaches past it.
    refused = httpx.post(
        gateway_url + "/search/text", json={"query": "a", "k": PAGE_SIZE, "offset": PAGE_SIZE}
    )
    assert refused.status_code == 422 and refused.json()["error_type"] == "validation_error"
    assert httpx.get(gateway_url + "/stats").json()["max_result_window"] == WINDOW

    asked = search_pages(page)
    search(page, "a photo of a cat")
    scroll_to_end(page)
    page.wait_for_selector("#end", state="visible")

    ids = result_ids(page)
    assert len(ids) == len(set(ids)) == WINDOW
    # The last page asks for what is left of the window, and nothing is asked past it (the
    # first ask may be the relevant-only one, before "Show closest anyway").
    assert asked[-2:] == [(PAGE_SIZE, 0), (WINDOW - PAGE_SIZE, PAGE_SIZE)]
    assert asked[:-2] in ([], [(PAGE_SIZE, 0)])
    count = len(asked)
    end = page.inner_text("#end")
    assert end.startswith("End of results") and f"the {WINDOW} best matches" in end
    assert page.is_hidden("#more-error") and page.is_hidden("#message")
    assert page.inner_text("#status").startswith(f"{WINDOW} results for")
    # Scrolling on at the end asks for nothing more.
    scroll_to_end(page)
    page.wait_for_timeout(500)
    assert len(asked) == count
    page.evaluate("document.activeElement.blur()")
    page.screenshot(path=str(artifacts / "paging-end.png"), animations="disabled")


def test_a_refused_page_offers_no_retry(
    page: Any, gateway_url: str, gallery: dict[str, int], artifacts: Path
) -> None:
    # A page that does not know the window (say, an older gateway's /stats) pages past it and
    # is refused with a 4xx: asking again cannot succeed, so no "Try again" is offered.
    def stats_without_window(route: Any) -> None:
        response = route.fetch()
        body = response.json()
        body.pop("max_result_window", None)
        route.fulfill(response=response, body=json.dumps(body))

    page.route("**/stats", stats_without_window)
    page.reload()
    page.wait_for_selector("html[data-ready]", state="attached")
    page.wait_for_function("document.getElementById('stats').textContent.includes('images')")
    search(page, "a photo of a cat")
    assert len(result_ids(page)) == PAGE_SIZE
    scroll_to_end(page)
    page.wait_for_selector("#more-error", state="visible")
    text = page.inner_text("#more-error")
    assert f"k + offset is {2 * PAGE_SIZE}" in text and "(validation_error)" in text
    assert page.is_hidden("#more-retry")
    assert len(result_ids(page)) == PAGE_SIZE
    page.evaluate("document.activeElement.blur()")
    page.screenshot(path=str(artifacts / "paging-refused.png"), animations="disabled")

    # The same on the first page: a missing image is not found however often it is asked for.
    page.goto(gateway_url + "/?similar=987654321")
    page.wait_for_selector("#message.error", state="visible")
    assert "not_found" in page.inner_text("#message")
    assert page.is_hidden("#retry")
