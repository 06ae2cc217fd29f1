"""F1 (issue 25): a multipart body whose Content-Type names an unusable charset answers 415
with a sentence on every public upload route (the gateway's /search/image and /ingest, the
encoder's /v1/embed/image), never 500."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from glimpse.gateway.config import Settings
from glimpse.gateway.main import create_app
from tests.unit.encoder.conftest import tiny_settings, wait_ready

CHARSETS = ["undefined", "punycode"]


def _body(name: str) -> bytes:
    return (
        f'--X\r\nContent-Disposition: form-data; name="{name}"; filename="a.jpg"\r\n'
        "Content-Type: image/jpeg\r\n\r\n"
    ).encode() + b"\xff\xd8\xff\xe0 not really a jpeg\r\n--X--\r\n"


def _assert_refused(client: TestClient, route: str, name: str, charset: str) -> None:
    headers = {"content-type": f"multipart/form-data; boundary=X; charset={charset}"}
    r = client.post(route, content=_body(name), headers=headers)
    assert r.status_code == 415, r.text
    body = r.json()
    assert body["error_type"] == "unsupported_media_type"
    assert body["error"] == f"The form's charset '{charset}' is not supported; send UTF-8."


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    # Upstreams that never answer: the form is refused before any of them is called.
    nowhere = "http://127.0.0.1:9"
    settings = Settings(encoder_url=nowhere, index_url=nowhere,
                        media_dir=Path(tmp_path_factory.mktemp("media")))
    with TestClient(create_app(settings)) as client:
        yield client


@pytest.mark.parametrize("charset", CHARSETS)
def test_gateway_search_image(gateway: TestClient, charset: str) -> None:
    _assert_refused(gateway, "/search/image", "file", charset)


@pytest.mark.parametrize("charset", CHARSETS)
def test_gateway_ingest(gateway: TestClient, charset: str) -> None:
    _assert_refused(gateway, "/ingest", "files", charset)


@pytest.mark.parametrize("charset", CHARSETS)
def test_encoder_embed_image(charset: str) -> None:
    from glimpse.encoder.main import create_app as encoder_app

    with TestClient(encoder_app(tiny_settings())) as client:
        wait_ready(client)
        _assert_refused(client, "/v1/embed/image", "files", charset)
