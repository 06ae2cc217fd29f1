"""RELIABILITY.md #16: the auth matrix, generated from the gateway's routes.

Figure: every route is in the matrix; with no key configured nothing answers 401; with a key
set, no write route is open without it (missing, wrong, malformed or differently-cased key).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from glimpse.gateway.config import Settings
from glimpse.gateway.main import create_app
from tests.reliability._openapi import RouteCase, app_routes, openapi_routes, request_kwargs
from tests.support.procs import free_port

KEY = "s3cret-key-for-the-matrix"
BAD_CREDENTIALS = {
    "none": {},
    "wrong": {"Authorization": "Bearer not-the-key-at-all"},
    "prefix": {"Authorization": f"Bearer {KEY[:-1]}"},
    "longer": {"Authorization": f"Bearer {KEY}x"},
    "upper": {"Authorization": f"Bearer {KEY.upper()}"},
    "basic": {"Authorization": f"Basic {KEY}"},
    "bare": {"Authorization": KEY},
    "empty_bearer": {"Authorization": "Bearer "},
    "api_key_header": {"X-API-Key": KEY},
}
GOOD = {"Authorization": f"Bearer {KEY}"}


def _client(tmp_path: Path, **settings: object) -> Iterator[TestClient]:
    dead = f"http://127.0.0.1:{free_port()}"  # upstreams down: authorised calls answer 503
    app = create_app(Settings(
        encoder_url=dead, index_url=dead, media_dir=tmp_path / "media", **settings,  # type: ignore[arg-type]
    ))
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


@pytest.fixture
def keyed(tmp_path: Path) -> Iterator[TestClient]:
    yield from _client(tmp_path, api_key=KEY)


def _call(client: TestClient, case: RouteCase, headers: dict[str, str]) -> int:
    kwargs = request_kwargs(client.app, case)  # type: ignore[arg-type]
    return client.request(case.method, case.url, headers=headers, **kwargs).status_code


def test_matrix_covers_every_route(keyed: TestClient, figure) -> None:  # type: ignore[no-untyped-def]
    cases = app_routes(keyed.app)  # type: ignore[arg-type]
    in_matrix = {(c.method, c.path) for c in cases}
    schema = openapi_routes(keyed.app)  # type: ignore[arg-type]
    assert schema <= in_matrix, f"OpenAPI routes missing from the matrix: {schema - in_matrix}"
    writes = [c for c in cases if c.kind == "write"]
    # The routes the design names as writes must be classified so by the rule.
    for method, path in [("POST", "/ingest"), ("POST", "/ingest/check"),
                         ("DELETE", "/images/{image_id}"), ("POST", "/admin/index/snapshot"),
                         ("POST", "/admin/index/rebuild")]:
        assert (method, path) not in in_matrix or any(
            c.method == method and c.path == path for c in writes
        ), f"{method} {path} is not classified as a write route"
    figure(routes_in_app=len(in_matrix), routes_in_openapi=len(schema),
           write_routes=len(writes), routes_missing_from_matrix=len(schema - in_matrix))


def test_write_routes_never_open_when_a_key_is_set(keyed: TestClient, figure) -> None:  # type: ignore[no-untyped-def]
    cases = app_routes(keyed.app)  # type: ignore[arg-type]
    open_writes: list[str] = []
    checked = 0
    for case in cases:
        if case.kind != "write":
            continue
        for name, headers in BAD_CREDENTIALS.items():
            response = keyed.request(case.method, case.url, headers=headers,
                                     **request_kwargs(keyed.app, case))  # type: ignore[arg-type]
            checked += 1
            if response.status_code != 401:
                open_writes.append(f"{case.method} {case.path} [{name}] -> {response.status_code}")
            else:
                body = response.json()
                assert body["error_type"] == "unauthorized", body
                assert response.headers.get("www-authenticate", "").lower().startswith("bearer")
        status = _call(keyed, case, GOOD)
        assert status != 401, f"{case.method} {case.path} refuses the right key"
    figure(write_requests_without_valid_key=checked, write_routes_open=len(open_writes))
    assert not open_writes, "write routes answered without a valid key:\n" + "\n".join(open_writes)


def test_read_routes_open_with_public_read(keyed: TestClient) -> None:
    refused = [
        f"{c.method} {c.path} -> 401"
        for c in app_routes(keyed.app)  # type: ignore[arg-type]
        if c.kind in ("read", "open") and _call(keyed, c, {}) == 401
    ]
    assert not refused, refused


def test_private_read_needs_the_key_everywhere_but_ops(tmp_path: Path) -> None:
    for client in _client(tmp_path, api_key=KEY, public_read=False):
        problems = []
        for case in app_routes(client.app):  # type: ignore[arg-type]
            without = _call(client, case, {})
            with_key = _call(client, case, GOOD)
            if case.kind == "open":
                if without == 401:
                    problems.append(f"{case.method} {case.path} (ops/docs) needs a key")
            elif without != 401:
                problems.append(f"{case.method} {case.path} open without key: {without}")
            if with_key == 401:
                problems.append(f"{case.method} {case.path} refuses the right key")
        assert not problems, problems


def test_no_key_configured_means_no_401(tmp_path: Path, figure) -> None:  # type: ignore[no-untyped-def]
    for client in _client(tmp_path):
        got = {f"{c.method} {c.path}": _call(client, c, {}) for c in app_routes(client.app)}  # type: ignore[arg-type]
        unauthorized = [route for route, status in got.items() if status == 401]
        figure(routes_401_without_configured_key=len(unauthorized))
        assert not unauthorized, unauthorized
        assert not [r for r, s in got.items() if s >= 500 and s not in (502, 503, 504)], got


MALFORMED = {"content": b'{"sha256": ["0', "headers": {"Content-Type": "application/json"}}


def test_the_key_is_checked_before_the_body(keyed: TestClient, figure) -> None:  # type: ignore[no-untyped-def]
    """Issue 25 F11: a malformed body without a key answers 401, not the body's 422."""
    writes = [c for c in app_routes(keyed.app) if c.kind == "write"]  # type: ignore[arg-type]
    got = {
        f"{c.method} {c.path}": keyed.request(
            c.method, c.url, content=MALFORMED["content"], headers=MALFORMED["headers"]
        ).status_code
        for c in writes
    }
    figure(write_routes_sent_a_malformed_body=len(got))
    assert got and all(status == 401 for status in got.values()), got
    # With the key, the same body is the body's problem.
    for route in ("/ingest/check", "/admin/index/rebuild"):
        response = keyed.post(route, content=MALFORMED["content"],
                              headers={**MALFORMED["headers"], **GOOD})
        assert response.status_code == 422, response.text
        assert response.json()["error_type"] == "validation_error"


def test_private_read_checks_the_key_before_the_body(tmp_path: Path) -> None:
    for client in _client(tmp_path, api_key=KEY, public_read=False):
        for route in ("/search", "/search/text", "/search/image"):
            response = client.post(route, **MALFORMED)  # type: ignore[arg-type]
            assert response.status_code == 401, (route, response.text)
