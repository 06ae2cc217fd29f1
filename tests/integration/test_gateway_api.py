"""The public API against the real encoder (tiny model) and index, run as processes.

One stack for the whole file (starting the encoder is the slow part); routes that need another
gateway configuration (API key, small limits, a short timeout) run a second gateway in-process
with ``create_app(Settings(...))`` against the same upstreams. The tests that kill and
restart upstreams come last.
"""

from __future__ import annotations

import hashlib
import io
import os
import signal
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from glimpse.contracts.gateway import ImageMeta, SearchResponse
from glimpse.gateway.config import Settings
from glimpse.gateway.main import create_app
from glimpse.imaging import ImageLimits
from tests.support.stack import Stack, sample_photos, start_stack

API_KEY = "test-key-0123456789"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with start_stack(tmp_path_factory.mktemp("stack")) as running:
        yield running


@pytest.fixture(scope="module")
def client(stack: Stack) -> Iterator[httpx.Client]:
    with stack.client() as c:
        yield c


@pytest.fixture(scope="module")
def photos() -> dict[str, bytes]:
    return sample_photos()


@pytest.fixture(scope="module")
def ingested(client: httpx.Client, photos: dict[str, bytes]) -> dict[str, int]:
    """Every sample photo ingested once, under a folder: name -> id."""
    files = [("files", (f"samples/{name}", data, "image/jpeg")) for name, data in photos.items()]
    response = client.post("/ingest", files=files)
    assert response.status_code == 200, response.text
    items = response.json()["items"]
    assert [i["status"] for i in items] == ["added"] * len(photos), items
    return {name: item["id"] for name, item in zip(photos, items, strict=True)}


@contextmanager
def local_gateway(stack: Stack, **settings: Any) -> Iterator[TestClient]:
    """A gateway in this process with its own settings, on the stack's upstreams."""
    options: dict[str, Any] = {
        "encoder_url": stack.encoder.url,
        "index_url": stack.index.url,
        "media_dir": stack.media_dir,
        **settings,
    }
    with TestClient(create_app(Settings(**options))) as test_client:
        yield test_client


def jpeg(img: Image.Image, quality: int = 85) -> bytes:
    out = io.BytesIO()
    img.convert("RGB").save(out, format="JPEG", quality=quality)
    return out.getvalue()


def noise_image(seed: int, size: tuple[int, int] = (96, 64)) -> bytes:
    rng = np.random.default_rng(seed)
    return jpeg(Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)))


def all_ids(client: httpx.Client | TestClient, query: str = "a photo") -> list[int]:
    response = client.post("/search/text", json={"query": query, "k": 1000})
    assert response.status_code == 200, response.text
    return [r["id"] for r in response.json()["results"]]


# Search ----------------------------------------------------------------------------------------


def test_text_search_shape(client: httpx.Client, ingested: dict[str, int]) -> None:
    response = client.post("/search/text", json={"query": "an astronaut", "k": 5})
    assert response.status_code == 200
    body = response.json()
    SearchResponse.model_validate(body)
    assert set(body) == {
        "results", "relevance", "sort", "relevant_count", "no_good_match", "cutoff_score",
        "total_ms", "timings", "model",
    }
    assert body["model"] == "glimpse-tiny"
    assert set(body["timings"]) == {"encode_ms", "search_ms"}
    results = body["results"]
    assert len(results) == 5
    # The file name astronaut.jpg matches the word: fused first (fusion.py), the rest by score.
    assert results[0]["id"] == ingested["astronaut.jpg"] and results[0]["keyword"] is True
    scores = [r["score"] for r in results[1:]]
    assert scores == sorted(scores, reverse=True) and all(-1.0001 <= s <= 1.0001 for s in scores)
    for r in results:
        assert r["id"] in ingested.values()
        assert r["image_url"] == f"/images/{r['id']}"
        assert r["thumbnail_url"] == f"/images/{r['id']}/thumbnail"
        assert r["path"].startswith("samples/") and r["width"] > 0 and r["height"] > 0


def test_paging_slices_one_ranking(client: httpx.Client, ingested: dict[str, int]) -> None:
    def page(k: int, offset: int) -> list[int]:
        body = {"query": "a cat", "k": k, "offset": offset}
        return [r["id"] for r in client.post("/search/text", json=body).json()["results"]]

    whole = page(12, 0)
    assert page(6, 0) + page(6, 6) == whole
    assert page(5, len(ingested) - 2) == whole[len(ingested) - 2 :] or len(whole) < len(ingested)
    assert page(5, 995) == []  # within the window, past the collection: an empty page


def test_near_duplicate_comes_first(
    client: httpx.Client, ingested: dict[str, int], photos: dict[str, bytes]
) -> None:
    for name in ("astronaut.jpg", "coffee.jpg", "rocket.jpg", "camera.jpg"):
        img = Image.open(io.BytesIO(photos[name]))
        smaller = img.resize((img.width * 3 // 4, img.height * 3 // 4))
        query = jpeg(smaller, quality=60)
        response = client.post(
            "/search/image", files={"file": ("q.jpg", query, "image/jpeg")}, data={"k": "3"}
        )
        assert response.status_code == 200, response.text
        results = response.json()["results"]
        assert results[0]["id"] == ingested[name], (name, results)
        assert results[0]["score"] > 0.9


def test_image_search_paging_and_bad_image(client: httpx.Client, photos: dict[str, bytes]) -> None:
    query = ("q.jpg", photos["coffee.jpg"], "image/jpeg")
    first = client.post("/search/image", files={"file": query}, data={"k": "4"}).json()
    second = client.post(
        "/search/image", files={"file": query}, data={"k": "2", "offset": "2"}
    ).json()
    assert [r["id"] for r in second["results"]] == [r["id"] for r in first["results"][2:4]]
    bad = client.post("/search/image", files={"file": ("x.jpg", b"not an image", "image/jpeg")})
    assert bad.status_code == 422 and bad.json()["error_type"] == "invalid_image"
    missing = client.post("/search/image", data={"k": "3"})
    assert missing.status_code == 422


def test_similar_excludes_the_image_itself(client: httpx.Client, ingested: dict[str, int]) -> None:
    image_id = ingested["coffee.jpg"]
    response = client.get(f"/images/{image_id}/similar", params={"k": 5})
    assert response.status_code == 200
    ids = [r["id"] for r in response.json()["results"]]
    assert len(ids) == 5 and image_id not in ids
    paged = client.get(f"/images/{image_id}/similar", params={"k": 2, "offset": 3}).json()
    assert [r["id"] for r in paged["results"]] == ids[3:5]
    unknown = client.get("/images/987654321/similar")
    assert unknown.status_code == 404 and unknown.json()["error_type"] == "not_found"


def test_weighted_terms(client: httpx.Client, ingested: dict[str, int]) -> None:
    def terms(*items: dict[str, Any], k: int = 30) -> list[dict[str, Any]]:
        response = client.post("/search", json={"terms": list(items), "k": k})
        assert response.status_code == 200, response.text
        results: list[dict[str, Any]] = response.json()["results"]
        return results

    # One text term is the text search (the weight only scales a vector that is renormalised).
    text = client.post("/search/text", json={"query": "a red rocket", "k": 30}).json()["results"]
    same = terms({"text": "a red rocket", "weight": 2.5})
    assert [r["id"] for r in same] == [r["id"] for r in text]
    assert np.allclose([r["score"] for r in same], [r["score"] for r in text], atol=1e-4)

    # One image term is "more like this".
    coffee = ingested["coffee.jpg"]
    similar = client.get(f"/images/{coffee}/similar", params={"k": 30}).json()["results"]
    assert [r["id"] for r in terms({"image_id": coffee, "weight": 1})] == [
        r["id"] for r in similar
    ]

    # A negative text term steers away: the hits' similarity to that text drops.
    to_text = {r["id"]: r["score"] for r in text}
    plain = terms({"image_id": coffee, "weight": 1.0}, k=5)
    steered = terms({"image_id": coffee, "weight": 1.0}, {"text": "a red rocket", "weight": -1.0},
                    k=5)
    assert np.mean([to_text[r["id"]] for r in steered]) < np.mean(
        [to_text[r["id"]] for r in plain]
    )

    cancel = client.post(
        "/search", json={"terms": [{"text": "x", "weight": 1}, {"text": "x", "weight": -1}]}
    )
    assert cancel.status_code == 422
    both = client.post("/search", json={"terms": [{"text": "x", "image_id": 1}]})
    assert both.status_code == 422
    unknown = client.post("/search", json={"terms": [{"image_id": 987654321, "weight": 1}]})
    assert unknown.status_code == 404


# Ingest --------------------------------------------------------------------------------------


def test_ingest_statuses_and_idempotency(client: httpx.Client, ingested: dict[str, int]) -> None:
    before = client.get("/stats").json()["images"]
    fresh = noise_image(1)
    files = [
        ("files", ("new/fresh.jpg", fresh, "image/jpeg")),
        ("files", ("new/fresh-copy.jpg", fresh, "image/jpeg")),
        ("files", ("samples/coffee-again.jpg", sample_photos(3)["coffee.jpg"], "image/jpeg")),
        ("files", ("new/broken.jpg", b"\xff\xd8\xff garbage", "image/jpeg")),
        ("files", ("../escape.jpg", noise_image(2), "image/jpeg")),
        ("files", ("/etc/absolute.jpg", noise_image(3), "image/jpeg")),
    ]
    items = client.post("/ingest", files=files).json()["items"]
    assert [i["status"] for i in items] == [
        "added", "exists", "exists", "rejected", "rejected", "rejected"
    ]
    assert items[0]["id"] == items[1]["id"]
    assert items[2]["id"] == ingested["coffee.jpg"]
    assert items[0]["sha256"] == hashlib.sha256(fresh).hexdigest()
    assert items[3]["error_type"] == "invalid_image" and items[3]["error"]
    assert items[4]["error_type"] == items[5]["error_type"] == "validation_error"
    assert client.get("/stats").json()["images"] == before + 1

    again = client.post("/ingest", files=files[:1]).json()["items"]
    assert again == [{**items[0], "status": "exists"}]
    assert client.get("/stats").json()["images"] == before + 1


def test_a_quote_in_a_file_name_is_kept(client: httpx.Client) -> None:
    # httpx, like a browser, sends '"' as %22 and CR/LF as %0D/%0A in the part's filename.
    files = [
        ("files", ('quotes/say "cheese" 100%.jpg', noise_image(60), "image/jpeg")),
        ("files", ("quotes/two\r\nlines.jpg", noise_image(61), "image/jpeg")),
        ("files", ("quotes/literal%41.jpg", noise_image(62), "image/jpeg")),
    ]
    items = client.post("/ingest", files=files).json()["items"]
    assert items[0]["status"] == "added", items[0]
    assert items[0]["path"] == 'quotes/say "cheese" 100%.jpg'
    meta = client.get(f"/images/{items[0]['id']}/meta").json()
    assert meta["path"] == 'quotes/say "cheese" 100%.jpg'
    # A line break is a control character, refused in a path by name.
    assert items[1]["status"] == "rejected" and items[1]["error_type"] == "validation_error"
    assert items[1]["path"] == "quotes/two\r\nlines.jpg"
    # Only those three escapes are decoded.
    assert items[2]["path"] == "quotes/literal%41.jpg"


def test_a_gateway_that_never_saw_a_file_still_answers_its_id(
    stack: Stack, ingested: dict[str, int], photos: dict[str, bytes]
) -> None:
    # A fresh gateway remembers nothing: the index's /v1/keys/ids answers the known key's id,
    # and no second row appears.
    with local_gateway(stack) as fresh:
        before = fresh.get("/stats").json()["images"]
        files = [("files", ("elsewhere/rocket.jpg", photos["rocket.jpg"], "image/jpeg"))]
        items = fresh.post("/ingest", files=files).json()["items"]
        assert items[0]["status"] == "exists" and items[0]["id"] == ingested["rocket.jpg"]
        assert fresh.get("/stats").json()["images"] == before
        assert fresh.get(f"/images/{items[0]['id']}").content == photos["rocket.jpg"]


def test_ingest_check(
    client: httpx.Client, photos: dict[str, bytes], ingested: dict[str, int]
) -> None:
    known = hashlib.sha256(photos["coffee.jpg"]).hexdigest()
    unknown = hashlib.sha256(b"never uploaded").hexdigest()
    response = client.post("/ingest/check", json={"sha256": [known, unknown, unknown.upper()]})
    assert response.status_code == 200
    assert response.json() == {"missing": [unknown, unknown]}
    bad = client.post("/ingest/check", json={"sha256": ["../../etc"]})
    assert bad.status_code == 422 and bad.json()["error_type"] == "validation_error"


def test_media_is_written_before_the_index_knows_it(client: httpx.Client, stack: Stack) -> None:
    data = noise_image(10)
    item = client.post("/ingest", files=[("files", ("m/x.jpg", data, "image/jpeg"))]).json()
    sha = item["items"][0]["sha256"]
    # A file named by its sha256 (glimpse/gateway/media.py).
    assert (stack.media_dir / "originals" / sha).read_bytes() == data
    meta = client.get(f"/images/{item['items'][0]['id']}/meta").json()
    assert "original" not in meta  # where the store keeps it is not the API's
    # The thumbnail is made on its first request (glimpse/gateway/thumbnails.py), then kept.
    thumbnail = stack.media_dir / "thumbnails" / sha[:2] / sha[2:4] / f"{sha}.webp"
    assert not thumbnail.exists()
    assert client.get(f"/images/{item['items'][0]['id']}/thumbnail").status_code == 200
    assert thumbnail.is_file()
    leftovers = [n for _, _, names in os.walk(stack.media_dir) for n in names if n.endswith(".tmp")]
    assert leftovers == []


# Images --------------------------------------------------------------------------------------


def test_original_thumbnail_and_meta_headers(
    client: httpx.Client, ingested: dict[str, int], photos: dict[str, bytes]
) -> None:
    image_id = ingested["astronaut.jpg"]
    original = client.get(f"/images/{image_id}")
    assert original.status_code == 200
    assert original.content == photos["astronaut.jpg"]
    assert original.headers["content-type"] == "image/jpeg"
    etag = original.headers["etag"]
    assert etag == f'"{hashlib.sha256(photos["astronaut.jpg"]).hexdigest()}"'
    assert "max-age=31536000" in original.headers["cache-control"]
    cached = client.get(f"/images/{image_id}", headers={"If-None-Match": etag})
    assert cached.status_code == 304 and cached.content == b""

    thumb = client.get(f"/images/{image_id}/thumbnail")
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/webp"
    assert max(Image.open(io.BytesIO(thumb.content)).size) <= 320
    assert thumb.headers["etag"] != etag
    again = client.get(
        f"/images/{image_id}/thumbnail", headers={"If-None-Match": f'W/{thumb.headers["etag"]}'}
    )
    assert again.status_code == 304

    meta = client.get(f"/images/{image_id}/meta")
    assert meta.status_code == 200
    record = ImageMeta.model_validate(meta.json())
    assert (record.width, record.height) == Image.open(io.BytesIO(photos["astronaut.jpg"])).size
    assert record.path == "samples/astronaut.jpg" and record.bytes == len(photos["astronaut.jpg"])


@pytest.mark.parametrize("suffix", ["", "/thumbnail"])
def test_head_is_get_without_the_body(
    client: httpx.Client, ingested: dict[str, int], suffix: str
) -> None:
    url = f"/images/{ingested['chelsea.jpg']}{suffix}"
    got, head = client.get(url), client.head(url)
    assert head.status_code == got.status_code == 200
    assert head.content == b""
    for name in ("content-type", "content-length", "etag", "cache-control"):
        assert head.headers[name] == got.headers[name], name
    cached = client.head(url, headers={"If-None-Match": got.headers["etag"]})
    assert cached.status_code == 304


def test_delete_is_final(client: httpx.Client) -> None:
    data = noise_image(20)
    item = client.post("/ingest", files=[("files", ("d/x.jpg", data, "image/jpeg"))]).json()
    image_id = item["items"][0]["id"]
    assert image_id in all_ids(client)
    assert client.get(f"/images/{image_id}/thumbnail").status_code == 200

    assert client.delete(f"/images/{image_id}").status_code == 204
    assert image_id not in all_ids(client)
    for path in ("", "/thumbnail", "/meta", "/similar"):
        response = client.get(f"/images/{image_id}{path}")
        assert response.status_code == 404, path
        assert response.json()["error_type"] == "not_found"
    assert client.delete(f"/images/{image_id}").status_code == 404

    back = client.post("/ingest", files=[("files", ("d/x.jpg", data, "image/jpeg"))]).json()
    assert back["items"][0]["status"] == "added" and back["items"][0]["id"] != image_id


def test_path_traversal_leaks_nothing(client: httpx.Client, stack: Stack) -> None:
    secret = b"TOP-SECRET-CONTENT"
    (stack.root / "secret.txt").write_bytes(secret)
    for path in (
        "/images/..%2F..%2Fsecret.txt",
        "/images/%2e%2e%2f%2e%2e%2fsecret.txt",
        "/images/-1",
        "/images/1%00",
        "/images/999999999",
        "/images/999999999/thumbnail",
        "/originals/../secret.txt",
        "/media/originals",
        "/..%2f..%2fsecret.txt",
    ):
        response = client.get(path)
        assert response.status_code in (404, 422), path
        assert secret not in response.content


# Limits and auth -------------------------------------------------------------------------------


def test_limits(client: httpx.Client, stack: Stack) -> None:
    assert client.post("/search/text", json={"query": "x", "k": 1001}).status_code == 422
    assert client.post("/search/text", json={"query": "x" * 1001}).status_code == 422
    assert client.post("/search/text", json={"query": ""}).status_code == 422
    window = client.post("/search/text", json={"query": "x", "k": 500, "offset": 501})
    assert window.status_code == 422 and "k + offset" in window.json()["error"]
    assert client.get("/images/1/similar", params={"k": 0}).status_code == 422
    garbage = client.post(
        "/search/text", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert garbage.status_code == 422

    with local_gateway(stack, max_files_per_request=2) as gateway:
        assert gateway.get("/readyz").status_code == 200  # the encoder's limits are read
        encoder = gateway.app.state.gateway.encoder  # type: ignore[attr-defined]
        assert encoder.limits_known and encoder.limits.max_bytes == 20 * 1024 * 1024
        # As an encoder run with ENCODER_MAX_FILE_BYTES=4096 would answer /v1/info.
        encoder.limits = ImageLimits(max_bytes=4096, max_pixels=encoder.limits.max_pixels)
        files = [("files", (f"l/{i}.jpg", noise_image(40 + i), "image/jpeg")) for i in range(3)]
        too_many = gateway.post("/ingest", files=files)
        assert too_many.status_code == 413 and too_many.json()["error_type"] == "payload_too_large"
        big = noise_image(50, size=(400, 400))
        assert len(big) > 4096
        items = gateway.post("/ingest", files=[("files", ("l/big.jpg", big, "image/jpeg"))])
        assert items.json()["items"][0]["error_type"] == "payload_too_large"
        query = gateway.post("/search/image", files={"file": ("q.jpg", b"x" * 200_000)})
        assert query.status_code == 413


def test_oversize_bodies_are_refused_before_reading(client: httpx.Client, stack: Stack) -> None:
    # The gateway process's JSON limit is 4 MiB.
    declared = client.post(
        "/search/text", content=b" " * (16 << 20), headers={"content-type": "application/json"}
    )
    assert declared.status_code == 413
    assert declared.json()["error_type"] == "payload_too_large"

    # Chunked, no Content-Length, and never finished: the 413 must come while the body is
    # still incomplete, so the gateway cannot have waited for (or buffered) all of it.
    with socket.create_connection(("127.0.0.1", stack.gateway.port), timeout=10) as sock:
        sock.sendall(
            b"POST /search/text HTTP/1.1\r\nHost: gateway\r\n"
            b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        chunk = b" " * (64 << 10)
        for _ in range(80):  # 5 MiB, one past the limit; the terminating chunk never comes
            sock.sendall(b"%x\r\n%b\r\n" % (len(chunk), chunk))
        answer = b""
        while b"\r\n\r\n" not in answer:
            data = sock.recv(65536)
            if not data:
                break
            answer += data
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b"payload_too_large" in answer or b"content-length" in answer.lower()


@pytest.mark.parametrize("public_read", [True, False])
def test_auth_matrix(stack: Stack, ingested: dict[str, int], public_read: bool) -> None:
    image_id = next(iter(ingested.values()))
    with local_gateway(stack, api_key=API_KEY, public_read=public_read) as gateway:
        routes = [
            (method, path)
            for path, ops in gateway.get("/openapi.json").json()["paths"].items()
            for method in ops
        ]
        writes = {
            ("post", "/ingest"), ("post", "/ingest/check"), ("delete", "/images/{image_id}"),
            ("post", "/admin/index/snapshot"), ("post", "/admin/index/rebuild"),
            ("get", "/admin/libraries"), ("post", "/admin/libraries/{name}/scan"),
            ("post", "/ingest/ids"), ("patch", "/images/{image_id}"),
        }
        # Every admin route needs the key, whichever issue added it.
        writes |= {(method, path) for method, path in routes if path.startswith("/admin/")}
        open_always = {("get", "/healthz"), ("get", "/readyz"), ("get", "/metrics")}
        assert writes <= set(routes) and open_always <= set(routes)
        for method, template in routes:
            path = template.replace("{image_id}", "987654321")
            for headers in ({}, {"Authorization": "Bearer wrong-key-000000"}):
                status = gateway.request(method.upper(), path, headers=headers).status_code
                needs_key = (method, template) in writes or (
                    not public_read and (method, template) not in open_always
                )
                assert (status == 401) == needs_key, (method, template, headers, status)

        key = {"Authorization": f"Bearer {API_KEY}"}
        assert gateway.post("/ingest/check", json={"sha256": []}, headers=key).status_code == 200
        search = gateway.post("/search/text", json={"query": "x"}, headers=key)
        assert search.status_code == 200
        assert gateway.get(f"/images/{image_id}/thumbnail", headers=key).status_code == 200
        denied = gateway.post("/ingest/check", json={"sha256": []})
        assert denied.headers["www-authenticate"] == "Bearer"


# Ops -----------------------------------------------------------------------------------------


def test_stats_health_metrics_docs_and_page(client: httpx.Client, ingested: dict[str, int]) -> None:
    stats = client.get("/stats").json()
    assert stats["images"] >= len(ingested)
    assert stats["model"]["model"] == "glimpse-tiny" and stats["model"]["dim"] == 64
    assert stats["index"]["dim"] == 64 and stats["index"]["kind"]
    assert stats["media_bytes"] > 0
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["ready"] is True
    metrics = client.get("/metrics").text
    assert 'glimpse_http_requests_total{method="POST",route="/search/text"' in metrics
    assert client.get("/docs").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    for path in (
        "/search/text", "/search/image", "/search", "/images/{image_id}/similar", "/ingest",
        "/ingest/check", "/images/{image_id}", "/images/{image_id}/thumbnail",
        "/images/{image_id}/meta", "/stats", "/healthz", "/readyz", "/metrics",
    ):
        assert path in paths, path
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")


# Upstream failures (last: they kill and restart the stack's encoder and index) ---------------
# A stopped encoder or index gives a fast 503, a hung one a 504, and the gateway recovers by
# itself when they come back (pooled connections to the dead process are dropped, not reused).


def timed(call: object) -> tuple[httpx.Response, float]:
    start = time.perf_counter()
    response = call()  # type: ignore[operator]
    return response, time.perf_counter() - start


def wait_until_ok(client: httpx.Client, path: str, timeout: float = 10.0) -> httpx.Response:
    deadline = time.monotonic() + timeout
    while True:
        response = client.get(path)
        if response.status_code == 200 or time.monotonic() > deadline:
            return response
        time.sleep(0.1)


def search_some(client: httpx.Client) -> httpx.Response:
    return client.post("/search/text", json={"query": "a photo", "k": 3})


def test_encoder_down_then_back(stack: Stack, ingested: dict[str, int]) -> None:
    with stack.client() as client:
        # A pooled connection to the encoder exists when it dies.
        image_id = search_some(client).json()["results"][0]["id"]
        stack.encoder.kill()
        try:
            response, took = timed(lambda: search_some(client))
            assert response.status_code == 503, response.text
            assert response.json()["error_type"] == "upstream_unavailable"
            assert "encoder" in response.json()["error"]
            assert took < 2.0
            ready = client.get("/readyz")
            assert ready.status_code == 503 and ready.json()["checks"]["index"] == "ok"
            # Routes that need only the index keep working.
            first = client.post("/search/text", json={"query": "x"})
            assert first.status_code == 503
            assert client.get(f"/images/{image_id}/similar").status_code == 200
            assert client.get(f"/images/{image_id}/thumbnail").status_code == 200
        finally:
            stack.encoder.start()
        assert wait_until_ok(client, "/readyz").status_code == 200
        assert search_some(client).status_code == 200


def test_index_down_then_back(stack: Stack, ingested: dict[str, int]) -> None:
    with stack.client() as client:
        before = [r["id"] for r in search_some(client).json()["results"]]
        stack.index.kill()
        try:
            response, took = timed(lambda: search_some(client))
            assert response.status_code == 503 and took < 2.0
            assert response.json()["error_type"] == "upstream_unavailable"
            assert "index" in response.json()["error"]
            files = [("files", ("x.jpg", sample_photos(1)["astronaut.jpg"], "image/jpeg"))]
            assert client.post("/ingest", files=files).status_code == 503
        finally:
            stack.index.start()
        assert wait_until_ok(client, "/readyz").status_code == 200
        assert [r["id"] for r in search_some(client).json()["results"]] == before


def test_a_stopped_encoder_fails_fast_and_a_slow_one_times_out(
    stack: Stack, ingested: dict[str, int]
) -> None:
    assert stack.encoder.proc is not None
    pid = stack.encoder.proc.pid
    # A read timeout shorter than the patience (0.5 s): the read timeout decides (504).
    slow = {"encoder_timeout_s": 0.25}
    with stack.client() as client, local_gateway(stack, **slow) as impatient:
        assert search_some(client).status_code == 200
        assert impatient.post("/search/text", json={"query": "warm"}).status_code == 200
        os.kill(pid, signal.SIGSTOP)  # the process accepts connections but never answers
        try:
            # The default gateway's liveness probe finds it stopped: 503 well within 2 s.
            response, took = timed(lambda: client.post("/search/text", json={"query": "stop"}))
            assert response.status_code == 503, response.text
            assert response.json()["error_type"] == "upstream_unavailable" and took < 2.0
            response, took = timed(lambda: impatient.post("/search/text", json={"query": "t"}))
            assert response.status_code == 504, response.text
            assert response.json()["error_type"] == "upstream_timeout" and took < 2.0
        finally:
            os.kill(pid, signal.SIGCONT)
        assert search_some(client).status_code == 200
        assert impatient.post("/search/text", json={"query": "after"}).status_code == 200


def test_upstream_4xx_passes_through(stack: Stack) -> None:
    with stack.client() as client:
        direct = httpx.get(f"{stack.index.url}/v1/items/987654321/vector")
        via = client.get("/images/987654321/similar")
        assert via.status_code == direct.status_code == 404
        assert via.json() == direct.json()
