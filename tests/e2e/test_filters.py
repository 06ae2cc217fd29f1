"""The filter bar in the browser (filters.js): typed syntax and the controls narrow the grid,
the URL holds the filters, and a reload keeps them."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, urlsplit

from tests.e2e.test_frontend import closest_if_no_good_match, query_of, result_ids


def paths_shown(page: Any, gallery: dict[str, int]) -> set[str]:
    by_id = {i: p for p, i in gallery.items()}
    return {by_id[i] for i in result_ids(page)}


def wait_for_url(page: Any, fragment: str) -> None:
    page.wait_for_function("f => location.search.includes(f)", arg=fragment)


def test_typed_and_chosen_filters_narrow_the_grid_and_survive_a_reload(
        page: Any, gallery: dict[str, int]) -> None:
    sklearn = {p for p in gallery if p.startswith("sklearn/")}
    assert 0 < len(sklearn) < len(gallery)

    page.fill("#q", "a photo in:sklearn")
    page.press("#q", "Enter")
    wait_for_url(page, "in=sklearn")
    closest_if_no_good_match(page)
    page.wait_for_function("n => document.querySelectorAll('#results .tile').length === n",
                           arg=len(sklearn))
    assert paths_shown(page, gallery) == sklearn
    assert page.input_value("#q") == "a photo"  # the syntax left the box
    assert query_of(page)["in"] == ["sklearn"] and query_of(page)["q"] == ["a photo"]
    assert page.input_value(".filters [name=in]") == "sklearn"

    page.reload()
    page.wait_for_selector("html[data-ready]", state="attached")
    closest_if_no_good_match(page)
    page.wait_for_function("n => document.querySelectorAll('#results .tile').length === n",
                           arg=len(sklearn))
    assert paths_shown(page, gallery) == sklearn
    assert page.input_value(".filters [name=in]") == "sklearn"

    # The control: another folder narrows the grid to it.
    crops = {p for p in gallery if p.startswith("crops/")}
    page.fill(".filters [name=in]", "crops")
    page.press(".filters [name=in]", "Tab")  # a text field's change fires as it is left
    wait_for_url(page, "in=crops")
    closest_if_no_good_match(page)
    page.wait_for_function(
        "() => [...document.querySelectorAll('#results .tile')].length > 0"
        " && !document.querySelector('#results[aria-busy]')")
    shown = paths_shown(page, gallery)
    assert shown and shown <= crops

    page.click(".filters-clear")
    page.wait_for_function("() => !location.search.includes('in=')")


def test_the_order_control_asks_for_newest_first_and_survives_a_reload(
        page: Any, gallery: dict[str, int], artifacts: Any) -> None:
    page.fill("#q", "a photo")
    page.press("#q", "Enter")
    closest_if_no_good_match(page)
    page.wait_for_selector("#results .tile")
    page.evaluate("document.querySelector('.filters').open = true")
    with page.expect_request(lambda r: r.url.endswith("/search/text")) as sent:
        page.select_option(".filters [name=sort]", "newest")
    assert '"sort":"newest"' in (sent.value.post_data or "").replace(" ", "")
    wait_for_url(page, "sort=newest")
    assert page.text_content(".filters-count") == ""  # an order is not a filter
    closest_if_no_good_match(page)
    page.wait_for_function("() => document.querySelector('#results .tile')"
                           " && !document.querySelector('#results[aria-busy]')")
    page.screenshot(path=str(artifacts / "order-newest.png"), animations="disabled")

    page.reload()
    page.wait_for_selector("html[data-ready]", state="attached")
    assert page.input_value(".filters [name=sort]") == "newest"


def test_more_like_this_keeps_the_filters_in_its_request_its_url_and_a_reload(
        page: Any, gateway_url: str, gallery: dict[str, int]) -> None:
    crops = {p for p in gallery if p.startswith("crops/")}
    page.goto(gateway_url + "/?q=a+photo&in=crops")
    page.wait_for_selector("html[data-ready]", state="attached")
    closest_if_no_good_match(page)
    page.click("#results .tile >> nth=0")
    page.wait_for_selector("#lightbox[open]")
    with page.expect_request(lambda r: "/similar?" in r.url) as sent:
        page.click("#lb-similar")
    assert '"folder":["crops"]' in parse_qs(urlsplit(sent.value.url).query)["filters"][0]
    wait_for_url(page, "similar=")
    assert query_of(page)["in"] == ["crops"]
    closest_if_no_good_match(page)
    assert paths_shown(page, gallery) <= crops

    page.reload()
    page.wait_for_selector("html[data-ready]", state="attached")
    assert page.input_value(".filters [name=in]") == "crops"
    closest_if_no_good_match(page)
    assert "similar" in query_of(page) and paths_shown(page, gallery) <= crops

    # A filter changed while searching by the image searches again, and the URL follows it.
    skimage = {p for p in gallery if p.startswith("skimage/")}
    page.fill(".filters [name=in]", "skimage")
    page.press(".filters [name=in]", "Tab")
    wait_for_url(page, "in=skimage")
    assert "similar" in query_of(page)
    closest_if_no_good_match(page)
    page.wait_for_function("() => !document.querySelector('#results[aria-busy]')")
    assert paths_shown(page, gallery) <= skimage
