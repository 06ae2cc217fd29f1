"""glimpse/cli/ingest/ against the real services (index, encoder with the tiny model, gateway)
as processes: exact counts, re-runs, resume after an interruption, an index outage, Ctrl-C
on the command line, and the report."""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

from glimpse.cli.ingest import (
    EXIT_INTERRUPTED,
    EXIT_SOME_FAILED,
    IngestSummary,
    RetryPolicy,
    ingest,
)
from tests.support.stack import Stack, start_stack

REPO = Path(__file__).resolve().parents[2]
FORMATS = {"jpg": "JPEG", "jpeg": "JPEG", "JPG": "JPEG", "png": "PNG", "webp": "WEBP",
           "bmp": "BMP", "gif": "GIF", "tif": "TIFF", "tiff": "TIFF"}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with start_stack(tmp_path_factory.mktemp("stack")) as s:
        yield s


def image_bytes(seed: int, fmt: str = "JPEG", size: tuple[int, int] = (40, 30)) -> bytes:
    """A small noisy image, different for every seed (so tests sharing a stack never collide)."""
    rng = random.Random(seed)
    img = Image.frombytes("RGB", size, rng.randbytes(size[0] * size[1] * 3))
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


def write_images(root: Path, seed: int, n: int) -> list[Path]:
    paths = []
    for i in range(n):
        path = root / f"f{i % 3}" / f"g{i % 2}" / f"p{i:03d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(image_bytes(seed * 1000 + i))
        paths.append(path)
    return paths


def stored(stack: Stack, paths: list[Path]) -> set[Path]:
    """The files whose bytes the gateway has."""
    by_hash = {hashlib.sha256(p.read_bytes()).hexdigest(): p for p in paths}
    with stack.client() as client:
        missing = client.post("/ingest/check", json={"sha256": list(by_hash)}).json()["missing"]
    return {p for h, p in by_hash.items() if h not in missing}


def test_a_messy_tree_gives_exact_counts_a_report_and_a_rerun_sends_nothing(
    stack: Stack, tmp_path: Path
) -> None:
    root = tmp_path / "photos"
    good = []
    for i, (ext, fmt) in enumerate(FORMATS.items()):  # 9 images, every format, nested
        path = root / "trips" / f"y{i % 2}" / "day" / f"pic{i}.{ext}"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(image_bytes(100 + i, fmt))
        good.append(path)
    (root / "top.png").write_bytes(image_bytes(200, "PNG"))
    good.append(root / "top.png")
    # Duplicates: the same bytes under other names, in a folder walked after the originals
    # (the walk goes in name order; the first path of some bytes is the one stored).
    (root / "x-copies").mkdir()
    (root / "x-copies" / "again.jpg").write_bytes(good[0].read_bytes())
    (root / "x-copies" / "again.png").write_bytes((root / "top.png").read_bytes())
    # Files that are not images: ignored.
    (root / "notes.txt").write_text("holiday notes")
    (root / "trips" / "list.csv").write_text("a,b\n")
    (root / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    # Broken images: reported.
    bad = {
        "fake.jpg": b"this is text, not a JPEG",
        "empty.png": b"",
        "trips/truncated.jpg": image_bytes(300)[:120],
    }
    for rel, data in bad.items():
        (root / rel).write_bytes(data)
    # A symlink loop and a symlink that leaves the folder.
    (root / "trips" / "y0" / "loop").symlink_to(root)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "private.jpg").write_bytes(image_bytes(400))
    (root / "elsewhere").symlink_to(outside)

    report = tmp_path / "report.jsonl"
    first = ingest([root], stack.gateway_url, report_path=report, batch_size=4)

    assert first.error is None, first.error
    expected = {"images": 15, "skipped": 3, "links_skipped": 2, "duplicates": 2, "already": 0,
                "added": 10, "exists": 0, "rejected": 3, "failed": 0, "pending": 0}
    assert {k: getattr(first, k) for k in expected} == expected, stack.logs()
    assert first.exit_code == EXIT_SOME_FAILED
    lines = [json.loads(line) for line in report.read_text().splitlines()]
    assert {x["relative"] for x in lines} == set(bad)
    assert all(x["status"] == "rejected" and x["reason"] for x in lines)
    assert stored(stack, good) == set(good)
    assert not stored(stack, [outside / "private.jpg"])
    # Each stored path is the file's path relative to the folder given.
    with stack.client() as client:
        meta_paths = set()
        for item_id in range(0, 64):  # this test runs first on its stack: ids are small
            r = client.get(f"/images/{item_id}/meta")
            if r.status_code == 200:
                meta_paths.add(r.json()["path"])
    assert meta_paths == {p.relative_to(root).as_posix() for p in good}

    second = ingest([root], stack.gateway_url, report_path=report, batch_size=4)
    assert (second.already, second.added, second.exists, second.batches) == (10, 0, 0, 0)
    assert (second.rejected, second.failed, second.bytes_uploaded) == (3, 0, 0)
    assert {json.loads(x)["relative"] for x in report.read_text().splitlines()} == set(bad)


def test_an_interrupted_run_resumes(stack: Stack, tmp_path: Path) -> None:
    paths = write_images(tmp_path / "p", seed=2, n=12)
    partial = ingest([tmp_path / "p"], stack.gateway_url, batch_size=4, max_batches=1)
    assert partial.interrupted and partial.exit_code == EXIT_INTERRUPTED
    assert (partial.added, partial.pending) == (4, 8)
    assert len(stored(stack, paths)) == 4

    rest = ingest([tmp_path / "p"], stack.gateway_url, batch_size=4)
    assert (rest.already, rest.added, rest.pending, rest.exit_code) == (4, 8, 0, 0)
    assert stored(stack, paths) == set(paths)


def test_an_index_outage_loses_nothing(stack: Stack, tmp_path: Path) -> None:
    """The index dies (kill -9) after the first batch and comes back a second later; the
    gateway answers 503 meanwhile, the script backs off, and every file ends up stored.
    (The encoder works the same way but takes ~30 s to restart on this shared CPU.)"""
    paths = write_images(tmp_path / "p", seed=3, n=12)
    process = stack.index
    restarted = threading.Event()
    outage: list[str] = []

    def restart_later() -> None:
        time.sleep(1.0)
        process.start(timeout=120)
        restarted.set()

    def on_batch(summary: IngestSummary) -> None:
        if not outage:
            outage.append("killed")
            process.kill()
            threading.Thread(target=restart_later, daemon=True).start()

    summary = ingest(
        [tmp_path / "p"], stack.gateway_url, batch_size=2, concurrency=2, on_batch=on_batch,
        retry=RetryPolicy(attempts=60, base_s=0.2, max_s=1.0),
    )
    assert restarted.wait(120), stack.logs()
    assert (summary.added, summary.failed, summary.rejected) == (12, 0, 0), summary.failures
    assert summary.retries > 0
    assert stored(stack, paths) == set(paths)


class DelayingProxy(http.server.ThreadingHTTPServer):
    """Forwards to the gateway, holding each /ingest answer back a while (a slow network),
    so a test can interrupt a run in its middle."""

    def __init__(self, upstream: str, delay_s: float) -> None:
        self.upstream, self.delay_s = upstream, delay_s
        self.answered = threading.Event()
        super().__init__(("127.0.0.1", 0), _ProxyHandler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _ProxyHandler(http.server.BaseHTTPRequestHandler):
    server: DelayingProxy

    def do_POST(self) -> None:  # noqa: N802 - the name http.server calls
        body = self.rfile.read(int(self.headers["Content-Length"]))
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host",)}
        r = httpx.post(self.server.upstream + self.path, content=body, headers=headers, timeout=60)
        if self.path == "/ingest":
            time.sleep(self.server.delay_s)
        self.send_response(r.status_code)
        self.send_header("Content-Type", r.headers.get("content-type", "application/json"))
        self.send_header("Content-Length", str(len(r.content)))
        self.end_headers()
        self.wfile.write(r.content)
        if self.path == "/ingest":
            self.server.answered.set()

    def log_message(self, *args: object) -> None:
        pass


def test_ctrl_c_finishes_the_batches_in_flight_and_prints_the_summary(
    stack: Stack, tmp_path: Path
) -> None:
    paths = write_images(tmp_path / "p", seed=4, n=16)
    proxy = DelayingProxy(stack.gateway_url, delay_s=0.3)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    report = tmp_path / "report.jsonl"
    cmd = [sys.executable, "-m", "glimpse", "ingest", str(tmp_path / "p"),
           "--url", proxy.url, "--batch-size", "2", "--concurrency", "2", "--json", "--quiet",
           "--report", str(report)]
    try:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path)
        assert proxy.answered.wait(60), proc.stderr.read() if proc.stderr else ""
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        proxy.shutdown()
        proxy.server_close()
    assert proc.returncode == EXIT_INTERRUPTED, err
    summary = json.loads(out)
    assert summary["interrupted"] and summary["failed"] == 0
    assert 2 <= summary["added"] < 16 and summary["added"] + summary["pending"] == 16
    # Everything counted as added is stored, and the batches in flight were not cut off.
    assert len(stored(stack, paths)) == summary["added"]
    assert report.read_text() == ""

    done = subprocess.run(
        [sys.executable, "-m", "glimpse", "ingest", str(tmp_path / "p"),
         "--url", stack.gateway_url, "--json", "--quiet", "--report", str(report)],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    again = json.loads(done.stdout)
    assert (again["already"], again["added"]) == (summary["added"], 16 - summary["added"])
    assert stored(stack, paths) == set(paths)


def test_thumbnails_are_made_on_first_view_for_every_format(stack: Stack) -> None:
    files = [("files", (f"thumbs/t{i}.{ext}", image_bytes(500 + i, fmt, size=(64, 48)),
                        "application/octet-stream"))
             for i, (ext, fmt) in enumerate(FORMATS.items())]
    with stack.client() as client:
        items = client.post("/ingest", files=files).json()["items"]
        assert [i["status"] for i in items] == ["added"] * len(files), items
        for item in items:
            sha, url = item["sha256"], f"/images/{item['id']}/thumbnail"
            kept = stack.media_dir / "thumbnails" / sha[:2] / sha[2:4] / f"{sha}.webp"
            assert not kept.exists()  # ingest stores the original only
            # The ETag names the bytes: a client that has it needs nothing made.
            held = client.get(url, headers={"If-None-Match": f'"{sha}-thumb"'})
            assert held.status_code == 304 and not kept.exists()
            first = client.get(url)
            assert first.status_code == 200, first.text
            assert first.headers["content-type"] == "image/webp"
            assert first.headers["etag"] == f'"{sha}-thumb"'
            assert "immutable" in first.headers["cache-control"]
            with Image.open(io.BytesIO(first.content)) as img:
                assert (img.format, img.size) == ("WEBP", (64, 48))
            assert kept.read_bytes() == first.content
            again = client.get(url)
            assert again.status_code == 200 and again.content == first.content
            assert again.headers["etag"] == first.headers["etag"]


def test_an_upload_named_like_a_library_file_never_serves_that_file(
    stack: Stack, tmp_path: Path
) -> None:
    """Issue 25 F7: an upload named like an existing library file (lib/notes.txt) was served
    with that file's real bytes. With GATEWAY_LIBRARIES an upload keeps its own copy, and a
    library file is served only when its bytes are the item's."""
    import os

    from fastapi.testclient import TestClient

    from glimpse.gateway.config import Settings
    from glimpse.gateway.main import create_app

    library = tmp_path / "library"
    library.mkdir()
    private = b"the contents of a private file, never uploaded\n"
    (library / "notes.txt").write_bytes(private)
    (library / "mine.jpg").write_bytes(image_bytes(901))
    for name in ("notes.txt", "mine.jpg"):  # settled: not a file still being written
        os.utime(library / name, (time.time() - 60, time.time() - 60))
    media = tmp_path / "media"
    settings = Settings(encoder_url=stack.encoder.url, index_url=stack.index.url,
                        media_dir=media, libraries=f"lib={library}", library_watch="off")
    with TestClient(create_app(settings)) as gateway:
        deadline = time.monotonic() + 60
        while (lib := gateway.get("/admin/libraries").json()["libraries"][0])["indexed"] != 1 \
                or lib["pending"]:
            assert time.monotonic() < deadline, lib
            time.sleep(0.1)
        files = [("files", ("lib/notes.txt", image_bytes(900), "image/jpeg")),
                 ("files", ("lib/mine.jpg", image_bytes(902), "image/jpeg"))]
        items = gateway.post("/ingest", files=files).json()["items"]
        assert [i["status"] for i in items] == ["added", "added"], items
        for item, sent in zip(items, (900, 902), strict=True):
            served = gateway.get(f"/images/{item['id']}")
            assert served.status_code == 200 and served.content == image_bytes(sent)
        # Its stored copy lost, an upload is not served at all: never the library file.
        for item in items:
            (media / "originals" / item["sha256"]).unlink()
            leak = gateway.get(f"/images/{item['id']}")
            assert leak.status_code == 404 and leak.json()["error_type"] == "not_found"
            assert private not in leak.content and image_bytes(901) not in leak.content
