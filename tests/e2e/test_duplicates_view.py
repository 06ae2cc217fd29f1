"""The Duplicates view (glimpse/frontend/duplicates.js) in headless chromium, on a stack of its
own with an API key: a planted exact copy (the same pixels as PNG) is grouped with its
original, the answer's keeper is marked, and deleting the other one with the key typed into the
view removes it from the collection."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from tests.e2e.photos import sample_photos
from tests.e2e.test_a11y import axe_violations

pytestmark = pytest.mark.browser

KEY = "dup-view-key"


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory, browser: Any
          ) -> Iterator[tuple[str, dict[str, int]]]:
    """A stack with an API key holding a few photos and a PNG copy of the first one."""
    from tests.support.stack import start_stack

    photos = sample_photos()[:6]
    png = io.BytesIO()
    Image.open(io.BytesIO(photos[0].data)).convert("RGB").save(png, "PNG")
    files = [("files", (p.path, p.data, p.content_type)) for p in photos]
    files.append(("files", ("copies/copy.png", png.getvalue(), "image/png")))
    with start_stack(tmp_path_factory.mktemp("dup-view"), GATEWAY_API_KEY=KEY) as stack:
        url = str(stack.gateway_url).rstrip("/")
        with stack.client(api_key=KEY, timeout=60.0) as client:
            answer = client.post("/ingest", files=files)
            assert answer.status_code == 200, answer.text
            ids = {i["path"]: i["id"] for i in answer.json()["items"]}
            deadline = time.monotonic() + 60
            while not client.get("/duplicates").json()["complete"]:  # the first pass
                assert time.monotonic() < deadline
                time.sleep(0.2)
        yield url, ids


def test_a_planted_group_is_reviewed_and_its_other_copy_deleted(
    browser: Any, keyed: tuple[str, dict[str, int]], artifacts: Path
) -> None:
    url, ids = keyed
    with httpx.Client(base_url=url) as client:
        groups = client.get("/duplicates").json()["groups"]
    assert len(groups) == 1
    pair = {ids[sample_photos()[0].path], ids["copies/copy.png"]}
    assert {i["id"] for i in groups[0]["items"]} == pair
    kept = groups[0]["keeper"]
    (other,) = pair - {kept}
    paths = {i: p for p, i in ids.items()}
    context = browser.new_context(viewport={"width": 1280, "height": 900}, color_scheme="light")
    context.set_default_timeout(15_000)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        page.goto(url + "/")
        page.get_by_role("link", name="Duplicates").click()
        view = page.get_by_role("dialog", name="Duplicates")
        group = view.locator(".dup-group")
        group.first.wait_for()
        assert group.count() == 1
        items = group.locator(".dup-item")
        assert {int(i) for i in items.evaluate_all("els => els.map(e => e.dataset.id)")} == pair
        keeper = group.locator(f'.dup-item[data-id="{kept}"]')
        assert keeper.locator(".dup-badge").text_content() == "Suggested keeper"
        assert keeper.get_by_label("Keep").is_checked()
        assert not group.locator(f'.dup-item[data-id="{other}"]').get_by_label(
            "Keep").is_checked()
        assert paths[kept] in str(keeper.text_content())
        page.wait_for_function(  # the thumbnails have loaded
            "() => [...document.querySelectorAll('.dup-item img')]"
            ".every(i => i.complete && i.naturalWidth > 0)")
        page.screenshot(path=str(artifacts / "duplicates-view.png"), full_page=True)
        assert axe_violations(page) == []

        # Without the key the gateway refuses, and the view says why; nothing goes.
        page.once("dialog", lambda d: d.accept())
        view.get_by_role("button", name="Delete 1 not kept").click()
        page.get_by_text("Deleting needs the gateway's API key").wait_for()
        assert items.count() == 2

        # Keeping none is not offered.
        keeper.get_by_label("Keep").uncheck()
        assert view.get_by_role("button", name="Keep at least one").is_disabled()
        keeper.get_by_label("Keep").check()

        # A dismissed confirmation deletes nothing.
        view.get_by_label("API key (to delete)").fill(KEY)
        page.once("dialog", lambda d: d.dismiss())
        view.get_by_role("button", name="Delete 1 not kept").click()
        assert items.count() == 2

        asked: list[str] = []

        def accept(dialog: Any) -> None:
            asked.append(dialog.message)
            dialog.accept()

        page.once("dialog", accept)
        view.get_by_role("button", name="Delete 1 not kept").click()
        page.get_by_text("Deleted 1 image.").wait_for()
        assert paths[other] in asked[0]
        assert group.count() == 0  # one left: no longer a group
        with httpx.Client(base_url=url) as client:
            assert client.get(f"/images/{other}").status_code == 404
            assert client.get(f"/images/{kept}").status_code == 200
        assert axe_violations(page) == []
        page.keyboard.press("Escape")
        view.wait_for(state="hidden")
        assert "#duplicates" not in page.url
    finally:
        context.close()
    assert errors == [], f"uncaught script errors on the page: {errors}"
