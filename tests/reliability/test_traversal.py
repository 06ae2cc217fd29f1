"""RELIABILITY.md #15: path traversal on every route that touches files.

Attacks: '../' and its encoded forms, absolute paths, backslashes, NUL, symlinks out of the
library; on the web page's static files, on the image routes, on ingest file names, and on
a library (GATEWAY_LIBRARIES), which is the one place a path is resolved on disk. Figure:
every answer is 404 or 422 (or a protocol-level 400), and not one byte of a secret file
appears in any answer.
"""

from __future__ import annotations

import hashlib
import http.client
import io
import os
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import numpy as np
import pytest
from PIL import PngImagePlugin

from tests.reliability._images import gradient, png_bytes
from tests.reliability._services import DIM, IndexAPI
from tests.reliability.conftest import API_KEY
from tests.support.procs import ServiceProcess

REFUSED = {400, 404, 422}

TRAVERSALS = [
    "../../../../../../etc/passwd",
    "..%2f..%2f..%2f..%2f..%2fetc%2fpasswd",
    "%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
    "%2e%2e%2f%2e%2e%2f%2e%2e%2fetc%2fpasswd",
    "..%252f..%252f..%252fetc%252fpasswd",
    "....//....//....//etc/passwd",
    "..\\..\\..\\..\\etc\\passwd",
    "..%5c..%5c..%5cetc%5cpasswd",
    "%c0%ae%c0%ae/%c0%ae%c0%ae/etc/passwd",
    "/etc/passwd",
    "//etc/passwd",
    "etc/passwd%00.png",
    "index.html/../../../../etc/passwd",
    "../gateway/config.py",
    "..%2fgateway%2fconfig.py",
    "../pyproject.toml",
    "%2e%2e/pyproject.toml",
    "{secret}",
    "..{secret_rel}",
]


def _raw_get(base_url: str, raw_path: str) -> tuple[int, bytes]:
    """GET with the path sent byte for byte (httpx and browsers would normalise '../')."""
    parts = urlsplit(base_url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        conn.putrequest("GET", raw_path, skip_accept_encoding=True)
        conn.endheaders()
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


@pytest.fixture(scope="module")
def secret(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bytes]:
    """A file outside every served folder, holding a random token (a valid PNG, so an image
    route would serve it if it could be tricked into it)."""
    root = tmp_path_factory.mktemp("secret")
    token = secrets.token_hex(16).encode()
    info = PngImagePlugin.PngInfo()
    info.add_text("secret", token.decode())
    buf = io.BytesIO()
    gradient((20, 20), seed=99).save(buf, "PNG", pnginfo=info)
    path = root / "secret.png"
    path.write_bytes(buf.getvalue())
    return path, token


def _leaks(body: bytes, token: bytes) -> bool:
    return token in body or b"root:x:0:0" in body or b"class Settings" in body or (
        b"[project]" in body
    )


def _probe_paths(secret_path: Path) -> list[str]:
    rel = "/".join([".."] * 12) + str(secret_path)
    return [t.format(secret=str(secret_path), secret_rel=rel) for t in TRAVERSALS]


def test_traversal_on_every_gateway_file_route(stack: Any, secret: tuple[Path, bytes],
                                               figure: Any) -> None:
    secret_path, token = secret
    prefixes = ["/", "/static/", "/images/", "/images/1/", "/frontend/", "/assets/"]
    suffixes = ["", "/thumbnail", "/meta", "/similar"]
    answers: dict[str, int] = {}
    leaked: list[str] = []
    for probe in _probe_paths(secret_path):
        for prefix in prefixes:
            for suffix in suffixes if prefix == "/images/" else [""]:
                path = (prefix + probe.lstrip("/") if not probe.startswith("/") or
                        prefix == "/" else prefix.rstrip("/") + probe) + suffix
                status, body = _raw_get(stack.gateway_url, path)
                answers[path] = status
                if _leaks(body, token):
                    leaked.append(path)
    unexpected = {p: s for p, s in answers.items() if s not in REFUSED}
    figure(requests=len(answers), leaked=len(leaked),
           statuses=sorted({s for s in answers.values()}))
    assert not leaked, leaked
    assert not unexpected, unexpected


def test_traversal_on_the_index_item_routes(stack: Any, secret: tuple[Path, bytes]) -> None:
    secret_path, token = secret
    for probe in _probe_paths(secret_path):
        for prefix in ("/v1/items/", "/v1/items/1/vector/"):
            status, body = _raw_get(stack.index.url, prefix + probe)
            assert status in REFUSED, (prefix + probe, status)
            assert not _leaks(body, token)


BAD_NAMES = [
    "../escape.png", "../../../../tmp/escape.png", "/tmp/escape.png", "a/../../escape.png",
    "..\\..\\escape.png", "C:\\escape.png", "c:/escape.png", "a/\x00/escape.png",
    "ok/\n/escape.png", "..", ".", "", "/",
]


def test_ingest_refuses_unsafe_file_names(writer: httpx.Client, stack: Any,
                                          tmp_path: Path) -> None:
    before = set(Path("/tmp").glob("escape*"))
    for i, name in enumerate(BAD_NAMES):
        data = png_bytes(gradient((10, 10), seed=500 + i))
        r = writer.post("/ingest", files=[("files", (name, data, "image/png"))])
        assert r.status_code < 500, (name, r.status_code, r.text[:200])
        if r.status_code == 200:
            item = r.json()["items"][0]
            # Refused, or cut down to a harmless relative path (multipart parsers keep only
            # the last part of a Windows path, as browsers once sent them).
            if item["status"] != "rejected":
                path = item["path"]
                assert path and not path.startswith("/") and ".." not in path.split("/"), item
                assert "\\" not in path and ":" not in path, item
                assert not any(ord(c) < 32 for c in path), item
    assert set(Path("/tmp").glob("escape*")) == before
    assert not list(stack.root.parent.glob("escape*"))


@pytest.fixture
def library_gateway(stack: Any, tmp_path: Path, secret: tuple[Path, bytes]
                    ) -> Iterator[tuple[ServiceProcess, Path]]:
    """A gateway indexing a library folder in place (nothing copied), beside the shared
    encoder and index: the one place a path is resolved on disk."""
    library = tmp_path / "library"
    (library / "sub").mkdir(parents=True)
    (library / "inside.png").write_bytes(png_bytes(gradient((30, 20), seed=301)))
    settled = time.time() - 60  # not a file still being written
    os.utime(library / "inside.png", (settled, settled))
    (library / "sub" / "link.png").symlink_to(secret[0])
    (library / "dirlink").symlink_to(secret[0].parent, target_is_directory=True)
    proc = ServiceProcess("glimpse.gateway.main", {
        "GATEWAY_ENCODER_URL": stack.encoder.url,
        "GATEWAY_INDEX_URL": stack.index.url,
        "GATEWAY_MEDIA_DIR": str(tmp_path / "media"),
        # A name of its own: the shared index holds other tests' "lib/" items.
        "GATEWAY_LIBRARIES": f"traversal={library}",
        "GATEWAY_LIBRARY_WATCH": "off",
        "GATEWAY_API_KEY": API_KEY,
        "GATEWAY_FSYNC": "false",
    }, tmp_path / "library-gateway.log")
    proc.start(90)
    yield proc, library
    proc.stop()


def test_library_mode_serves_nothing_outside_the_library(
    library_gateway: tuple[ServiceProcess, Path], stack: Any, secret: tuple[Path, bytes],
    figure: Any,
) -> None:
    gateway, library = library_gateway
    secret_path, token = secret
    auth = {"Authorization": f"Bearer {API_KEY}"}
    with httpx.Client(base_url=gateway.url, headers=auth, timeout=30) as gw:
        # The scan takes inside.png only: the symlink and the symlinked folder lead outside.
        deadline = time.monotonic() + 60
        while (lib := gw.get("/admin/libraries").json()["libraries"][0])["indexed"] != 1 \
                or lib["pending"]:
            assert time.monotonic() < deadline, lib
            time.sleep(0.1)
        found = gw.post("/search/text", json={"query": "a photo", "k": 1000}).json()["results"]
        taken = {hit["path"]: hit["id"] for hit in found
                 if hit["path"].startswith("traversal/")}
        assert list(taken) == ["traversal/inside.png"], taken
        served = gw.get(f"/images/{taken['traversal/inside.png']}")
        assert served.status_code == 200 and served.content == (library / "inside.png").read_bytes()
        secret_key = hashlib.sha256(secret_path.read_bytes()).hexdigest()
        asked = gw.post("/ingest/check", json={"sha256": [secret_key]}).json()
        assert asked["missing"] == [secret_key]  # the secret was never indexed
        attempts = {}
        # Rows written straight into the index with hostile paths (an index is internal, but
        # its paths must still never reach the disk unchecked).
        rng = np.random.default_rng(15)
        hostile = [str(secret_path), "../" * 12 + str(secret_path).lstrip("/"),
                   "sub/../../" + secret_path.name, "..\\..\\secret.png", "/etc/passwd"]
        with IndexAPI(stack.index.url) as index:
            vectors = rng.standard_normal((len(hostile), DIM)).astype(np.float32)
            added = index.add([f"{i:064x}" for i in range(len(hostile))], vectors, hostile)
        for path, outcome in zip(hostile, added, strict=True):
            attempts[path] = gw.get(f"/images/{outcome['id']}")
            attempts[path + " (thumbnail)"] = gw.get(f"/images/{outcome['id']}/thumbnail")
    leaked = [n for n, r in attempts.items() if _leaks(r.content, token)]
    statuses = {n: r.status_code for n, r in attempts.items()}
    figure(library_attempts=len(attempts), leaked=len(leaked), statuses=statuses)
    assert not leaked, leaked
    assert all(s in REFUSED for s in statuses.values()), statuses
