"""GET /duplicates through the real stack (index, tiny encoder, gateway) with planted copies:
the first request starts the background pass and answers "complete": false, then the groups
come with their keeper, a half-size copy among the similar ones; a bad mode or difference is a
422 naming it."""

from __future__ import annotations

import io
import time
from typing import Any

import httpx
import pytest
from PIL import Image

from tests.support.stack import sample_photos, start_stack


def _reencoded(data: bytes, fmt: str, scale: float = 1.0) -> bytes:
    img = Image.open(io.BytesIO(data)).convert("RGB")
    if scale != 1.0:
        img = img.resize((int(img.width * scale), int(img.height * scale)))
    out = io.BytesIO()
    img.save(out, format=fmt)
    return out.getvalue()


def _complete(client: httpx.Client, mode: str) -> dict[str, Any]:
    deadline = time.monotonic() + 60
    while True:
        body = client.get("/duplicates", params={"mode": mode})
        assert body.status_code == 200, body.text
        if body.json()["complete"]:
            return dict(body.json())
        assert time.monotonic() < deadline, body.json()
        time.sleep(0.2)


def test_planted_copies_are_grouped_with_the_largest_as_keeper(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    photos = sample_photos()
    assert len(photos) >= 10
    original = photos["astronaut.jpg"]
    files = [("files", (name, data, "image/jpeg")) for name, data in photos.items()]
    # The same pixels as PNG (other bytes, no metadata), and a half-size copy.
    files += [("files", ("copies/astronaut.png", _reencoded(original, "PNG"), "image/png")),
              ("files", ("copies/small.jpg", _reencoded(original, "JPEG", 0.5), "image/jpeg"))]
    with start_stack(tmp_path_factory.mktemp("duplicates")) as stack, stack.client() as client:
        added = client.post("/ingest", files=files)
        assert added.status_code == 200, added.text
        ids = {i["path"]: i["id"] for i in added.json()["items"]}

        first = client.get("/duplicates", params={"mode": "exact"})
        assert first.status_code == 200 and "progress" in first.json()
        exact = _complete(client, "exact")
        pair = {ids["astronaut.jpg"], ids["copies/astronaut.png"]}
        group = next(g for g in exact["groups"] if pair <= {i["id"] for i in g["items"]})
        assert {i["id"] for i in group["items"]} == pair  # the small copy is not "exact"
        assert group["score"] > 0.99
        # Same pixels: the larger file (the PNG) is kept.
        assert group["keeper"] == ids["copies/astronaut.png"]
        assert all(i["width"] == 512 and i["height"] == 512 for i in group["items"])

        similar = _complete(client, "similar")
        holding = [g for g in similar["groups"] if pair <= {i["id"] for i in g["items"]}]
        assert len(holding) == 1
        # The half-size copy joins them: its pixels match once scaled.
        assert ids["copies/small.jpg"] in {i["id"] for i in holding[0]["items"]}

        bad = client.get("/duplicates", params={"mode": "fuzzy"})
        assert bad.status_code == 422 and "mode" in bad.json()["error"], bad.text
        bad = client.get("/duplicates", params={"mode": "similar", "difference": 2})
        assert bad.status_code == 422 and "difference" in bad.json()["error"], bad.text
