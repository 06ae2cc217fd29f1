"""The encoder's HTTP API on the tiny model, in process (TestClient runs the lifespan)."""

from __future__ import annotations

import base64
import re
import time

import numpy as np
import orjson
import pytest
from PIL import Image
from starlette.testclient import TestClient

from glimpse.contracts import image_wire
from glimpse.encoder import api as encoder_api
from glimpse.encoder.main import create_app
from glimpse.encoder.model import ModelLoadError
from glimpse.encoder.text_graphs import TextGraphs
from tests.unit.encoder.conftest import (
    TINY_DIM,
    encoded,
    jpeg_bytes,
    tiny_settings,
    wait_ready,
)
from tests.unit.encoder.test_images import huge_png_header


def _files(*blobs: bytes, name: str = "files") -> list[tuple[str, tuple[str, bytes, str]]]:
    return [(name, (f"f{i}.jpg", blob, "image/jpeg")) for i, blob in enumerate(blobs)]


def _assert_error_body(response, status: int, error_type: str) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error_type"] == error_type
    assert isinstance(body["error"], str) and body["error"]
    return body


def test_text_embeddings_have_model_dim_and_unit_norm(client: TestClient) -> None:
    r = client.post("/v1/embed/text", json={"texts": ["a cat", "a rocket on its pad", "a cat"]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "glimpse-tiny" and body["dim"] == TINY_DIM
    vectors = np.asarray(body["embeddings"], dtype=np.float32)
    assert vectors.shape == (3, TINY_DIM)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(vectors[0], vectors[2])
    assert not np.allclose(vectors[0], vectors[1])


def test_image_embeddings_have_model_dim_and_unit_norm(client: TestClient, photos) -> None:
    blobs = [jpeg_bytes(p) for p in photos.values()]
    r = client.post("/v1/embed/image", files=_files(*blobs))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["errors"] == [None] * len(blobs)
    vectors = np.asarray(body["embeddings"], dtype=np.float32)
    assert vectors.shape == (len(blobs), TINY_DIM)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_base64_encoding_matches_float_lists(client: TestClient, photos) -> None:
    blob = jpeg_bytes(photos["coffee"])
    plain = client.post("/v1/embed/image", files=_files(blob)).json()["embeddings"][0]
    packed = client.post("/v1/embed/image?encoding=base64", files=_files(blob)).json()
    vector = np.frombuffer(base64.b64decode(packed["embeddings"][0]), dtype="<f4")
    np.testing.assert_array_equal(vector, np.asarray(plain, dtype=np.float32))
    as_form = client.post("/v1/embed/image", files=_files(blob), data={"encoding": "base64"})
    assert as_form.json()["embeddings"][0] == packed["embeddings"][0]
    text = client.post("/v1/embed/text", json={"texts": ["x"], "encoding": "base64"}).json()
    assert len(base64.b64decode(text["embeddings"][0])) == 4 * TINY_DIM


def test_one_bad_file_gets_an_error_in_its_slot(client: TestClient, photos) -> None:
    good = jpeg_bytes(photos["rocket"])
    r = client.post("/v1/embed/image", files=_files(good, b"not an image", good[:200], good))
    assert r.status_code == 200, r.text
    body = r.json()
    assert [e is None for e in body["embeddings"]] == [False, True, True, False]
    assert body["errors"][0] is None and body["errors"][3] is None
    assert body["errors"][1]["error_type"] == "invalid_image"
    assert body["errors"][2]["error_type"] == "invalid_image"
    assert body["embeddings"][0] == body["embeddings"][3]


@pytest.mark.parametrize(
    ("blob", "status", "error_type"),
    [
        (b"", 422, "invalid_image"),
        (b"\x00\x01garbage" * 100, 422, "invalid_image"),
        (np.random.default_rng(0).bytes(5000), 422, "invalid_image"),
        (b"P6\n4 4\n255\n" + bytes(48), 415, "unsupported_media_type"),
    ],
    ids=["empty", "garbage", "random", "ppm"],
)
def test_a_request_of_only_bad_files_is_a_4xx_with_the_error_body(
    client: TestClient, blob: bytes, status: int, error_type: str
) -> None:
    r = client.post("/v1/embed/image", files=_files(blob))
    body = _assert_error_body(r, status, error_type)
    assert body["details"]["errors"][0]["error_type"] == error_type


def test_truncated_jpeg_is_refused(client: TestClient, photos) -> None:
    blob = jpeg_bytes(photos["chelsea"])
    r = client.post("/v1/embed/image", files=_files(blob[: len(blob) // 2]))
    _assert_error_body(r, 422, "invalid_image")


def test_decompression_bomb_is_refused_fast(client: TestClient) -> None:
    bomb = huge_png_header(20_000, 20_000)  # declares 400 MP in a few hundred bytes
    start = time.perf_counter()
    r = client.post("/v1/embed/image", files=_files(bomb))
    assert time.perf_counter() - start < 1.0
    _assert_error_body(r, 413, "image_too_large")


def test_limits_give_4xx_never_5xx(client: TestClient, photos) -> None:
    blob = jpeg_bytes(photos["coffee"])
    _assert_error_body(
        client.post("/v1/embed/image", files=_files(*[blob] * 9)), 413, "payload_too_large"
    )
    big = blob + bytes(2_000_001)
    body = client.post("/v1/embed/image", files=_files(blob, big)).json()
    assert body["errors"][1]["error_type"] == "payload_too_large"
    _assert_error_body(
        client.post("/v1/embed/text", json={"texts": ["a"] * 9}), 413, "payload_too_large"
    )
    _assert_error_body(
        client.post("/v1/embed/text", json={"texts": ["a" * 101]}), 422, "validation_error"
    )
    for texts in ([], [" "]):
        r = client.post("/v1/embed/text", json={"texts": texts})
        _assert_error_body(r, 422, "validation_error")
    _assert_error_body(client.post("/v1/embed/image", data={"x": "y"}), 422, "validation_error")
    _assert_error_body(
        client.post("/v1/embed/image", files=_files(blob), data={"encoding": "hex"}),
        422,
        "validation_error",
    )


def test_a_body_without_a_length_is_counted_against_the_request_limit(
    photos, monkeypatch: pytest.MonkeyPatch
) -> None:
    blob = jpeg_bytes(photos["coffee"])
    boundary = "b0undary"
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="a.jpg"\r\n'
        f"Content-Type: image/jpeg\r\n\r\n"
    ).encode() + blob + f"\r\n--{boundary}--\r\n".encode()
    headers = {"content-type": f"multipart/form-data; boundary={boundary}"}

    def chunked(data: bytes):  # an iterator: sent without Content-Length
        yield from (data[i : i + 4096] for i in range(0, len(data), 4096))

    monkeypatch.setattr(encoder_api, "MAX_REQUEST_BYTES", len(body) - 1)
    with TestClient(create_app(tiny_settings())) as small:
        wait_ready(small)
        r = small.post("/v1/embed/image", content=chunked(body), headers=headers)
        assert "content-length" not in {k.lower() for k in r.request.headers}
        error = _assert_error_body(r, 413, "payload_too_large")
        assert f"more than {len(body) - 1} bytes" in error["error"]
    monkeypatch.setattr(encoder_api, "MAX_REQUEST_BYTES", len(body))
    with TestClient(create_app(tiny_settings())) as fits:
        wait_ready(fits)
        r = fits.post("/v1/embed/image", content=chunked(body), headers=headers)
        assert r.status_code == 200, r.text


def test_info_health_and_readiness(client: TestClient) -> None:
    info = client.get("/v1/info").json()
    assert info["model"] == "glimpse-tiny" and info["dim"] == TINY_DIM
    assert info["device"] == "cpu" and info["precision"] == "fp32" and info["pretrained"] == "none"
    assert info["text_graph_batches"] is None  # CUDA graphs only on CUDA
    encoder = client.app.state.runtime.encoder  # type: ignore[attr-defined]
    context = int(encoder.tokenize(["probe"]).shape[1])
    encoder.text_graphs = TextGraphs.eager_for_tests(
        encoder.model.encode_text, context, "cpu", (1, 2, 4)
    )
    try:
        assert client.get("/v1/info").json()["text_graph_batches"] == [1, 2, 4]
    finally:
        encoder.text_graphs = None
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json()["ready"] is True


def test_not_ready_before_warm_up_and_unknown_routes_use_the_error_body() -> None:
    app = create_app(tiny_settings())
    with TestClient(app) as c:
        # The warm-up runs as a task after start-up: let it finish first, or it would set the
        # flag back to True under our feet on a slow machine.
        deadline = time.monotonic() + 60
        while c.get("/readyz").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        app.state.runtime.warmed_up = False  # as while the warm-up is still running
        r = c.get("/readyz")
        assert r.status_code == 503 and r.json()["error_type"] == "not_ready"
        _assert_error_body(c.post("/v1/embed/text", json={"texts": ["a"]}), 503, "not_ready")
        _assert_error_body(c.get("/nope"), 404, "not_found")


def test_missing_weights_stop_the_start_with_a_clear_message(caplog) -> None:
    missing = "/models/missing/open_clip_model.safetensors"
    app = create_app(tiny_settings(pretrained=missing))
    with pytest.raises(ModelLoadError) as info, TestClient(app):
        pass
    assert missing in str(info.value) and "ENCODER_PRETRAINED" in str(info.value)
    assert any("encoder cannot start" in r.getMessage() for r in caplog.records)


def test_image_decoded_in_the_request_equals_its_pil_preprocessing(client: TestClient) -> None:
    # A plain solid image: the service's output must not depend on which path decoded it.
    img = Image.new("RGB", (300, 200), (10, 200, 30))
    png = client.post("/v1/embed/image", files=_files(encoded(img, "PNG"))).json()
    bmp = client.post("/v1/embed/image", files=_files(encoded(img, "BMP"))).json()
    np.testing.assert_allclose(png["embeddings"][0], bmp["embeddings"][0], atol=1e-6)


def test_a_plain_starlette_app_whose_requests_are_counted(client: TestClient) -> None:
    from fastapi import FastAPI
    from starlette.applications import Starlette

    assert isinstance(client.app, Starlette) and not isinstance(client.app, FastAPI)

    def count(status: int) -> float:
        found = re.search(
            r'^glimpse_http_requests_total\{method="POST",route="/v1/embed/image",'
            rf'service="encoder",status="{status}"\}} ([0-9.]+)$',
            client.get("/metrics").text,
            re.M,
        )
        return float(found.group(1)) if found else 0.0

    ok, refused = count(200), count(422)
    blob = jpeg_bytes(Image.new("RGB", (40, 30), (10, 200, 30)))
    assert client.post("/v1/embed/image", files=_files(blob)).status_code == 200
    assert client.post("/v1/embed/image", files=_files(b"junk")).status_code == 422
    assert (count(200), count(422)) == (ok + 1, refused + 1)


def test_every_answer_is_compact_orjson(client: TestClient, photos) -> None:
    blob = jpeg_bytes(photos["coffee"])
    answers = [
        client.post("/v1/embed/image", files=_files(blob, b"junk")),
        client.post("/v1/embed/image?encoding=base64", files=_files(blob)),
        client.post("/v1/embed/text", json={"texts": ["ein Käfer 🐞"]}),
        client.post("/v1/embed/text", json={"texts": []}),
        client.post("/v1/embed/image", files=_files(b"junk")),
        client.get("/v1/info"),
        client.get("/readyz"),
        client.get("/nope"),
        client.put("/v1/info"),
    ]
    assert [r.status_code for r in answers] == [200, 200, 200, 422, 422, 200, 200, 404, 405]
    for r in answers:
        assert r.headers["content-type"] == "application/json"
        # float32 vectors as their shortest decimal form, text as UTF-8, no spaces.
        assert r.content == orjson.dumps(r.json()), r.content[:200]
    floats = answers[0].json()["embeddings"][0]
    # At most 9 significant digits each (a float32's), not a float64's 17 as tolist() gave.
    assert max(len(repr(abs(x)).replace("0.", "", 1)) for x in floats) <= 13


def _turned_jpeg(size: tuple[int, int], orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encoded(Image.new("RGB", size, (200, 40, 40)), "JPEG", exif=exif.tobytes())


def test_each_image_is_answered_with_its_displayed_size(client: TestClient) -> None:
    files = [
        jpeg_bytes(Image.new("RGB", (300, 200), (10, 200, 30))),
        _turned_jpeg((300, 200), 6),  # stored 300x200, shown turned a quarter: 200x300
        _turned_jpeg((300, 200), 3),  # upside down: still 300x200
        b"junk",
        encoded(Image.new("RGBA", (40, 30)), "PNG"),
    ]
    body = client.post("/v1/embed/image", files=_files(*files)).json()
    assert body["sizes"] == [
        {"width": 300, "height": 200},
        {"width": 200, "height": 300},
        {"width": 300, "height": 200},
        None,
        {"width": 40, "height": 30},
    ]


def _wire(*blobs: bytes) -> dict:
    """The keywords of a post in the image wire, as the gateway sends it."""
    body = image_wire.pack([(f"f{i}.jpg", blob) for i, blob in enumerate(blobs)])
    return {"content": body, "headers": {"content-type": image_wire.CONTENT_TYPE}}


def test_the_image_wire_answers_as_the_form_does(client: TestClient, photos) -> None:
    blob = jpeg_bytes(photos["rocket"])
    blobs = (blob, b"junk", _turned_jpeg((300, 200), 6), blob + bytes(2_000_001))
    form = client.post("/v1/embed/image?encoding=base64", files=_files(*blobs))
    wire = client.post("/v1/embed/image?encoding=base64", **_wire(*blobs))
    assert wire.status_code == form.status_code == 200
    assert wire.json() == form.json()
    assert wire.json()["sizes"][2] == {"width": 200, "height": 300}
    assert [e and e["error_type"] for e in wire.json()["errors"]] == [
        None, "invalid_image", None, "payload_too_large"
    ]


@pytest.mark.parametrize(
    ("body", "status", "error_type"),
    [
        (b"", 400, "bad_request"),
        (b"\x00\x00\x00\x09not json!", 400, "bad_request"),
        (b"\x00\x00\x00\x02{}", 400, "bad_request"),
        (image_wire.pack([("a.jpg", b"abc")])[:-1], 400, "bad_request"),
        (image_wire.pack([]), 422, "validation_error"),
        (image_wire.pack([("a.jpg", b"a")] * 9), 413, "payload_too_large"),  # MAX_FILES is 8
    ],
    ids=["empty", "not-json", "no-names", "short", "no-files", "too-many"],
)
def test_a_malformed_image_wire_body_is_a_4xx_with_the_error_body(
    client: TestClient, body: bytes, status: int, error_type: str
) -> None:
    r = client.post(
        "/v1/embed/image", content=body, headers={"content-type": image_wire.CONTENT_TYPE}
    )
    _assert_error_body(r, status, error_type)
