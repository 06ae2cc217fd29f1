"""The web page in headless chromium against the real stack, with the sample photos ingested."""

from __future__ import annotations

import base64
import io
import re
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from PIL import Image

from tests.e2e.photos import Photo

pytestmark = pytest.mark.browser

PAGE_SIZE = 40  # app.js asks for this many results per page
QUERY = "a photo of a cat"


# ---- helpers -----------------------------------------------------------------------------


def search(page: Any, text: str) -> None:
    """Searches for ``text``; when nothing is a good match (the tiny model's random text tower
    rarely finds one), takes "Show closest anyway", as these tests page through the ranking."""
    page.fill("#q", text)
    page.press("#q", "Enter")
    closest_if_no_good_match(page)


def no_good_match_or_results(page: Any) -> bool:
    """Waits for the answer of a search: true when it is the "no good match" state."""
    page.wait_for_function(
        "() => document.querySelector('#results .tile')"
        " || document.querySelector('#show-closest').checkVisibility()"
    )
    return bool(page.is_visible("#show-closest"))


def closest_if_no_good_match(page: Any) -> None:
    if no_good_match_or_results(page):
        page.click("#show-closest")
    wait_for_results(page)


def wait_for_results(page: Any, at_least: int = 1) -> None:
    page.wait_for_function(
        "n => document.querySelectorAll('#results .tile').length >= n"
        " && !document.querySelector('#results[aria-busy]')",
        arg=at_least,
    )


def result_ids(page: Any) -> list[int]:
    ids = page.eval_on_selector_all("#results .tile", "tiles => tiles.map(t => t.dataset.id)")
    return [int(i) for i in ids]


def first_page(page: Any) -> list[int]:
    """The ids of the first page (the next one may already be loading, if it is in view)."""
    wait_for_results(page, PAGE_SIZE)
    return result_ids(page)[:PAGE_SIZE]


def result_scores(page: Any) -> list[float]:
    # The number leads the pill; a keyword hit's pill adds "· keyword" after it.
    return [float(s.split()[0]) for s in page.locator("#results .tile .score").all_inner_texts()]


def query_of(page: Any) -> dict[str, list[str]]:
    return parse_qs(urlsplit(page.url).query)


def photo(photos: list[Photo], path: str) -> Photo:
    return next(p for p in photos if p.path == path)


def pixel_size(p: Photo) -> tuple[int, int]:
    with Image.open(io.BytesIO(p.data)) as img:
        return img.size


def wait_thumbnails_loaded(page: Any, count: int) -> None:
    """The first ``count`` thumbnails have really loaded (decoded, non-zero size)."""
    page.wait_for_function(
        """n => {
            const imgs = [...document.querySelectorAll('#results .tile img')].slice(0, n);
            return imgs.length === n && imgs.every(i => i.complete && i.naturalWidth > 0);
        }""",
        arg=count,
    )


def message(page: Any) -> str:
    page.wait_for_selector("#message", state="visible")
    return str(page.inner_text("#message"))


# ---- tests -------------------------------------------------------------------------------


def test_text_search_shows_thumbnails_that_load(
    page: Any, photos: list[Photo], gallery: dict[str, int], artifacts: Path
) -> None:
    search(page, QUERY)

    assert query_of(page)["q"] == [QUERY]
    assert len(result_ids(page)) == PAGE_SIZE
    assert set(result_ids(page)) <= set(gallery.values())
    wait_thumbnails_loaded(page, 12)
    widths = page.eval_on_selector_all(
        "#results .tile img",
        "imgs => imgs.slice(0, 12).map(i => [i.naturalWidth, i.naturalHeight])",
    )
    # Thumbnails, not originals: the longest side is at most 320.
    assert all(0 < max(w, h) <= 320 for w, h in widths), widths
    scores = result_scores(page)
    assert scores == sorted(scores, reverse=True)
    assert QUERY in page.inner_text("#status")
    footer = page.inner_text("#stats")
    assert f"{len(photos)} images" in footer
    model = httpx.get(f"{page.url.split('?')[0]}stats").json()["model"]
    assert model["model"] in footer

    # The screenshot for the README: every thumbnail on screen loaded, no focus ring, no fade.
    wait_thumbnails_loaded(page, 24)
    page.evaluate("document.activeElement.blur()")
    page.screenshot(path=str(artifacts / "results.png"), animations="disabled")


def test_scrolling_loads_the_next_page(page: Any, gallery: dict[str, int]) -> None:
    search(page, "mountains at dawn")
    assert len(result_ids(page)) == PAGE_SIZE

    # The next page fails once: the error shows at the end of the grid, "Try again" loads it.
    def second_page_fails(route: Any) -> None:
        if route.request.post_data_json["offset"] > 0:
            route.fulfill(status=504, json={"error": "The index took too long to answer.",
                                            "error_type": "upstream_timeout"})
        else:
            route.continue_()

    page.route("**/search/text", second_page_fails)
    page.evaluate("window.scrollTo(0, document.body.scrollHeight)")
    page.wait_for_selector("#more-error", state="visible")
    assert "The index took too long to answer. (upstream_timeout)" in page.inner_text(
        "#more-error"
    )
    assert len(result_ids(page)) == PAGE_SIZE
    page.unroute("**/search/text")
    page.click("#more-retry")
    wait_for_results(page, len(gallery))

    ids = result_ids(page)
    assert len(ids) == len(set(ids)) == len(gallery)
    assert set(ids) == set(gallery.values())
    assert "+" not in page.inner_text("#status")


def test_upload_through_the_file_input_finds_that_photo_first(
    page: Any, photos: list[Photo], gallery: dict[str, int], tmp_path: Path
) -> None:
    chosen = photo(photos, "skimage/chelsea.png")
    upload = tmp_path / chosen.filename
    upload.write_bytes(chosen.data)

    page.set_input_files("#file", str(upload))
    wait_for_results(page)

    assert result_ids(page)[0] == gallery[chosen.path]
    assert result_scores(page)[0] > 0.99
    assert page.is_visible("#query-chip")
    assert chosen.filename in page.inner_text("#query-chip")
    # The chip previews the uploaded image itself.
    assert page.eval_on_selector("#query-chip-img", "i => i.complete && i.naturalWidth") > 0


def test_dropping_or_pasting_a_photo_finds_that_photo_first(
    page: Any, photos: list[Photo], gallery: dict[str, int]
) -> None:
    chosen = photo(photos, "sklearn/china.jpg")
    page.evaluate(
        """([b64, name, type]) => {
            const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
            const dt = new DataTransfer();
            dt.items.add(new File([bytes], name, {type}));
            const target = document.querySelector('main');
            for (const kind of ['dragenter', 'dragover', 'drop']) {
                target.dispatchEvent(
                    new DragEvent(kind, {bubbles: true, cancelable: true, dataTransfer: dt}));
            }
        }""",
        [base64.b64encode(chosen.data).decode(), chosen.filename, chosen.content_type],
    )
    wait_for_results(page)

    assert result_ids(page)[0] == gallery[chosen.path]
    assert result_scores(page)[0] > 0.99
    assert page.is_hidden("#dropzone")
    assert chosen.filename in page.inner_text("#query-chip")

    # Pasting an image searches by it the same way.
    pasted = photo(photos, "skimage/rocket.jpg")
    page.evaluate(
        """([b64, name, type]) => {
            const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
            const dt = new DataTransfer();
            dt.items.add(new File([bytes], name, {type}));
            document.body.dispatchEvent(new ClipboardEvent(
                'paste', {bubbles: true, cancelable: true, clipboardData: dt}));
        }""",
        [base64.b64encode(pasted.data).decode(), pasted.filename, pasted.content_type],
    )
    page.wait_for_function(
        "name => document.querySelector('#query-chip').innerText.includes(name)",
        arg=pasted.filename,
    )
    wait_for_results(page)
    assert result_ids(page)[0] == gallery[pasted.path]


def test_lightbox_shows_the_original_and_more_like_this_searches_by_it(
    page: Any, photos: list[Photo], gallery: dict[str, int], gateway_url: str
) -> None:
    path_of = {i: p for p, i in gallery.items()}
    search(page, "a red motorcycle")
    first, second = result_ids(page)[:2]

    page.click("#results .tile >> nth=0")
    page.wait_for_selector("#lightbox[open]")
    assert page.inner_text("#lb-path") == path_of[first]
    width, height = pixel_size(photo(photos, path_of[first]))
    assert f"{width} × {height}" in page.inner_text("#lb-detail")
    # The original replaces the thumbnail once it has loaded, at its full size.
    page.wait_for_function(
        "id => { const i = document.querySelector('#lb-img');"
        " return i.src.endsWith('/images/' + id) && i.complete && i.naturalWidth > 0; }",
        arg=first,
    )
    assert page.eval_on_selector("#lb-img", "i => [i.naturalWidth, i.naturalHeight]") == [
        width,
        height,
    ]

    page.keyboard.press("ArrowRight")
    assert page.inner_text("#lb-path") == path_of[second]
    page.keyboard.press("ArrowLeft")
    assert page.inner_text("#lb-path") == path_of[first]

    offsets: list[str] = []

    def record_offset(request: Any) -> None:
        if "/similar?" in request.url:
            offsets.extend(parse_qs(urlsplit(request.url).query)["offset"])

    page.on("request", record_offset)
    page.click("#lb-similar")
    page.wait_for_function(f"() => location.search.startsWith('?similar={first}')")
    closest_if_no_good_match(page)
    assert page.is_hidden("#lightbox")
    # The page shows what the API answers for this image (which leaves the image itself out).
    relevance = "all" if query_of(page).get("all") == ["1"] else "auto"
    similar = httpx.get(
        f"{gateway_url}/images/{first}/similar", params={"k": PAGE_SIZE, "relevance": relevance}
    )
    assert result_ids(page) == [r["id"] for r in similar.json()["results"]]
    assert first not in result_ids(page)
    # The end of the grid is out of view, so no second page was asked for: the placeholders
    # brought it into view for a moment, and that report must not load a page nobody scrolled to.
    page.evaluate("() => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")
    assert set(offsets) == {"0"} and len(offsets) == (2 if relevance == "all" else 1)
    page.wait_for_function(
        "name => document.querySelector('#query-chip').innerText.includes(name)",
        arg=path_of[first].rsplit("/", 1)[-1],
    )


def test_back_button_and_shared_links_restore_the_query(
    page: Any, browser: Any, gateway_url: str
) -> None:
    search(page, "red")
    red, red_url = first_page(page), page.url
    search(page, "blue sky")
    blue = first_page(page)
    page.click("#results .tile >> nth=0")
    page.click("#lb-similar")
    page.wait_for_function("() => location.search.startsWith('?similar=')")
    closest_if_no_good_match(page)

    page.go_back()
    page.wait_for_function("() => document.querySelector('#q').value === 'blue sky'")
    wait_for_results(page)
    assert first_page(page) == blue
    assert page.is_hidden("#query-chip")

    page.go_back()
    page.wait_for_function("() => document.querySelector('#q').value === 'red'")
    wait_for_results(page)
    assert query_of(page)["q"] == ["red"]
    assert first_page(page) == red
    assert page.title().startswith("red")

    page.go_forward()
    page.wait_for_function("() => document.querySelector('#q').value === 'blue sky'")
    wait_for_results(page)
    assert first_page(page) == blue

    # A shared link opens the same results in a fresh browser.
    context = browser.new_context()
    try:
        shared = context.new_page()
        shared.goto(red_url)
        wait_for_results(shared)
        assert first_page(shared) == red
        assert shared.input_value("#q") == "red"
    finally:
        context.close()


def test_api_errors_are_shown_with_their_sentence(page: Any, stack: Any, gateway_url: str) -> None:
    # A real error answer of the gateway: no image has this id.
    missing = httpx.get(gateway_url + "/images/987654321/similar")
    assert missing.status_code == 404
    page.goto(gateway_url + "/?similar=987654321")
    text = message(page)
    assert missing.json()["error"] in text
    assert "not_found" in text
    assert page.locator("#message.error").count() == 1
    assert result_ids(page) == []

    # The index service is down (killed for real): the gateway's sentence and type are shown,
    # and "Try again" recovers once the index is back.
    page.goto(gateway_url + "/")
    stack.index.kill()
    try:
        page.fill("#q", "anything")
        page.press("#q", "Enter")
        text = message(page)
        answer = httpx.post(gateway_url + "/search/text", json={"query": "anything"})
    finally:
        stack.index.start()
    assert answer.status_code == 503
    assert answer.json()["error_type"] == "upstream_unavailable"
    assert "upstream_unavailable" in text
    assert answer.json()["error"].split(":")[0] in text
    page.click("#retry")
    closest_if_no_good_match(page)
    assert page.is_hidden("#message")

    # The gateway cannot be reached at all.
    page.route("**/search/text", lambda route: route.abort())
    page.fill("#q", "something else")
    page.press("#q", "Enter")
    assert "Could not reach the Glimpse gateway" in message(page)
    page.unroute("**/search/text")

    # No results is its own state, not an error.
    page.route(
        "**/search/text",
        lambda route: route.fulfill(
            json={"results": [], "total_ms": 1.0, "timings": {"encode_ms": 0.5, "search_ms": 0.5},
                  "model": "m"},
        ),
    )
    page.fill("#q", "nothing at all")
    page.press("#q", "Enter")
    assert "No results" in message(page)
    assert page.locator("#message.error").count() == 0


def test_keyboard_only(page: Any, gallery: dict[str, int]) -> None:
    path_of = {i: p for p, i in gallery.items()}

    def focused(selector: str) -> bool:
        return bool(page.evaluate("s => document.activeElement.matches(s)", selector))

    def tab_to(selector: str, limit: int = 12) -> None:
        for _ in range(limit):
            if focused(selector):
                return
            page.keyboard.press("Tab")
        assert focused(selector), f"Tab never reached {selector}"

    tab_to("#q")
    page.keyboard.type("a rocket launch")
    page.keyboard.press("Enter")
    if no_good_match_or_results(page):
        # "Show closest anyway" is reachable and works by keyboard too.
        tab_to("#show-closest")
        page.keyboard.press("Enter")
    wait_for_results(page)
    ids = result_ids(page)

    tab_to(".tile")
    assert focused('.tile[data-index="0"]')
    outline = page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
    assert outline != "none", "the focused tile shows no focus ring"

    # Arrow keys move through the grid: right, then down a row (6 columns at this width), back up.
    page.keyboard.press("ArrowRight")
    assert focused('.tile[data-index="1"]')
    page.keyboard.press("ArrowDown")
    assert focused('.tile[data-index="7"]')
    page.keyboard.press("ArrowUp")
    page.keyboard.press("ArrowLeft")
    assert focused('.tile[data-index="0"]')

    page.keyboard.press("Enter")
    page.wait_for_selector("#lightbox[open]")
    assert page.evaluate("document.querySelector('#lightbox').contains(document.activeElement)")
    page.keyboard.press("ArrowRight")
    assert page.inner_text("#lb-path") == path_of[ids[1]]
    page.keyboard.press("Escape")
    page.wait_for_selector("#lightbox", state="hidden")
    # Focus goes back to the tile last shown (in the dialog's "close" event, a task later).
    page.wait_for_function("() => document.activeElement.matches('.tile[data-index=\"1\"]')")

    page.keyboard.press("Enter")
    page.wait_for_selector("#lightbox[open]")
    tab_to("#lb-similar")
    page.keyboard.press("Enter")
    page.wait_for_function(f"() => location.search === '?similar={ids[1]}'")
    closest_if_no_good_match(page)

    page.keyboard.press("/")
    assert focused("#q")


def test_phone_layout_has_no_sideways_scroll(
    browser: Any, gateway_url: str, gallery: dict[str, int], artifacts: Path
) -> None:
    context = browser.new_context(
        viewport={"width": 390, "height": 844}, device_scale_factor=2, is_mobile=True,
        has_touch=True, color_scheme="dark",
    )
    try:
        phone = context.new_page()
        phone.goto(gateway_url + "/?all=1&q=" + re.sub(r"\s", "+", QUERY))
        wait_for_results(phone)
        wait_thumbnails_loaded(phone, 15)
        overflow = phone.evaluate(
            "document.documentElement.scrollWidth - document.documentElement.clientWidth"
        )
        assert overflow <= 0
        columns = phone.evaluate(
            "getComputedStyle(document.querySelector('#results'))"
            ".gridTemplateColumns.split(' ').length"
        )
        assert columns == 3
        phone.screenshot(path=str(artifacts / "results-phone-dark.png"), animations="disabled")
    finally:
        context.close()


@pytest.mark.parametrize(
    ("viewport", "scale", "size"),
    [
        ({"width": 412, "height": 915}, 1.75, "?size=240"),  # Lighthouse's phone
        ({"width": 1280, "height": 800}, 2, "/thumbnail"),  # a desktop's 2x screen
    ],
)
def test_the_grid_takes_the_thumbnail_its_tiles_need(
    browser: Any, gateway_url: str, gallery: dict[str, int],
    viewport: dict[str, int], scale: float, size: str,
) -> None:
    context = browser.new_context(viewport=viewport, device_scale_factor=scale)
    try:
        tab = context.new_page()
        tab.goto(gateway_url + "/?all=1&q=" + re.sub(r"\s", "+", QUERY))
        wait_for_results(tab)
        wait_thumbnails_loaded(tab, 9)
        taken = tab.eval_on_selector_all(
            "#results .tile img", "imgs => imgs.filter(i => i.complete).map(i => i.currentSrc)"
        )
        assert taken and all(src.endswith(size) for src in taken), taken
    finally:
        context.close()


def test_no_good_match_and_show_closest_anyway(
    page: Any, gateway_url: str, photos: list[Photo], gallery: dict[str, int], artifacts: Path
) -> None:
    # A text the collection has no good match for, as the API judges it.
    texts = ["a photo of a cat", "mountains at dawn", "red", "blue sky", "a bowl of soup"]
    answers = {
        t: httpx.post(gateway_url + "/search/text", json={"query": t, "relevance": "auto"}).json()
        for t in texts
    }
    text = next(t for t, a in answers.items() if a["no_good_match"])
    assert answers[text]["results"] == []

    page.fill("#q", text)
    page.press("#q", "Enter")
    page.wait_for_selector("#show-closest", state="visible")
    assert page.inner_text("#message-title") == "No good match"
    assert text in page.inner_text("#message-text")
    assert page.inner_text("#status") == "No good match"
    assert page.locator("#results .tile").count() == 0
    page.evaluate("document.activeElement.blur()")
    page.screenshot(path=str(artifacts / "no-good-match.png"), animations="disabled")

    page.click("#show-closest")
    wait_for_results(page)
    assert query_of(page) == {"q": [text], "all": ["1"]}
    assert page.is_hidden("#message")
    closest = httpx.post(
        gateway_url + "/search/text",
        json={"query": text, "relevance": "all", "k": PAGE_SIZE},
    ).json()
    assert result_ids(page)[:PAGE_SIZE] == [r["id"] for r in closest["results"]]
    assert "no good match: the closest shown" in page.inner_text("#status")
    wait_thumbnails_loaded(page, 18)
    page.evaluate("document.activeElement.blur()")
    page.screenshot(path=str(artifacts / "show-closest.png"), animations="disabled")

    # An exact copy of a photo is a good match: the page shows the relevant images only.
    chosen = photo(photos, "skimage/chelsea.png")
    files = {"file": (chosen.filename, chosen.data, chosen.content_type)}
    auto = httpx.post(gateway_url + "/search/image", files=files, data={"relevance": "auto"})
    assert auto.json()["relevant_count"] >= 1 and not auto.json()["no_good_match"]
    assert auto.json()["results"][0]["id"] == gallery[chosen.path]
    assert len(auto.json()["results"]) == auto.json()["relevant_count"] < len(gallery)
