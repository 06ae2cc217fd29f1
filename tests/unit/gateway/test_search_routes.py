"""/search/text and /search/image as the gateway app answers them, with the encoder and the
index replaced by fakes: the answer, the 422s naming their field, access before the body,
the body limits and timeout, and the metrics."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from glimpse.gateway import main
from glimpse.gateway.config import Settings
from glimpse.gateway.main import create_app
from glimpse.imaging import DEFAULT_LIMITS
from tests.support.procs import free_port
from tests.unit.gateway.test_security import call

KEY = "key-for-the-searches"
DIM = 4


class Fake:
    """Answers what a test gives it; anything else (replica sets, limits) is the real
    client's."""

    def __init__(self, real: Any) -> None:
        self.real = real

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


class FakeEncoder(Fake):
    model = "fake-model"
    limits = DEFAULT_LIMITS

    def __init__(self, real: Any) -> None:
        super().__init__(real)
        self.texts: list[str] = []
        self.images: list[tuple[str, bytes]] = []

    async def embed_text(self, texts: Sequence[str]) -> np.ndarray:
        self.texts += texts
        return np.ones((len(texts), DIM), dtype=np.float32)

    async def embed_images(
        self, files: Sequence[tuple[str, bytes]]
    ) -> tuple[list[np.ndarray | None], list[dict[str, Any] | None]]:
        self.images += files
        if files[0][1].startswith(b"not"):
            error = {"error": "The file is not a recognisable image (accepted: JPEG).",
                     "error_type": "invalid_image"}
            return [None], [error]
        return [np.ones(DIM, dtype=np.float32)], [None]

    async def info(self) -> dict[str, Any]:
        return {"model": self.model}


class FakeIndex(Fake):
    async def search(
        self, vector: np.ndarray, k: int, *, exclude_ids: Sequence[int] = (),
        nprobe: int | None = None, filters: dict[str, Any] | None = None,
        detail: int | None = None,
    ) -> list[dict[str, Any]]:
        return [
            {"id": i, "score": 1.0 - i / 100, "path": f"p/{i}.jpg",
             "meta": {"width": 3, "height": 2}}
            for i in range(min(k, 30))
        ]

    async def search_words(
        self, vector: np.ndarray, k: int, words: str | None, *, words_k: int | None = None,
        **kw: Any,
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        return await self.search(vector, k, **kw), []  # the words match nothing here

    async def json(self, method: str, path: str, **kwargs: Any) -> Any:
        return await self.real.json(method, path, **kwargs)


@contextmanager
def gateway(tmp_path: Path, **options: Any) -> Iterator[tuple[TestClient, FakeEncoder]]:
    dead = f"http://127.0.0.1:{free_port()}"
    settings = Settings(
        encoder_url=dead, index_url=dead, media_dir=tmp_path / "media", **options
    )
    app = create_app(settings)
    with TestClient(app, raise_server_exceptions=False) as client:
        state = app.state.gateway
        encoder = FakeEncoder(state.encoder)
        state.encoder, state.index = encoder, FakeIndex(state.index)
        yield client, encoder


@pytest.fixture
def open_gateway(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[TestClient, FakeEncoder]]:
    monkeypatch.setattr(main, "MAX_JSON_BYTES", 2048)
    with gateway(tmp_path) as running:
        yield running


def image_form(**fields: str) -> dict[str, Any]:
    return {"files": {"file": ("q.jpg", b"\xff\xd8 a jpeg", "image/jpeg")}, "data": fields}


def test_the_searches_answer(open_gateway: tuple[TestClient, FakeEncoder]) -> None:
    client, encoder = open_gateway
    text = client.post("/search/text", json={"query": "a cat", "k": 3, "offset": 1})
    assert text.status_code == 200, text.text
    body = text.json()
    assert [r["id"] for r in body["results"]] == [1, 2, 3]
    assert body["model"] == "fake-model" and body["results"][0]["image_url"] == "/images/1"
    assert encoder.texts == ["a cat"]
    image = client.post("/search/image", **image_form(k="2"))
    assert image.status_code == 200, image.text
    assert [r["id"] for r in image.json()["results"]] == [0, 1]
    assert encoder.images == [("q.jpg", b"\xff\xd8 a jpeg")]


@pytest.mark.parametrize(
    ("body", "sentence"),
    [
        ({"k": 5}, "Invalid request: query: Field required."),
        ({"query": "a", "k": True}, "Invalid request: k: Input should be a valid integer"),
        ({"query": "a", "top_k": 5}, "Invalid request: top_k: Extra inputs are not permitted"),
        ({"query": "a", "k": 600, "offset": 600}, "k + offset is 1200"),
        ([1], "Invalid request: body: Input should be an object."),
    ],
)
def test_text_search_422s_name_the_field(
    open_gateway: tuple[TestClient, FakeEncoder], body: Any, sentence: str
) -> None:
    client, encoder = open_gateway
    r = client.post("/search/text", json=body)
    assert r.status_code == 422, r.text
    assert r.json()["error_type"] == "validation_error"
    assert r.json()["error"].startswith(sentence), r.json()["error"]
    assert encoder.texts == []


def test_image_search_422s(open_gateway: tuple[TestClient, FakeEncoder]) -> None:
    client, encoder = open_gateway
    no_file = client.post("/search/image", data={"k": "3"})
    assert no_file.status_code == 422
    assert no_file.json()["error"].startswith("Invalid request: file: ")
    bad_k = client.post("/search/image", **image_form(k="five"))
    assert bad_k.status_code == 422
    assert bad_k.json()["error"].startswith("Invalid request: k: Input should be a valid integer")
    assert encoder.images == []


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"top_k": "5"}, ["top_k"]),
        ({"k": "5", "colour": "red", "size": "big"}, ["colour", "size"]),
    ],
)
def test_image_search_refuses_unknown_fields_by_name(
    open_gateway: tuple[TestClient, FakeEncoder], fields: dict[str, str], named: list[str]
) -> None:
    client, encoder = open_gateway
    r = client.post("/search/image", **image_form(**fields))
    assert r.status_code == 422, r.text
    body = r.json()
    assert body["error_type"] == "validation_error"
    assert body["error"].startswith(f"Invalid request: {named[0]}: Extra inputs are not permitted")
    assert [d["loc"] for d in body["details"]] == [["body", name] for name in named]
    assert encoder.images == []


def test_an_unreadable_query_image_is_named_file(
    open_gateway: tuple[TestClient, FakeEncoder],
) -> None:
    client, _ = open_gateway
    r = client.post("/search/image", files={"file": ("q.jpg", b"not an image", "image/jpeg")})
    assert r.status_code == 422
    assert r.json() == {
        "error": "file: The file is not a recognisable image (accepted: JPEG).",
        "error_type": "invalid_image",
    }


def test_cancelling_terms_are_named_terms(open_gateway: tuple[TestClient, FakeEncoder]) -> None:
    client, _ = open_gateway
    terms = [{"text": "x", "weight": 1.0}, {"text": "y", "weight": -1.0}]
    r = client.post("/search", json={"terms": terms})
    assert r.status_code == 422
    assert r.json()["error"].startswith("terms: The weighted terms cancel out"), r.json()


@pytest.mark.parametrize("public_read", [True, False])
def test_access_is_checked_before_the_body(tmp_path: Path, public_read: bool) -> None:
    with gateway(tmp_path, api_key=KEY, public_read=public_read) as (client, _):
        key = {"Authorization": f"Bearer {KEY}"}
        for headers in ({}, {"Authorization": "Bearer wrong-key-000"}):
            want = 422 if public_read else 401
            text = client.post("/search/text", json={"k": 5}, headers=headers)
            image = client.post("/search/image", data={"k": "3"}, headers=headers)
            assert (text.status_code, image.status_code) == (want, want)
        assert client.post("/search/text", json={"query": "a"}, headers=key).status_code == 200
        assert client.post("/search/image", **image_form(), headers=key).status_code == 200


def test_bodies_over_the_limit_get_413(open_gateway: tuple[TestClient, FakeEncoder]) -> None:
    client, encoder = open_gateway
    big = {"query": "a", "pad": "x" * 4096}
    declared = client.post("/search/text", json=big)
    assert declared.status_code == 413 and declared.headers["connection"] == "close"
    assert declared.json()["error_type"] == "payload_too_large"
    assert "2048 bytes" in declared.json()["error"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
        yield b'{"query": "a", "pad": "'
        yield b"x" * 4096
        yield b'"}'

    chunked = client.post(
        "/search/text", content=chunks(), headers={"content-type": "application/json"}
    )
    assert chunked.status_code == 413 and chunked.json()["error_type"] == "payload_too_large"
    assert encoder.texts == []


@pytest.mark.parametrize("path", ["/search/text", "/search/image"])
async def test_a_stalled_search_body_gets_408(tmp_path: Path, path: str) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    app = create_app(Settings(encoder_url=dead, index_url=dead, media_dir=tmp_path / "media",
                              body_timeout_s=0.2))
    async with app.router.lifespan_context(app):
        status, headers, body, took = await call(app, "POST", path, [b'{"query": '], stall=True)
    assert status == 408 and headers["connection"] == "close"
    assert json.loads(body)["error_type"] == "request_timeout"
    assert 0.2 <= took < 1.2


def test_the_metrics_count_the_searches(open_gateway: tuple[TestClient, FakeEncoder]) -> None:
    client, _ = open_gateway
    client.post("/search/text", json={"query": "a"})
    client.post("/search/text", json={"k": 5})
    client.post("/search/image", **image_form())
    text = client.get("/metrics").text
    for route, status in (("/search/text", 200), ("/search/text", 422), ("/search/image", 200)):
        assert f'route="{route}",service="gateway",status="{status}"' in text, (route, status)


class DetailIndex(FakeIndex):
    """200 candidates, as the index answers them: records (path, meta) for the first
    ``detail`` hits alone. Ranks 1-5 are near copies of the query (the relevant ones), the
    newest of them taken last; the words match ranks 4 and 150 and an item beyond them."""

    async def search_words(
        self, vector: np.ndarray, k: int, words: str | None, *, words_k: int | None = None,
        detail: int | None = None, **kw: Any,
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        distances = [0.0001 * (i + 1) if i < 5 else 0.05 * (i + 1) ** 0.4 for i in range(k)]
        hits = [{"id": i, "score": 1.0 - d, "path": f"p/{i}.jpg",
                 "meta": {"width": 3, "height": 2, "taken_ts": 1_600_000_000 + i}}
                for i, d in enumerate(distances)]
        hits = hits[:detail] + [{"id": h["id"], "score": h["score"]} for h in hits[detail:]]
        found = [{"id": i, "rank": r, "path": f"k/{i}.jpg", "meta": {}}
                 for r, i in enumerate((3, 149, 999), start=1)] if words else []
        return hits, found[:words_k]

    async def search(self, vector: np.ndarray, k: int, **kw: Any) -> list[dict[str, Any]]:
        hits, _ = await self.search_words(vector, k, None, **kw)
        return hits

    async def vector(self, item_id: int, space: Any = None) -> np.ndarray:
        return np.ones(DIM, dtype=np.float32)


@pytest.mark.parametrize("sort", ["score", "newest", "oldest"])
def test_every_hit_a_page_shows_has_its_record(tmp_path: Path, sort: str) -> None:
    with gateway(tmp_path) as (client, _encoder):
        state = client.app.state.gateway  # type: ignore[attr-defined]
        state.index = DetailIndex(state.index.real)
        for relevance in ("all", "auto"):
            for k, offset in ((2, 0), (2, 2), (4, 3)):
                params = {"k": k, "offset": offset, "relevance": relevance, "sort": sort}
                answers = [
                    client.post("/search/text", json={"query": "cat", **params}),
                    client.post("/search/text", json={"query": "cat", "keywords": False,
                                                      **params}),
                    client.post("/search/image", **image_form(**{n: str(v) for n, v in
                                                                 params.items()})),
                    client.get("/images/500/similar", params=params),
                ]
                for answer in answers:
                    assert answer.status_code == 200, answer.text
                    results = answer.json()["results"]
                    assert 0 < len(results) <= k and all(r["path"] for r in results)
                    assert len(results) == k or relevance == "auto"
                    if sort == "newest" and offset == 0 and not results[0].get("keyword"):
                        assert results[0]["id"] == 4  # the newest relevant hit
