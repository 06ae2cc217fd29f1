"""RELIABILITY.md #13 and #14: decompression bombs, 100-megapixel images, malformed files and
valid images in odd modes, through the gateway (search and ingest) and the encoder.

Figures: bombs answered 413/422 within a second with flat memory; malformed files never a
5xx; every valid odd mode accepted, EXIF orientation applied.
"""

from __future__ import annotations

import io
import time
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.reliability._images import (
    bombs,
    exif_rotated_jpeg,
    gradient,
    jpeg_bytes,
    malformed_images,
    odd_valid_images,
    upright_of_exif_rotated,
)
from tests.reliability._upload import RssSampler

MiB = 1024 * 1024


def _post_image(client: httpx.Client, route: str, name: str, data: bytes, ct: str
                ) -> httpx.Response:
    field = "files" if route in ("/ingest", "/v1/embed/image") else "file"
    return client.post(route, files=[(field, (name, data, ct))], timeout=30)


@pytest.mark.parametrize("route", ["/search/image", "/ingest"])
def test_bombs_are_refused_fast_with_flat_memory(stack: Any, writer: httpx.Client, route: str,
                                                 figure: Any) -> None:
    slowest = 0.0
    statuses: dict[str, Any] = {}
    with RssSampler(stack.gateway.proc.pid) as gw_rss, \
            RssSampler(stack.encoder.proc.pid) as enc_rss:
        for name, data in bombs().items():
            started = time.monotonic()
            r = _post_image(writer, route, name, data, "application/octet-stream")
            took = time.monotonic() - started
            slowest = max(slowest, took)
            if route == "/ingest" and r.status_code == 200:
                item = r.json()["items"][0]
                statuses[name] = (item["status"], item.get("error_type"))
                assert item["status"] == "rejected", (name, item)
                assert item["error_type"] in ("image_too_large", "invalid_image"), item
            else:
                statuses[name] = r.status_code
                assert r.status_code in (413, 422), (name, r.status_code, r.text[:300])
                assert r.json()["error_type"] in ("image_too_large", "invalid_image")
            assert took < 1.0, f"{name}: answered in {took:.2f}s"
    figure(slowest_s=round(slowest, 3), gateway_rss_growth_bytes=gw_rss.growth,
           encoder_rss_growth_bytes=enc_rss.growth, answers=statuses)
    assert gw_rss.growth < 64 * MiB, f"gateway RSS grew {gw_rss.growth / MiB:.0f} MiB"
    assert enc_rss.growth < 64 * MiB, f"encoder RSS grew {enc_rss.growth / MiB:.0f} MiB"


def test_bombs_straight_to_the_encoder(stack: Any, figure: Any) -> None:
    with httpx.Client(base_url=stack.encoder.url) as enc, \
            RssSampler(stack.encoder.proc.pid) as rss:
        for name, data in bombs().items():
            started = time.monotonic()
            r = _post_image(enc, "/v1/embed/image", name, data, "application/octet-stream")
            took = time.monotonic() - started
            assert r.status_code == 413, (name, r.status_code, r.text[:300])
            assert r.json()["error_type"] == "image_too_large"
            assert took < 1.0, (name, took)
    figure(encoder_rss_growth_bytes=rss.growth)
    assert rss.growth < 64 * MiB


@pytest.mark.parametrize("route", ["/search/image", "/ingest"])
def test_malformed_images_never_5xx(writer: httpx.Client, route: str, figure: Any) -> None:
    bad: list[str] = []
    for name, (data, ct) in malformed_images().items():
        r = _post_image(writer, route, name, data, ct)
        if r.status_code >= 500:
            bad.append(f"{name}: {r.status_code} {r.text[:200]}")
            continue
        if route == "/ingest" and r.status_code == 200:
            item = r.json()["items"][0]
            if item["status"] != "rejected" or not item.get("error"):
                bad.append(f"{name}: ingested as {item}")
        else:
            assert 400 <= r.status_code < 500, (name, r.status_code)
            body = r.json()
            assert body["error"] and body["error_type"], body
    figure(malformed=len(malformed_images()), answered_5xx_or_accepted=len(bad))
    assert not bad, bad


def test_odd_valid_images_are_accepted_and_oriented(writer: httpx.Client, reader: httpx.Client,
                                                    figure: Any) -> None:
    images = odd_valid_images()
    names = list(images)
    items: dict[str, Any] = {}
    for start in range(0, len(names), 8):  # the shared gateway takes 16 files per request
        r = writer.post("/ingest", files=[("files", (f"odd/{n}", *images[n]))
                                          for n in names[start : start + 8]], timeout=60)
        assert r.status_code == 200, r.text
        items.update({it["path"]: it for it in r.json()["items"]})
    refused = {p: it for p, it in items.items() if it["status"] not in ("added", "exists")}
    assert not refused, refused
    for name in ("exif6.jpg", "exif8.jpg", "exif3.jpg"):
        item = items[f"odd/{name}"]
        meta = reader.get(f"/images/{item['id']}/meta").json()
        thumb = reader.get(f"/images/{item['id']}/thumbnail")
        assert thumb.status_code == 200
        with Image.open(io.BytesIO(thumb.content)) as img:
            tw, th = img.size
        if name == "exif3.jpg":  # a half turn keeps the sides
            assert (meta["width"], meta["height"]) == (96, 64), meta
            assert tw > th
        else:  # a quarter turn swaps them: stored 96x64 landscape, shown 64x96 portrait
            assert (meta["width"], meta["height"]) == (64, 96), meta
            assert th > tw, (name, tw, th)
    # Every odd image can then be found by itself (its vector is a real one).
    for name, (data, ct) in images.items():
        found = reader.post("/search/image", files=[("file", (name, data, ct))],
                            data={"k": "3"}, timeout=30)
        assert found.status_code == 200, (name, found.text[:300])
        assert items[f"odd/{name}"]["id"] in [h["id"] for h in found.json()["results"]], name
    figure(odd_modes=len(images), refused=len(refused))


def _embed(enc: httpx.Client, data: bytes) -> np.ndarray:
    r = enc.post("/v1/embed/image", files=[("files", ("x.jpg", data, "image/jpeg"))])
    assert r.status_code == 200, r.text
    return np.asarray(r.json()["embeddings"][0], dtype=np.float32)


def test_encoder_applies_exif_orientation(stack: Any, figure: Any) -> None:
    """The vector of an EXIF-rotated JPEG is the vector of the picture a viewer shows."""
    with httpx.Client(base_url=stack.encoder.url, timeout=30) as enc:
        for orientation in (3, 6, 8):
            rotated = _embed(enc, exif_rotated_jpeg(orientation))
            upright = _embed(enc, upright_of_exif_rotated(orientation))
            ignored = _embed(enc, jpeg_bytes(gradient(), quality=95))  # EXIF not applied
            cos_upright = float(rotated @ upright)
            cos_ignored = float(rotated @ ignored)
            figure(**{f"cos_exif{orientation}_vs_upright": round(cos_upright, 5),
                      f"cos_exif{orientation}_vs_unrotated": round(cos_ignored, 5)})
            assert cos_upright > 0.99, (orientation, cos_upright)
            assert cos_upright > cos_ignored, (orientation, cos_upright, cos_ignored)
