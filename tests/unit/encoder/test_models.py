"""The encoder serving a second model beside its configured one (issue 22): POST /v1/models,
the embed routes' ``model`` parameter, and /v1/info's list of models."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
from starlette.testclient import TestClient

from glimpse.encoder.main import create_app
from tests.unit.encoder.conftest import TINY_DIM, jpeg_bytes, tiny_settings, wait_ready

SECOND = "glimpse-tiny-32"  # model_configs/glimpse-tiny-32.json: another tiny model, dim 32


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    with TestClient(create_app(tiny_settings())) as c:
        wait_ready(c)
        yield c


def _load(client: TestClient, **body: object):  # noqa: ANN202
    return client.post("/v1/models", json=body)


def test_a_second_model_is_served_by_name_beside_the_first(client: TestClient, photos) -> None:
    before = client.post("/v1/embed/text", json={"texts": ["a cat"]}).json()
    answer = _load(client, model=SECOND, pretrained="none")
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"model": SECOND, "pretrained": "none", "dim": 32,
                             "image_size": 64, "default": False}
    assert _load(client, model=SECOND, pretrained="none").status_code == 200  # idempotent

    models = client.get("/v1/info").json()["models"]
    assert [(m["model"], m["dim"], m["default"]) for m in models] == [
        ("glimpse-tiny", TINY_DIM, True), (SECOND, 32, False)]

    text = client.post("/v1/embed/text", params={"model": SECOND},
                       json={"texts": ["a cat"]}).json()
    assert (text["model"], text["dim"], len(text["embeddings"][0])) == (SECOND, 32, 32)
    assert np.isclose(np.linalg.norm(text["embeddings"][0]), 1.0, atol=1e-5)
    image = client.post("/v1/embed/image", params={"model": SECOND},
                        files=[("files", ("a.jpg", jpeg_bytes(photos["coffee"]), "image/jpeg"))])
    assert image.status_code == 200, image.text
    assert (image.json()["model"], len(image.json()["embeddings"][0])) == (SECOND, 32)
    # The configured model answers as before, by default and by name.
    for params in ({}, {"model": "glimpse-tiny"}):
        again = client.post("/v1/embed/text", params=params, json={"texts": ["a cat"]}).json()
        assert again == before


def test_a_model_not_loaded_or_not_loadable_is_a_422_naming_it(client: TestClient) -> None:
    answer = client.post("/v1/embed/text", params={"model": "ViT-H-14"}, json={"texts": ["x"]})
    assert answer.status_code == 422
    assert "'ViT-H-14' is not loaded" in answer.json()["error"]
    assert answer.json()["details"]["model"] == "ViT-H-14"

    unknown = _load(client, model="no-such-model", pretrained="none")
    assert unknown.status_code == 422
    assert "'no-such-model'" in unknown.json()["error"]
    no_weights = _load(client, model=SECOND)
    assert no_weights.status_code == 422 and "needs 'pretrained'" in no_weights.json()["error"]
    assert _load(client, pretrained="none").status_code == 422
    other_weights = _load(client, model="glimpse-tiny", pretrained="/nowhere/w.pt")
    assert other_weights.status_code == 409
    assert "served already" in other_weights.json()["error"]
