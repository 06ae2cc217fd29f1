"""Issue 25, the image part, through the real processes: what an image may cost the encoder's
memory at the pixel cap (docs/encoder.md, "Decoding memory"), and one hostile file in a
batch is that file's failure alone, named in its answer, never the request's 5xx.

Hostile files: F2 (60,000,000 x 1 PNG, within the pixel cap), F3 (the 109-byte 30,000 x 1
PNG), F4 (a JPEG whose EXIF stores ResolutionUnit as BYTE: a valid picture, now added upright),
F8 (float TIFFs whose StripOffsets entry has a type Pillow cannot use).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from tests.reliability._images import (
    DECODE_BYTES_PER_PIXEL,
    PeakGrowth,
    cap_worst_cases,
    float_tiffs,
    gradient,
    long_thin_pngs,
    mistyped_exif_jpeg,
    png_bytes,
)
from tests.reliability.conftest import API_KEY
from tests.support.procs import ServiceProcess

MiB = 1024 * 1024
# The encoder's default ENCODER_MAX_PIXELS, which the shared stack keeps.
MAX_PIXELS = 60_000_000


def test_decode_memory_is_bounded_at_the_pixel_cap(stack: Any, figure: Any) -> None:
    """Each worst case at the pixel cap, posted alone to the encoder process, raises its
    resident memory by at most DECODE_BYTES_PER_PIXEL x the cap (one decode at a time), and
    so does the whole run over the memory the encoder had before it (nothing is kept)."""
    bound = DECODE_BYTES_PER_PIXEL * MAX_PIXELS
    growth: dict[str, int] = {}
    exact = True
    cases = cap_worst_cases(MAX_PIXELS)
    before = psutil.Process(stack.encoder.proc.pid).memory_info().rss
    highest = before
    with httpx.Client(base_url=stack.encoder.url, timeout=120) as enc:
        for name, data in cases.items():
            with PeakGrowth(stack.encoder.proc.pid) as peak:
                r = enc.post("/v1/embed/image", files=[("files", (name, data, "image/x"))])
            assert r.status_code == 200, (name, r.status_code, r.text[:300])
            assert r.json()["embeddings"][0] is not None, name
            growth[name] = peak.growth
            highest = max(highest, peak.peak)
            exact = exact and peak.exact
    worst = max(growth, key=lambda n: growth[n])
    figure(
        bound_bytes=bound, exact_high_water_mark=exact, worst_case=worst,
        worst_growth_bytes=growth[worst], run_growth_bytes=highest - before,
        encoder_rss_before_bytes=before,
        growth_mb={n: round(g / 1e6) for n, g in growth.items()},
        bytes_per_pixel={n: round(g / MAX_PIXELS, 2) for n, g in growth.items()},
    )
    over = {n: g for n, g in growth.items() if g > bound}
    assert not over, f"over the bound of {bound / MiB:.0f} MiB: {over}"
    assert highest - before <= bound, f"the run kept {(highest - before) / MiB:.0f} MiB"


def _good(seed: int) -> bytes:
    return png_bytes(gradient((64, 48), seed=seed))


def hostile_files() -> dict[str, tuple[bytes, str]]:
    """name -> (bytes, the outcome an ingest item must have)."""
    files = {name: (data, "rejected") for name, data in long_thin_pngs().items()}
    files["f4_exif_resolution_unit_byte.jpg"] = (mistyped_exif_jpeg(), "added")
    for name in ("float32_offsets_float.tif", "float32_offsets_rational.tif",
                 "float32_offsets_ascii.tif", "float32_deflate_corrupt.tif"):
        files[f"f8_{name}"] = (float_tiffs()[name], "rejected")
    return files


HOSTILE = hostile_files()
# A valid hostile file's bytes may be known already (the shared index saw them in another test).
_ACCEPTED = {"added": ("added", "exists"), "rejected": ("rejected",)}


def _ingest_one_hostile(client: httpx.Client, name: str, seed: int) -> dict[str, Any]:
    data, _ = HOSTILE[name]
    goods = [(f"hostile-batch/{seed}-{i}.png", _good(seed + i)) for i in range(2)]
    r = client.post("/ingest", timeout=120, files=[
        ("files", (goods[0][0], goods[0][1], "image/png")),
        ("files", (f"hostile-batch/{name}", data, "application/octet-stream")),
        ("files", (goods[1][0], goods[1][1], "image/png")),
    ])
    assert r.status_code == 200, (name, r.status_code, r.text[:300])
    items = {it["path"]: it for it in r.json()["items"]}
    for path, _ in goods:
        assert items[path]["status"] == "added", items[path]
    item: dict[str, Any] = items[f"hostile-batch/{name}"]
    return item


@pytest.mark.parametrize("name", list(HOSTILE))
def test_one_hostile_file_in_an_ingest_batch(writer: httpx.Client, name: str, figure: Any
                                             ) -> None:
    """The batch answers 200, the good files are added, the hostile one is rejected with a
    sentence naming it (F4 is a valid picture: added)."""
    item = _ingest_one_hostile(writer, name, 2500 + 10 * list(HOSTILE).index(name))
    expected = HOSTILE[name][1]
    figure(status=item["status"], error=item["error"])
    assert item["status"] in _ACCEPTED[expected], item
    if expected == "rejected":
        assert item["error_type"] == "invalid_image", item
        assert name in item["error"], item


@pytest.mark.parametrize("name", list(HOSTILE))
def test_image_search_with_a_hostile_file(reader: httpx.Client, name: str) -> None:
    data, outcome = HOSTILE[name]
    r = reader.post("/search/image", files=[("file", (name, data, "application/octet-stream"))],
                    data={"k": "3"}, timeout=60)
    if outcome == "added":
        assert r.status_code == 200, r.text[:300]
    else:
        assert r.status_code == 422, (r.status_code, r.text[:300])
        assert r.json()["error_type"] == "invalid_image"


@pytest.fixture
def library_gateway(stack: Any, tmp_path: Path) -> Iterator[ServiceProcess]:
    """A gateway indexing a library folder (GATEWAY_LIBRARIES) that holds every hostile file
    beside good ones, with the shared encoder and index."""
    library = tmp_path / "library"
    (library / "hostile").mkdir(parents=True)
    files = {f"hostile/{name}": data for name, (data, _) in HOSTILE.items()}
    files.update({f"good/{i}.png": _good(2700 + i) for i in range(3)})
    settled = time.time() - 60  # not files still being written
    for relative, data in files.items():
        (library / relative).parent.mkdir(parents=True, exist_ok=True)
        (library / relative).write_bytes(data)
        os.utime(library / relative, (settled, settled))
    proc = ServiceProcess("glimpse.gateway.main", {
        "GATEWAY_ENCODER_URL": stack.encoder.url,
        "GATEWAY_INDEX_URL": stack.index.url,
        "GATEWAY_MEDIA_DIR": str(tmp_path / "media"),
        "GATEWAY_LIBRARIES": f"lib={library}",
        "GATEWAY_LIBRARY_WATCH": "off",
        "GATEWAY_API_KEY": API_KEY,
        "GATEWAY_FSYNC": "false",
    }, tmp_path / "library-gateway.log")
    proc.start(90)
    yield proc
    proc.stop()


def test_hostile_files_in_a_library(library_gateway: ServiceProcess, figure: Any) -> None:
    """Each hostile file is its own recorded failure, named; the good ones and F4 are indexed
    and their thumbnails made on request."""
    rejected = {f"hostile/{n}" for n, (_, outcome) in HOSTILE.items() if outcome == "rejected"}
    with httpx.Client(base_url=library_gateway.url, timeout=120,
                      headers={"Authorization": f"Bearer {API_KEY}"}) as gw:
        deadline = time.monotonic() + 300
        while True:
            lib = gw.get("/admin/libraries").json()["libraries"][0]
            if lib["indexed"] + lib["failed"] == len(HOSTILE) + 3 and not lib["pending"]:
                break
            assert time.monotonic() < deadline, lib
            time.sleep(0.5)
        failures = {f["path"]: f["error"] for f in lib["failures"]}
        figure(indexed=lib["indexed"], failures=failures)
        assert set(failures) == rejected, failures
        found = gw.post("/search/text", json={"query": "a photo", "k": 1000}).json()["results"]
        ids = {hit["path"]: hit["id"] for hit in found if hit["path"].startswith("lib/")}
        # F4's bytes may be known already, under another test's path.
        assert {f"lib/good/{i}.png" for i in range(3)} <= set(ids), ids
        for path, item_id in ids.items():
            assert gw.get(f"/images/{item_id}/thumbnail").status_code == 200, path
