"""Accessibility and weight of the page (issue 26): axe-core over every state of the page, the
grid as one Tab stop, the live regions a screen reader hears, and gzip and Cache-Control on
what the gateway sends."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import httpx
import pytest
from axe_playwright_python.sync_playwright import Axe

from tests.e2e.test_frontend import QUERY, message, search, wait_for_results

pytestmark = pytest.mark.browser

# axe-core as its PyPI package bundles it (axe.min.js): no network at test time.
AXE = Axe()
MISSING_ID = 987654321
COLUMNS = 6  # the grid's columns at the page fixture's 1280 px


def axe_violations(page: Any) -> list[str]:
    """axe-core's violations on the page as it is now, one line each with the nodes' selectors."""
    # All rules but the experimental ones: WCAG 2.x A/AA and axe's best practices.
    results = AXE.run(page, options={"resultTypes": ["violations"]})
    return [
        f"{v['id']} ({v['impact']}): {v['help']} at {[n['target'] for n in v['nodes']]}"
        for v in results.response["violations"]
    ]


def fake_search_answer(page: Any, **answer: Any) -> None:
    """Text searches answer ``answer``: the empty and "no good match" states on demand."""
    body = {"results": [], "total_ms": 1.0, "relevant_count": 0, "no_good_match": False,
            "timings": {"encode_ms": 0.5, "search_ms": 0.5}, "model": "m", **answer}
    page.route("**/search/text", lambda route: route.fulfill(json=body))


def submit(page: Any, text: str) -> None:
    page.fill("#q", text)
    page.press("#q", "Enter")


def focused_index(page: Any) -> int | None:
    index = page.evaluate("document.activeElement.closest('.tile')?.dataset.index ?? null")
    return None if index is None else int(index)


def record_status(page: Any) -> None:
    """From now on window.statusTexts lists every text the status live region takes."""
    page.evaluate(
        """() => {
            window.statusTexts = [];
            const status = document.querySelector('#status');
            new MutationObserver(() => window.statusTexts.push(status.textContent))
                .observe(status, {childList: true, characterData: true, subtree: true});
        }"""
    )


def status_texts(page: Any) -> list[str]:
    return list(page.evaluate("window.statusTexts"))


# ---- axe-core ---------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_axe_finds_no_violation_in_any_state(
    browser: Any, gateway_url: str, gallery: dict[str, int], artifacts: Path, scheme: str
) -> None:
    context = browser.new_context(viewport={"width": 1280, "height": 800}, color_scheme=scheme)
    context.set_default_timeout(15_000)
    page = context.new_page()
    found: dict[str, list[str]] = {}

    def check(state: str) -> None:
        page.evaluate("document.activeElement.blur()")
        found[state] = axe_violations(page)
        page.screenshot(path=str(artifacts / f"a11y-{state}-{scheme}.png"), animations="disabled")

    try:
        page.goto(gateway_url + "/")
        page.wait_for_selector("html[data-ready]", state="attached")
        page.wait_for_function("() => !document.querySelector('#stats').textContent.includes('…')")
        check("landing")

        search(page, QUERY)
        check("results")

        page.click('#results .tile[data-index="0"]')
        page.wait_for_selector("#lightbox[open]")
        check("lightbox")
        page.keyboard.press("Escape")
        page.wait_for_selector("#lightbox", state="hidden")

        page.click(".filters > summary")
        page.wait_for_selector(".filters-body", state="visible")
        check("filters-open")
        page.click(".filters > summary")

        fake_search_answer(page)
        submit(page, "nothing at all")
        message(page)
        check("empty")

        page.unroute("**/search/text")
        fake_search_answer(page, no_good_match=True)
        submit(page, "nothing good")
        page.wait_for_selector("#show-closest", state="visible")
        check("no-good-match")
        page.unroute("**/search/text")

        page.goto(f"{gateway_url}/?similar={MISSING_ID}")
        page.wait_for_selector("#message.error", state="visible")
        check("error")
    finally:
        context.close()
    assert {state: v for state, v in found.items() if v} == {}
    assert len(found) == 7


# ---- keyboard ---------------------------------------------------------------------------


def test_the_grid_is_one_tab_stop_that_remembers_the_last_tile(page: Any) -> None:
    search(page, QUERY)
    tabbable = page.eval_on_selector_all(
        "#results .tile", "tiles => tiles.filter(t => t.tabIndex >= 0).length"
    )
    assert tabbable == 1

    page.focus("#q")
    presses = 0
    while focused_index(page) is None:
        page.keyboard.press("Tab")
        presses += 1
        assert presses < 10, "Tab never reached the grid"
    assert focused_index(page) == 0
    # Before anything scrolls the end of the grid into view, which loads the next page.
    shown = len(page.query_selector_all("#results .tile"))
    page.keyboard.press("End")
    assert focused_index(page) == shown - 1
    page.keyboard.press("Home")
    assert focused_index(page) == 0
    page.keyboard.press("ArrowRight")
    page.keyboard.press("ArrowRight")
    assert focused_index(page) == 2

    # One Tab leaves the grid, however many tiles it has; Shift+Tab comes back to the same tile.
    page.keyboard.press("Tab")
    assert focused_index(page) is None
    assert page.evaluate("document.activeElement.matches('.footer a, #more-retry')")
    page.keyboard.press("Shift+Tab")
    assert focused_index(page) == 2


def test_arrow_up_keeps_the_focused_tile_below_the_sticky_header(
    page: Any, artifacts: Path
) -> None:
    search(page, QUERY)
    wait_for_results(page, 5 * COLUMNS)
    page.focus('#results .tile[data-index="0"]')
    for _ in range(4):
        page.keyboard.press("ArrowDown")
    assert focused_index(page) == 4 * COLUMNS
    assert page.evaluate("window.scrollY") > 0
    for row in (3, 2, 1):
        page.keyboard.press("ArrowUp")
        assert focused_index(page) == row * COLUMNS
        gap = page.evaluate(
            """() => document.activeElement.getBoundingClientRect().top
                     - document.querySelector('.topbar').getBoundingClientRect().bottom"""
        )
        assert gap >= 0, f"row {row}'s tile is {-gap:.0f} px under the header"
    page.screenshot(path=str(artifacts / "a11y-arrow-up.png"), animations="disabled")


# ---- screen readers ---------------------------------------------------------------------


def test_no_results_failure_and_no_good_match_are_announced(
    page: Any, gateway_url: str
) -> None:
    record_status(page)
    fake_search_answer(page)
    submit(page, "nothing at all")
    assert "No results" in message(page)
    assert page.inner_text("#status") == "No results for “nothing at all”"
    page.unroute("**/search/text")

    fake_search_answer(page, no_good_match=True)
    submit(page, "nothing good")
    page.wait_for_selector("#show-closest", state="visible")
    assert page.inner_text("#status") == "No good match"
    page.unroute("**/search/text")

    page.route("**/search/text", lambda route: route.abort())
    submit(page, "unreachable")
    page.wait_for_selector("#message.error", state="visible")
    assert page.inner_text("#status") == (
        "Cannot reach Glimpse: Could not reach the Glimpse gateway. Is it running?"
    )
    page.unroute("**/search/text")

    # A live region that is emptied says nothing: each search only ever replaced its text.
    assert "" not in status_texts(page)
    assert page.get_attribute("#status", "aria-live") == "polite"

    # A refused search (a real 404 of the gateway) is announced with its sentence.
    missing = httpx.get(f"{gateway_url}/images/{MISSING_ID}/similar").json()["error"]
    page.goto(f"{gateway_url}/?similar={MISSING_ID}")
    page.wait_for_selector("#message.error", state="visible")
    assert page.inner_text("#status") == f"The search failed: {missing}"


def test_lightbox_navigation_is_announced(page: Any, gallery: dict[str, int]) -> None:
    path_of = {i: p for p, i in gallery.items()}
    search(page, QUERY)
    ids = [int(i) for i in page.eval_on_selector_all(
        "#results .tile", "tiles => tiles.map(t => t.dataset.id)"
    )]
    page.focus('#results .tile[data-index="0"]')
    page.keyboard.press("Enter")
    page.wait_for_selector("#lightbox[open]")
    live = page.locator("#lightbox #lb-live")
    assert live.get_attribute("aria-live") == "polite"
    page.keyboard.press("ArrowRight")
    page.keyboard.press("ArrowRight")
    # "of 40+" while more results can still be loaded.
    expected = rf"Image 3 of \d+\+?: {re.escape(path_of[ids[2]])}"
    assert re.fullmatch(expected, live.inner_text())
    page.keyboard.press("ArrowLeft")
    assert live.inner_text().startswith("Image 2 of ")


def test_headings_and_one_image_button(page: Any) -> None:
    assert page.locator("h1").count() == 1
    assert page.get_by_role("heading", name="Search results").count() == 0  # nothing searched
    search(page, QUERY)
    heading = page.get_by_role("heading", name="Search results")
    assert heading.count() == 1
    assert page.evaluate(
        """() => !!(document.querySelector('#results-heading').compareDocumentPosition(
            document.querySelector('#results')) & Node.DOCUMENT_POSITION_FOLLOWING)"""
    )
    assert page.get_by_role("list", name="Search results").count() == 1

    # The file input behind "Search by an image" is not a second button.
    form = page.locator("#search-form").aria_snapshot()
    assert len(re.findall(r"button \"[^\"]*image", form, flags=re.I)) == 1, form
    assert page.get_by_role("button", name="Search by an image (or drop or paste one)").count() == 1


# ---- weight -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["", "app.js", "style.css", "filters.js", "libraries.js", "poll.js"]
)
def test_page_files_are_gzipped_and_revalidated(gateway_url: str, name: str) -> None:
    with httpx.Client(base_url=gateway_url) as client:
        plain = client.get(f"/{name}", headers={"Accept-Encoding": "identity"})
        packed = client.get(f"/{name}", headers={"Accept-Encoding": "gzip"})
        assert plain.status_code == packed.status_code == 200
        assert "content-encoding" not in plain.headers
        assert packed.headers["content-encoding"] == "gzip"
        assert packed.content == plain.content
        # A module of a kilobyte or two packs to about half; the larger files to far less.
        assert packed.num_bytes_downloaded < 0.6 * plain.num_bytes_downloaded
        for answer in (plain, packed):
            assert answer.headers["cache-control"] == "no-cache"
        again = client.get(f"/{name}", headers={"If-None-Match": plain.headers["etag"]})
        assert again.status_code == 304


def test_json_is_gzipped_but_images_and_small_answers_are_not(
    gateway_url: str, gallery: dict[str, int]
) -> None:
    with httpx.Client(base_url=gateway_url, headers={"Accept-Encoding": "gzip"}) as client:
        found = client.post("/search/text", json={"query": QUERY, "k": 40})
        assert found.headers["content-encoding"] == "gzip"
        assert found.num_bytes_downloaded < 0.5 * len(found.content)
        hit = found.json()["results"][0]
        thumbnail = client.get(hit["thumbnail_url"])
        original = client.get(hit["image_url"])
        for image in (thumbnail, original):
            assert image.status_code == 200
            assert image.headers["content-type"].startswith("image/")
            assert "content-encoding" not in image.headers
        small = client.get("/healthz")
        assert len(small.content) < 500
        assert "content-encoding" not in small.headers
