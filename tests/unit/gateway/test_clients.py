"""Upstream error mapping, the stale-connection retry and the liveness probe, over real sockets."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from typing import Any

import numpy as np
import pytest

from glimpse.contracts import image_wire
from glimpse.contracts.errors import GlimpseError
from glimpse.contracts.vectors import encode_vector
from glimpse.gateway import clients
from glimpse.gateway.clients import EncoderClient, checked_wire_vectors
from glimpse.gateway.http import Reply, json_body
from glimpse.gateway.upstream import Upstream, build_client
from glimpse.imaging import DEFAULT_LIMITS, ImageLimits
from tests.unit.gateway.test_http import FakeUpstream, Handler, Request, answer, response


def upstream(url: str, *, read_timeout: float = 5.0, max_connections: int = 4,
             **options: float) -> Upstream:
    client = build_client(
        url, connect_timeout=1.0, read_timeout=read_timeout, max_connections=max_connections
    )
    return Upstream("encoder", client, **options)


async def call(handler: Handler, **options: Any) -> Reply:
    async with FakeUpstream(handler) as server:
        up = upstream(server.url, **options)
        try:
            return await up.request("POST", "/v1/embed/text", json={})
        finally:
            await up.aclose()


def replying(status: int, body: object, headers: dict[str, str] | None = None) -> Handler:
    async def handler(request: Request, writer: asyncio.StreamWriter) -> None:
        await answer(writer, response(status, body, headers))

    return handler


@pytest.mark.parametrize(
    ("status", "body", "want_status", "want_type"),
    [
        (404, {"error": "No item 7.", "error_type": "not_found"}, 404, "not_found"),
        (422, {"error": "Bad.", "error_type": "invalid_vector", "details": [1]}, 422,
         "invalid_vector"),
        (413, {"error": "Too big.", "error_type": "image_too_large"}, 413, "image_too_large"),
        (429, {"error": "Busy.", "error_type": "overloaded"}, 429, "overloaded"),
        (400, b"plain text", 400, "bad_request"),
        (503, {"error": "Loading.", "error_type": "not_ready"}, 503, "upstream_unavailable"),
        (504, {"error": "Slow.", "error_type": "x"}, 504, "upstream_timeout"),
        (500, {"error": "Boom.", "error_type": "internal_error"}, 502, "upstream_error"),
        (507, {"error": "Full.", "error_type": "insufficient_storage"}, 507,
         "insufficient_storage"),
    ],
)
async def test_status_mapping(
    status: int, body: object, want_status: int, want_type: str
) -> None:
    with pytest.raises(GlimpseError) as info:
        await call(replying(status, body))
    assert (info.value.status, info.value.error_type) == (want_status, want_type)
    if 400 <= status < 500 and isinstance(body, dict):
        assert info.value.body() == body  # passed through unchanged


async def test_connection_refused_is_503() -> None:
    with socket.socket() as sock:  # a port nobody listens on any more
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    up = upstream(f"http://127.0.0.1:{port}")
    with pytest.raises(GlimpseError) as info:
        await up.request("GET", "/v1/info")
    await up.aclose()
    assert (info.value.status, info.value.error_type) == (503, "upstream_unavailable")
    assert "encoder" in info.value.message


async def test_read_timeout_is_504() -> None:
    async def slow(request: Request, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(30)

    with pytest.raises(GlimpseError) as info:
        await call(slow, read_timeout=0.2, patience=5.0)
    assert (info.value.status, info.value.error_type) == (504, "upstream_timeout")


async def test_a_malformed_answer_is_502() -> None:
    async def garbage(request: Request, writer: asyncio.StreamWriter) -> None:
        await answer(writer, b"not http at all\r\n\r\n")

    with pytest.raises(GlimpseError) as info:
        await call(garbage)
    assert (info.value.status, info.value.error_type) == (502, "upstream_error")


async def test_invalid_json_is_502() -> None:
    async with FakeUpstream(replying(200, b"{oops")) as server:
        up = upstream(server.url)
        with pytest.raises(GlimpseError) as info:
            await up.json("GET", "/v1/info")
        await up.aclose()
    assert (info.value.status, info.value.error_type) == (502, "upstream_error")


async def test_a_stale_pooled_connection_is_retried_once() -> None:
    async def once_per_connection(request: Request, writer: asyncio.StreamWriter) -> bool:
        if request.number > 1:
            return False  # the upstream dropped the idle connection as it was reused
        await answer(writer, response(200, {"ok": request.connection}))
        return True

    async with FakeUpstream(once_per_connection) as server:
        up = upstream(server.url)
        assert await up.json("GET", "/v1/stats") == {"ok": 1}
        assert await up.json("GET", "/v1/stats") == {"ok": 2}
        await up.aclose()
    assert [(r.connection, r.number) for r in server.requests] == [(1, 1), (1, 2), (2, 1)]


async def test_a_connection_broken_mid_answer_is_not_retried() -> None:
    async def broken(request: Request, writer: asyncio.StreamWriter) -> bool:
        await answer(writer, b"HTTP/1.1 200 OK\r\ncontent-length: 50\r\n\r\n{")
        return False

    with pytest.raises(GlimpseError) as info:
        await call(broken)
    assert (info.value.status, info.value.error_type) == (503, "upstream_unavailable")


async def test_a_stopped_upstream_fails_fast() -> None:
    async def frozen(request: Request, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(30)  # neither the call nor /healthz ever answers

    start = time.perf_counter()
    with pytest.raises(GlimpseError) as info:
        await call(frozen, patience=0.2, probe_timeout=0.3)
    assert (info.value.status, info.value.error_type) == (503, "upstream_unavailable")
    assert time.perf_counter() - start < 1.5


async def test_a_busy_but_alive_upstream_is_waited_for() -> None:
    # One pooled connection, busy with the call: the probe goes outside the pool.
    async def busy(request: Request, writer: asyncio.StreamWriter) -> None:
        if request.target != "/healthz":
            await asyncio.sleep(0.7)
        await answer(writer, response(200, {"done": request.target}))

    async with FakeUpstream(busy) as server:
        up = upstream(server.url, max_connections=1, patience=0.2, probe_timeout=0.3)
        assert await up.json("POST", "/v1/embed/text", json={}) == {"done": "/v1/embed/text"}
        await up.aclose()
    assert sum(r.target == "/healthz" for r in server.requests) >= 2


async def test_a_caller_cancelling_a_slow_call_still_gets_cancelled() -> None:
    # The patience watchdog cancels a call to a dead upstream; a cancellation of the caller's
    # own (a client that went away) must stay a cancellation, not become a 503.
    async def frozen(request: Request, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(30)

    task = asyncio.ensure_future(call(frozen, patience=5.0, probe_timeout=0.3))
    await asyncio.sleep(0.1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_cancelled_call_frees_its_pooled_connection() -> None:
    async def stuck_first(request: Request, writer: asyncio.StreamWriter) -> None:
        if request.connection == 1:
            await asyncio.sleep(30)
        await answer(writer, response(200, {"ok": True}))

    async with FakeUpstream(stuck_first) as server:
        up = upstream(server.url, max_connections=1, patience=5.0)
        task = asyncio.ensure_future(up.request("GET", "/v1/stats"))
        await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await asyncio.wait_for(up.json("GET", "/v1/stats"), 2.0) == {"ok": True}
        await up.aclose()


async def test_paths_resolve_under_the_base_url() -> None:
    async with FakeUpstream(replying(200, {})) as server:
        up = Upstream("index", build_client(
            server.url + "/pre/", connect_timeout=1.0, read_timeout=5.0, max_connections=4
        ))
        await up.request("GET", "/v1/stats")
        await up.request("GET", "/v1/items/7/vector", params={"encoding": "base64"})
        await up.request("GET", "/v1/stats")
        await up.aclose()
    assert [r.target for r in server.requests] == [
        "/pre/v1/stats",
        "/pre/v1/items/7/vector?encoding=base64",
        "/pre/v1/stats",
    ]


@pytest.mark.parametrize(
    "raw",
    [
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"7\r\n{\"a\": 1\r\n1\r\n}\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 8\r\n\r\n{\"a\": 1}",
        b"HTTP/1.1 200 OK\r\n\r\n{\"a\": 1}",  # no length: the body ends at the close
    ],
    ids=["chunked", "connection-close", "until-eof"],
)
async def test_every_http_framing_is_read(raw: bytes) -> None:
    async def framed(request: Request, writer: asyncio.StreamWriter) -> bool:
        await answer(writer, raw)
        return b"chunked" in raw  # the others end with the connection

    async with FakeUpstream(framed) as server:
        up = upstream(server.url)
        assert [await up.json("GET", "/v1/info") for _ in range(2)] == [{"a": 1}] * 2
        await up.aclose()
    assert server.connections == (1 if b"chunked" in raw else 2)


def encoder_answering(embed: Any, seen: list[Request]) -> Handler:
    """A fake encoder whose /v1/embed/image reads the image wire and answers ``embed(files)``."""

    async def handler(request: Request, writer: asyncio.StreamWriter) -> None:
        seen.append(request)
        body = embed(image_wire.unpack(request.body, max_files=256))
        await answer(writer, response(200, body))

    return handler


async def test_images_go_to_the_encoder_on_the_image_wire_and_come_back_with_sizes() -> None:
    names = ['plain.jpg', 'quo"te.png', 'new\r\nline.jpg', 'ünï cödé.webp', '']
    # 420 kB in all: sent as pieces, not joined.
    files = [(name, bytes([i]) * (i + 1) * 20_000) for i, name in enumerate(names)]
    vector = encode_vector(np.ones(4, np.float32) / 2)
    received: list[list[image_wire.WireFile]] = []

    def embed(got: list[image_wire.WireFile]) -> dict[str, Any]:
        received.append(got)
        return {
            "model": "m", "dim": 4,
            "embeddings": [vector, None, vector, vector, vector],
            "errors": [None, {"error": "Bad.", "error_type": "invalid_image"}, None, None, None],
            "sizes": [{"width": 3, "height": 2}, None, {"width": 1, "height": 9},
                      {"width": 5, "height": 5}, {"width": 7, "height": 8}],
        }

    seen: list[Request] = []
    async with FakeUpstream(encoder_answering(embed, seen)) as server:
        client = EncoderClient(build_client(server.url, connect_timeout=1.0, read_timeout=5.0,
                                            max_connections=4))
        try:
            got = await client.embed_images_wire(files)
        finally:
            await client.aclose()
    (request,) = seen
    assert request.headers["content-type"] == image_wire.CONTENT_TYPE
    assert request.target.endswith("/v1/embed/image?encoding=base64")
    assert received == [[image_wire.WireFile(n, d) for n, d in files]]  # names as they are
    assert got.vectors == [vector, None, vector, vector, vector]
    assert got.errors[1] == {"error": "Bad.", "error_type": "invalid_image"}
    assert got.sizes == [(3, 2), None, (1, 9), (5, 5), (7, 8)]


@pytest.mark.parametrize(
    "sizes",
    [
        None,  # an encoder that answers no sizes
        [{"width": 3, "height": 2}],  # too few slots
        [{"width": 3, "height": 2}, None],  # none beside a vector
        [{"width": 3, "height": 2}, {"width": 0, "height": 2}],
        [{"width": 3, "height": 2}, {"width": True, "height": 2}],
        [{"width": 3, "height": 2}, [3, 2]],
    ],
)
async def test_an_answer_without_a_valid_size_beside_each_vector_is_a_502(sizes: Any) -> None:
    vector = encode_vector(np.ones(4, np.float32) / 2)

    def embed(got: list[image_wire.WireFile]) -> dict[str, Any]:
        body = {"model": "m", "dim": 4, "embeddings": [vector] * 2, "errors": [None] * 2}
        return body if sizes is None else {**body, "sizes": sizes}

    async with FakeUpstream(encoder_answering(embed, [])) as server:
        client = EncoderClient(build_client(server.url, connect_timeout=1.0, read_timeout=5.0,
                                            max_connections=4))
        try:
            with pytest.raises(GlimpseError) as caught:
                await client.embed_images_wire([("a.jpg", b"a"), ("b.jpg", b"b")])
        finally:
            await client.aclose()
    assert caught.value.status == 502 and caught.value.error_type == "upstream_error"


async def test_an_answer_that_no_file_could_be_used_is_each_files_error_for_ingest() -> None:
    # The encoder answers a batch of only unusable files with the first one's 4xx and every
    # slot's error in details.errors: ingest rejects each file; a search raises the 4xx.
    errors = [{"error": "The file is not a recognisable image.", "error_type": "invalid_image"},
              {"error": "The image is too large.", "error_type": "image_too_large"}]
    refusals = {
        "all bad": (422, {"error": "files[0]: no.", "error_type": "invalid_image",
                          "details": {"errors": errors}}),
        "too many": (413, {"error": "Too many files.", "error_type": "payload_too_large"}),
    }
    answering: list[tuple[int, dict[str, Any]]] = []

    async def handler(request: Request, writer: asyncio.StreamWriter) -> None:
        await answer(writer, response(*answering[-1]))

    async with FakeUpstream(handler) as server:
        client = EncoderClient(build_client(server.url, connect_timeout=1.0, read_timeout=5.0,
                                            max_connections=4))
        files = [("a.jpg", b"a"), ("b.png", b"b")]
        try:
            answering.append(refusals["all bad"])
            got = await client.embed_images_wire(files)
            assert got == ([None, None], errors, [None, None])
            with pytest.raises(GlimpseError) as caught:
                await client.embed_images(files)
            assert caught.value.status == 422 and caught.value.message == "files[0]: no."
            answering.append(refusals["too many"])
            with pytest.raises(GlimpseError) as caught:
                await client.embed_images_wire(files)
            assert caught.value.status == 413
            answering.append(refusals["all bad"])
            with pytest.raises(GlimpseError) as caught:  # details.errors of another length
                await client.embed_images_wire(files[:1])
            assert caught.value.status == 422
        finally:
            await client.aclose()


def test_wire_vectors_pass_as_they_came_once_checked() -> None:
    rng = np.random.default_rng(0)
    good = [encode_vector(v) for v in rng.standard_normal((3, 8)).astype(np.float32)]
    floats = rng.standard_normal(8).tolist()
    values = [good[0], None, good[1], floats, good[2]]
    checked = checked_wire_vectors(values, 8)
    assert checked == values and all(a is b for a, b in zip(checked, values, strict=True))
    assert checked_wire_vectors([None, None], 8) == [None, None]


@pytest.mark.parametrize(
    ("bad", "says"),
    [
        (encode_vector(np.array([1, np.nan, 0, 0, 0, 0, 0, 0], np.float32)), "NaN"),
        (encode_vector(np.ones(7, np.float32)), "dimension 7"),
        (encode_vector(np.ones(8, np.float32))[:-4] + "!!!=", "base64"),
        ([1.0] * 8 + [np.inf], "dimension 9"),
    ],
)
def test_a_bad_wire_vector_is_refused_by_name(bad: object, says: str) -> None:
    fine = encode_vector(np.ones(8, np.float32))
    with pytest.raises(GlimpseError) as caught:
        checked_wire_vectors([fine, None, bad], 8)
    assert caught.value.error_type == "invalid_vector"
    assert "upstream vector[1]" in caught.value.message and says in caught.value.message


def test_json_body_is_compact_json_of_checked_vectors() -> None:
    rng = np.random.default_rng(1)
    wire = [encode_vector(v) for v in rng.standard_normal((2, 8)).astype(np.float32)]
    checked = checked_wire_vectors([wire[0], None, wire[1]], 8)
    items = [
        {"vector": checked[0], "path": 'a "quoted"\\path/ü.jpg', "key": "ab" * 32,
         "meta": {"width": 1, "content_type": "image/jpeg"}},
        {"vector": [0.5] * 8, "path": "floats.jpg", "key": "cd" * 32, "meta": {}},
        {"vector": checked[2]},
    ]
    body = json_body({"items": items})[0]
    assert body == json.dumps({"items": items}, separators=(",", ":"),
                              ensure_ascii=False).encode()
    assert json.loads(body) == {"items": items}


async def _until(condition: Any, seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "not within the deadline"
        await asyncio.sleep(0.02)


async def test_the_encoders_limits_are_read_at_start_and_when_it_comes_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The gateway holds no image limits of its own: it reads the encoder's /v1/info, retried
    while the encoder is down, and again when a replica that was down answers."""
    monkeypatch.setattr(clients, "LIMITS_RETRY_S", 0.02)
    encoder = {"up": False, "max_file_bytes": 1000}

    async def handler(request: Request, writer: asyncio.StreamWriter) -> None:
        if not encoder["up"]:
            await answer(writer, response(503, {"error": "Loading.", "error_type": "not_ready"}))
        elif request.target.endswith("/v1/info"):
            await answer(writer, response(200, {
                "model": "m", "max_file_bytes": encoder["max_file_bytes"], "max_pixels": 5000,
            }))
        else:
            await answer(writer, response(200, {}))

    async with FakeUpstream(handler) as server:
        client = EncoderClient(build_client(server.url, connect_timeout=1.0, read_timeout=5.0,
                                            max_connections=4))
        try:
            client.read_limits()
            await asyncio.sleep(0.1)  # retrying: the defaults stand meanwhile
            assert (client.limits, client.limits_known) == (DEFAULT_LIMITS, False)
            assert (await client.ready())[0] is False
            encoder["up"] = True
            await _until(lambda: client.limits_known)
            assert (client.limits.max_bytes, client.limits.max_pixels) == (1000, 5000)

            # Restarted with another ENCODER_MAX_FILE_BYTES: a call finds it down, a later one
            # finds it back, and the limits are read again.
            encoder["up"] = False
            with pytest.raises(GlimpseError):
                await client.request("GET", "/readyz")
            encoder.update(up=True, max_file_bytes=2000)
            await client.request("GET", "/readyz")
            await _until(lambda: client.limits.max_bytes == 2000)
        finally:
            await client.aclose()


async def test_readiness_waits_for_the_encoders_limits() -> None:
    async def handler(request: Request, writer: asyncio.StreamWriter) -> None:
        body = {"model": "m", "max_file_bytes": 77, "max_pixels": 88}
        await answer(writer, response(200, body if request.target.endswith("/v1/info") else {}))

    async with FakeUpstream(handler) as server:
        client = EncoderClient(build_client(server.url, connect_timeout=1.0, read_timeout=5.0,
                                            max_connections=4))
        try:
            assert client.limits_known is False
            assert (await client.ready())[0] is True
            assert client.limits == ImageLimits(max_bytes=77, max_pixels=88)
        finally:
            await client.aclose()
