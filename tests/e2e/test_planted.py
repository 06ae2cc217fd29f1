"""A photo planted with a distinctive name and a known month (issue 26): its tile says it was
matched by name or keyword, and the filter bar's date range offers the months from /facets."""

from __future__ import annotations

import json
from calendar import timegm
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from tests.e2e.photos import Photo, _crop
from tests.e2e.test_a11y import axe_violations
from tests.e2e.test_frontend import closest_if_no_good_match, result_ids, wait_for_results

PLANTED = "planted/zanzibar-harbour.jpg"
# Mid-month noon, so the month is March 2021 in any local time zone.
TAKEN = timegm((2021, 3, 15, 12, 0, 0))


@pytest.fixture(scope="module")
def planted(gateway_url: str, gallery: dict[str, int], photos: list[Photo]) -> int:
    """The planted photo's id: a crop of a sample (new bytes), without EXIF, dated by mtime."""
    data = _crop(photos[0], (0.1, 0.1, 0.9, 0.9))
    with httpx.Client(base_url=gateway_url, timeout=60.0) as client:
        answer = client.post("/ingest", files=[("files", (PLANTED, data, "image/jpeg"))],
                             data={"mtimes": json.dumps({PLANTED: TAKEN})})
    assert answer.status_code == 200, answer.text
    item = answer.json()["items"][0]
    assert item["status"] == "added", item
    return int(item["id"])


def tile(page: Any, image_id: int) -> Any:
    return page.locator(f'#results .tile[data-id="{image_id}"]')


def test_a_keyword_hit_says_so_in_words(page: Any, planted: int, gateway_url: str) -> None:
    page.reload()  # the module's first page load came before the planted photo
    page.wait_for_selector("html[data-ready]", state="attached")
    page.fill("#q", "zanzibar")
    page.press("#q", "Enter")
    closest_if_no_good_match(page)
    wait_for_results(page)
    assert planted in result_ids(page)[:3]
    hit = tile(page, planted)
    assert "matched by name or keyword" in (hit.get_attribute("aria-label") or "")
    assert "matched by name or keyword" in (hit.get_attribute("title") or "")
    assert "keyword" in hit.locator(".score").inner_text()
    # A hit only the vectors found (the full ranking shows them) has no such words.
    page.goto(f"{gateway_url}/?q=zanzibar&all=1")
    page.wait_for_selector("html[data-ready]", state="attached")
    wait_for_results(page, 2)
    assert "keyword" in tile(page, planted).locator(".score").inner_text()
    other = tile(page, next(i for i in result_ids(page) if i != planted))
    assert "keyword" not in (other.get_attribute("aria-label") or "")
    assert "keyword" not in other.locator(".score").inner_text()
    assert axe_violations(page) == []


def test_the_date_range_offers_the_facet_months_and_narrows_similar(
        page: Any, planted: int, gallery: dict[str, int], gateway_url: str) -> None:
    page.reload()  # the facets are read as the page loads
    page.wait_for_selector("html[data-ready]", state="attached")
    page.evaluate("document.querySelector('.filters').open = true")
    page.wait_for_selector('.filters [name=after] optgroup[label^="2021"] option[value="2021-03"]',
                           state="attached")
    for name in ("after", "to"):
        months = page.eval_on_selector_all(
            f".filters [name={name}] option", "os => os.map(o => [o.value, o.text])")
        # Only "any" and the one month that holds a dated photo: the sample photos have none.
        assert [value for value, _ in months] == ["", "2021-03"], months
        assert "2021" in months[1][1] and "(1)" in months[1][1]
    assert page.get_attribute('.filters [name=after] optgroup', "label") == "2021 (1 photo)"
    assert axe_violations(page) == []

    # "More like this" with the month chosen: the request carries the filters, and only the
    # planted photo (the only one taken that month) is left.
    other = next(iter(gallery.values()))
    page.goto(f"{gateway_url}/?similar={other}")
    page.wait_for_selector("html[data-ready]", state="attached")
    closest_if_no_good_match(page)
    page.evaluate("document.querySelector('.filters').open = true")
    page.wait_for_selector('.filters [name=after] option[value="2021-03"]', state="attached")
    with page.expect_request(lambda r: "/similar?" in r.url) as sent:
        page.select_option(".filters [name=after]", "2021-03")
    filters = json.loads(parse_qs(urlsplit(sent.value.url).query)["filters"][0])
    assert filters == {"taken_after": "2021-03"}
    closest_if_no_good_match(page)
    page.wait_for_function(
        "id => [...document.querySelectorAll('#results .tile')].map(t => t.dataset.id)"
        ".join() === String(id) && !document.querySelector('#results[aria-busy]')", arg=planted)
