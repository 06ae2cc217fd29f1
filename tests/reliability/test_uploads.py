"""RELIABILITY.md #12: an upload over the size limit, also chunked without Content-Length.

Figure: 413 before the whole body is read (bytes the client got to send before the answer,
against the body it meant to send), and the gateway's peak RSS growth while it happens.
The gateway runs as a real process with a small body limit; its upstreams are not needed (the
limit answers before anything is forwarded), so a query image's limit is the encoder's default.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from glimpse.imaging import DEFAULT_MAX_FILE_BYTES
from tests.reliability._upload import RssSampler, multipart_prefix, stream_upload
from tests.support.procs import ServiceProcess, free_port

MiB = 1024 * 1024
BODY_LIMIT = 8 * MiB
FILE_LIMIT = DEFAULT_MAX_FILE_BYTES  # no encoder answers /v1/info here
ATTEMPT = 256 * MiB  # what the client tries to send: 32x the limit
BOUNDARY = "glimpse-reliability-boundary"
MULTIPART = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    root = tmp_path_factory.mktemp("uploads")
    dead = f"http://127.0.0.1:{free_port()}"
    proc = ServiceProcess(
        "glimpse.gateway.main",
        {
            "GATEWAY_MEDIA_DIR": str(root / "media"),
            "GATEWAY_ENCODER_URL": dead,
            "GATEWAY_INDEX_URL": dead,
            "GATEWAY_MAX_BODY_BYTES": str(BODY_LIMIT),
        },
        root / "gateway.log",
    )
    proc.start(60, wait_ready=False)  # not ready without upstreams; alive is enough
    yield proc
    proc.stop()


CASES = [
    # (route, chunked, prefix, limit)
    ("/ingest", True, multipart_prefix(BOUNDARY, "files", "big.jpg", "image/jpeg"), BODY_LIMIT),
    ("/ingest", False, multipart_prefix(BOUNDARY, "files", "big.jpg", "image/jpeg"), BODY_LIMIT),
    ("/search/image", True, multipart_prefix(BOUNDARY, "file", "q.jpg", "image/jpeg"), FILE_LIMIT),
    ("/search/image", False, multipart_prefix(BOUNDARY, "file", "q.jpg", "image/jpeg"),
     FILE_LIMIT),
    ("/search/text", True, b'{"query": "', None),
    ("/ingest/check", True, b'{"sha256": ["', None),
]


@pytest.mark.parametrize(
    ("route", "chunked", "prefix", "limit"),
    CASES,
    ids=[f"{c[0]}-{'chunked' if c[1] else 'content-length'}" for c in CASES],
)
def test_oversized_body_is_refused_before_it_is_read(
    gateway: ServiceProcess, figure, route: str, chunked: bool, prefix: bytes,  # type: ignore[no-untyped-def]
    limit: int | None,
) -> None:
    assert gateway.proc is not None
    headers = MULTIPART if prefix.startswith(b"--") else {"Content-Type": "application/json"}
    with RssSampler(gateway.proc.pid) as rss:
        result = stream_upload(
            gateway.url + route, total=ATTEMPT, chunked=chunked, headers=headers, prefix=prefix
        )
    figure(
        status=result.status,
        attempted_bytes=ATTEMPT,
        sent_before_answer_bytes=result.sent,
        seconds=round(result.seconds, 3),
        rss_growth_bytes=rss.growth,
    )
    assert result.status == 413, (result, gateway.log_tail())
    assert json.loads(result.body)["error_type"] == "payload_too_large"
    # The answer came while the client was still sending: at most the limit plus what the
    # kernel's socket buffers and one read hold, far from the whole body.
    assert result.sent < (limit or BODY_LIMIT) + 16 * MiB, result.sent
    assert result.sent < ATTEMPT // 4
    assert result.seconds < 10
    # Memory stays flat: the gateway never holds the body (it could not hold 256 MiB anyway,
    # but it must not hold even the part under the limit twice over).
    assert rss.growth < 48 * MiB, f"RSS grew by {rss.growth / MiB:.1f} MiB"


def test_gateway_still_serves_after_the_refusals(gateway: ServiceProcess) -> None:
    import httpx

    for _ in range(3):
        stream_upload(gateway.url + "/ingest", total=64 * MiB, headers=MULTIPART,
                      prefix=multipart_prefix(BOUNDARY, "files", "a.jpg", "image/jpeg"))
    assert httpx.get(gateway.url + "/healthz", timeout=5).status_code == 200


def test_small_chunked_upload_is_not_refused(gateway: ServiceProcess, tmp_path: Path) -> None:
    """The limit counts bytes, not the absence of Content-Length: a small chunked body passes
    the limit (and then fails only because the upstreams are down here)."""
    body = (
        multipart_prefix(BOUNDARY, "files", "a.jpg", "image/jpeg")
        + b"\x00" * 1000 + f"\r\n--{BOUNDARY}--\r\n".encode()
    )
    result = stream_upload(gateway.url + "/ingest", total=len(body), headers=MULTIPART,
                           prefix=body, chunk=len(body))
    assert result.status is not None and result.status != 413, result
    assert result.status < 500 or result.status in (502, 503, 504), result
