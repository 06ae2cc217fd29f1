"""glimpse/cli/ingest/ against a fake of the network (httpx.MockTransport) that answers like the
gateway: the walk, the format sniffing, and the retry, backoff, bisect and resume logic.
The same behaviour against the real services is in tests/integration/test_ingest_stack.py."""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from email import policy
from email.parser import BytesParser
from pathlib import Path

import httpx
import pytest
from PIL import Image

from glimpse.cli.ingest import (
    EXIT_FATAL,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_SOME_FAILED,
    IMAGE_EXTENSIONS,
    InFlightWindow,
    IngestSummary,
    RetryPolicy,
    ingest,
    main,
    parse_retry_after,
    sniff_image,
    unreachable_sentence,
    walk_images,
)

FAST = RetryPolicy(attempts=4, base_s=0.01, max_s=0.02)
BROKEN = b"\xff\xd8\xff\xe0 truncated"


def image_bytes(seed: int, fmt: str = "JPEG", size: tuple[int, int] = (16, 12)) -> bytes:
    rng = random.Random(seed)
    img = Image.frombytes("RGB", size, rng.randbytes(size[0] * size[1] * 3))
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


def make_tree(root: Path, n: int, seed: int = 0) -> list[str]:
    """n distinct JPEGs spread over nested folders; their relative paths."""
    rels = []
    for i in range(n):
        rel = f"d{i % 3}/sub{i % 2}/img{i:03d}.jpg"
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(image_bytes(seed * 10_000 + i))
        rels.append(rel)
    return rels


def parse_files(request: httpx.Request) -> list[tuple[str, bytes]]:
    head = b"Content-Type: " + request.headers["content-type"].encode() + b"\r\n\r\n"
    msg = BytesParser(policy=policy.HTTP).parsebytes(head + request.read())
    return [(part.get_filename(), part.get_payload(decode=True)) for part in msg.iter_parts()
            if part.get_filename() is not None]


def parse_mtimes(request: httpx.Request) -> dict[str, float]:
    """The ``mtimes`` field of an /ingest body (the files' modification times)."""
    head = b"Content-Type: " + request.headers["content-type"].encode() + b"\r\n\r\n"
    msg = BytesParser(policy=policy.HTTP).parsebytes(head + request.read())
    fields = [p for p in msg.iter_parts() if p.get_param("name", header="content-disposition")
              == "mtimes"]
    return dict(json.loads(fields[0].get_payload(decode=True))) if fields else {}


class FakeGateway:
    """Answers /ingest/check and /ingest like the gateway, storing hashes in a dict.

    ``faults`` are answers (or exceptions) given to the next /ingest calls before the real
    behaviour; ``max_files`` makes a larger request a 413 as a whole.
    """

    def __init__(self, api_key: str | None = None, max_files: int = 64) -> None:
        self.stored: dict[str, str] = {}
        self.api_key = api_key
        self.max_files = max_files
        self.faults: list[httpx.Response | Exception | None] = []  # None: answer normally
        self.check_faults: list[httpx.Response | Exception] = []
        self.ingest_calls: list[list[str]] = []
        self.check_calls = 0
        self.health_calls = 0
        self.lock = threading.Lock()
        self.delay_s = 0.0

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/healthz":  # open, like the gateway's
            self.health_calls += 1
            return httpx.Response(200, json={"status": "ok"})
        if self.api_key and request.headers.get("authorization") != f"Bearer {self.api_key}":
            return httpx.Response(
                401, json={"error": "This route needs an API key.", "error_type": "unauthorized"}
            )
        if request.url.path == "/ingest/check":
            self.check_calls += 1
            if self.check_faults:
                return self._fault(self.check_faults.pop(0))
            hashes = json.loads(request.read())["sha256"]
            missing = [h for h in hashes if h not in self.stored]
            return httpx.Response(200, json={"missing": missing})
        assert request.url.path == "/ingest"
        files = parse_files(request)
        with self.lock:
            self.ingest_calls.append([name for name, _ in files])
            fault = self.faults.pop(0) if self.faults else None
        if fault is not None:
            return self._fault(fault)
        if len(files) > self.max_files:
            return httpx.Response(
                413, json={"error": "Too many files.", "error_type": "payload_too_large"}
            )
        time.sleep(self.delay_s)
        items = []
        for name, data in files:
            if data.startswith(BROKEN):
                items.append({"path": name, "status": "rejected", "error_type": "invalid_image",
                              "error": "The file is not a readable image."})
                continue
            sha = hashlib.sha256(data).hexdigest()
            with self.lock:
                status = "exists" if sha in self.stored else "added"
                self.stored.setdefault(sha, name)
            items.append({"path": name, "id": len(self.stored), "status": status, "sha256": sha})
        return httpx.Response(200, json={"items": items})

    @staticmethod
    def _fault(fault: httpx.Response | Exception) -> httpx.Response:
        if isinstance(fault, Exception):
            raise fault
        return fault


def unavailable(retry_after: str | None = None, status: int = 503) -> httpx.Response:
    headers = {"Retry-After": retry_after} if retry_after else {}
    return httpx.Response(
        status, headers=headers,
        json={"error": "The encoder is unavailable.", "error_type": "upstream_unavailable"},
    )


def run(root: Path, gw: FakeGateway, **kwargs: object) -> IngestSummary:
    kwargs.setdefault("retry", FAST)
    return ingest([root], "http://gateway.test", transport=gw.transport(), **kwargs)  # type: ignore[arg-type]


# ---------------------------------------------------------------- sniffing and walking


@pytest.mark.parametrize(
    ("fmt", "kind"),
    [("JPEG", "jpeg"), ("PNG", "png"), ("GIF", "gif"), ("WEBP", "webp"), ("BMP", "bmp"),
     ("TIFF", "tiff")],
)
def test_sniff_recognises_each_format_pillow_writes(fmt: str, kind: str) -> None:
    assert sniff_image(image_bytes(1, fmt)[:64]) == kind


@pytest.mark.parametrize(
    "head", [b"", b"hello world", b"%PDF-1.4", b"RIFF\x00\x00\x00\x00WAVE", b"\x00" * 64]
)
def test_sniff_refuses_what_is_not_an_image(head: bytes) -> None:
    assert sniff_image(head) is None


def test_sniff_heic_brand() -> None:
    assert sniff_image(b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00") == "heic"
    assert sniff_image(b"\x00\x00\x00\x18ftypisom\x00\x00\x00\x00") is None


def test_walk_nested_folders_extensions_and_symlinks(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "a" / "b").mkdir(parents=True)
    (root / "a" / "b" / "x.JPG").write_bytes(b"1")
    (root / "a" / "y.png").write_bytes(b"2")
    (root / "notes.txt").write_bytes(b"3")
    (root / "z.webp").write_bytes(b"4")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.jpg").write_bytes(b"5")
    (root / "a" / "loop").symlink_to(root)  # a loop back to the root
    (root / "out").symlink_to(outside)  # leaves the root: not followed
    (root / "out.jpg").symlink_to(outside / "secret.jpg")
    (root / "dangling.jpg").symlink_to(root / "missing.jpg")
    (root / "alias").symlink_to(root / "a" / "b")  # inside: its files are found by real path

    summary = IngestSummary()
    found = [c.relative for c in walk_images(root, IMAGE_EXTENSIONS, summary)]

    assert sorted(found) == ["a/b/x.JPG", "a/y.png", "z.webp"]
    assert (summary.files, summary.images, summary.skipped) == (4, 3, 1)
    # out, out.jpg, dangling.jpg; the loop and the alias reach folders already walked.
    assert summary.links_skipped == 5


def test_walk_follows_a_symlinked_folder_inside_the_root_once(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "real").mkdir(parents=True)
    (root / "real" / "p.jpg").write_bytes(b"1")
    (root / "real" / "self").symlink_to(root / "real")
    (root / "link").symlink_to(root / "real")
    summary = IngestSummary()
    assert [c.relative for c in walk_images(root, IMAGE_EXTENSIONS, summary)] == ["real/p.jpg"]


# ---------------------------------------------------------------- retry policy


def test_backoff_grows_exponentially_with_jitter_and_caps() -> None:
    policy_ = RetryPolicy(base_s=1.0, max_s=8.0)
    rng = random.Random(0)
    for attempt, full in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (9, 8.0)]:
        waits = [policy_.delay(attempt, None, rng) for _ in range(200)]
        assert all(full / 2 <= w <= full for w in waits)
        assert max(waits) - min(waits) > full / 4  # jittered, not a constant


def test_retry_after_is_a_floor_and_is_capped() -> None:
    policy_ = RetryPolicy(base_s=0.1, max_s=1.0, max_retry_after_s=60.0)
    rng = random.Random(0)
    assert 5.0 <= policy_.delay(1, 5.0, rng) <= 5.5
    assert 60.0 <= policy_.delay(1, 3600.0, rng) <= 66.0


def test_parse_retry_after_seconds_and_http_date() -> None:
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    in_ten = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 10))
    value = parse_retry_after(in_ten)
    assert value is not None and 8.0 <= value <= 10.5


# ---------------------------------------------------------------- the run


def test_uploads_new_files_then_a_rerun_uploads_nothing(tmp_path: Path) -> None:
    rels = make_tree(tmp_path, 10)
    gw = FakeGateway()
    first = run(tmp_path, gw, batch_size=3)
    assert (first.images, first.added, first.exists, first.failed) == (10, 10, 0, 0)
    assert first.batches == 4 and first.exit_code == EXIT_OK
    assert sorted(gw.stored.values()) == sorted(rels)  # the relative path is the part's name
    assert all(len(call) <= 3 for call in gw.ingest_calls)

    second = run(tmp_path, gw, batch_size=3)
    assert (second.already, second.added, second.batches) == (10, 0, 0)
    assert len(gw.ingest_calls) == 4


def test_duplicates_are_sent_once(tmp_path: Path) -> None:
    make_tree(tmp_path, 4)
    (tmp_path / "copy.jpg").write_bytes((tmp_path / "d0/sub0/img000.jpg").read_bytes())
    gw = FakeGateway()
    summary = run(tmp_path, gw)
    assert (summary.images, summary.added, summary.duplicates) == (5, 4, 1)


def test_bad_files_are_reported_not_retried(tmp_path: Path) -> None:
    make_tree(tmp_path, 3)
    (tmp_path / "text.jpg").write_bytes(b"not an image at all")
    (tmp_path / "broken.jpg").write_bytes(BROKEN + b"x" * 100)
    (tmp_path / "readme.md").write_text("hello")
    report = tmp_path / "out" / "report.jsonl"
    gw = FakeGateway()
    summary = run(tmp_path, gw, report_path=report)

    assert (summary.added, summary.rejected, summary.failed, summary.skipped) == (3, 2, 0, 1)
    assert summary.retries == 0 and len(gw.ingest_calls) == 1
    assert summary.exit_code == EXIT_SOME_FAILED
    lines = [json.loads(line) for line in report.read_text().splitlines()]
    assert {(x["relative"], x["status"], x["error_type"]) for x in lines} == {
        ("text.jpg", "rejected", "not_an_image"),
        ("broken.jpg", "rejected", "invalid_image"),
    }
    assert all(x["reason"] for x in lines)


@pytest.mark.parametrize(
    "fault",
    [
        unavailable(),
        unavailable(status=504),
        unavailable(status=429),
        httpx.ConnectError("connection refused"),
        httpx.ReadTimeout("timed out"),
        httpx.RemoteProtocolError("server disconnected"),
    ],
    ids=["503", "504", "429", "connect", "read-timeout", "disconnect"],
)
def test_transient_failures_are_retried_and_lose_nothing(
    tmp_path: Path, fault: httpx.Response | Exception
) -> None:
    make_tree(tmp_path, 6)
    gw = FakeGateway()
    gw.faults = [fault, fault]
    summary = run(tmp_path, gw, batch_size=2, concurrency=1)
    assert (summary.added, summary.failed, summary.retries) == (6, 0, 2)
    assert summary.exit_code == EXIT_OK


def test_retry_after_is_honoured(tmp_path: Path) -> None:
    make_tree(tmp_path, 2)
    gw = FakeGateway()
    gw.faults = [unavailable(retry_after="0.6")]
    started = time.monotonic()
    summary = run(tmp_path, gw)
    assert summary.added == 2 and summary.retries == 1
    assert time.monotonic() - started >= 0.6


def test_check_is_retried_too(tmp_path: Path) -> None:
    make_tree(tmp_path, 2)
    gw = FakeGateway()
    gw.check_faults = [unavailable(), httpx.ConnectError("refused")]
    summary = run(tmp_path, gw)
    assert (summary.added, summary.retries, gw.check_calls) == (2, 2, 3)


def test_giving_up_fails_the_batch_with_the_reason(tmp_path: Path) -> None:
    make_tree(tmp_path, 4)
    gw = FakeGateway()
    gw.faults = [unavailable()] * FAST.attempts  # the first batch fails on every try
    report = tmp_path / "report.jsonl"
    summary = run(tmp_path, gw, batch_size=2, concurrency=1, report_path=report)
    assert (summary.added, summary.failed) == (2, 2)
    assert summary.exit_code == EXIT_SOME_FAILED
    lines = [json.loads(line) for line in report.read_text().splitlines()]
    assert len(lines) == 2 and all("gave up after 4 tries" in x["reason"] for x in lines)
    assert all(x["status"] == "failed" for x in lines)
    # The next run sends exactly what failed.
    again = run(tmp_path, gw)
    assert (again.already, again.added) == (2, 2)


def test_server_errors_that_are_not_transient_fail_without_retry(tmp_path: Path) -> None:
    make_tree(tmp_path, 2)
    gw = FakeGateway()
    gw.faults = [httpx.Response(500, json={"error": "Boom.", "error_type": "internal_error"})]
    summary = run(tmp_path, gw)
    assert (summary.failed, summary.retries, len(gw.ingest_calls)) == (2, 0, 1)
    assert summary.failures[0].reason == "Boom."


def test_a_request_refused_as_a_whole_is_halved_until_it_fits(tmp_path: Path) -> None:
    make_tree(tmp_path, 8)
    gw = FakeGateway(max_files=2)
    summary = run(tmp_path, gw, batch_size=8)
    assert (summary.added, summary.rejected, summary.retries) == (8, 0, 0)
    assert [len(c) for c in gw.ingest_calls] == [8, 4, 2, 2, 4, 2, 2]


def test_a_single_file_refused_is_rejected(tmp_path: Path) -> None:
    make_tree(tmp_path, 1)
    gw = FakeGateway()
    too_large = httpx.Response(
        413, json={"error": "The image is larger than 32 MiB.", "error_type": "image_too_large"}
    )
    gw.faults = [too_large]
    summary = run(tmp_path, gw)
    assert (summary.rejected, len(gw.ingest_calls)) == (1, 1)
    assert summary.failures[0].error_type == "image_too_large"


def test_api_key_is_sent_and_a_wrong_one_stops_the_run(tmp_path: Path) -> None:
    make_tree(tmp_path, 3)
    gw = FakeGateway(api_key="s3cret-key")
    ok = run(tmp_path / "d0", gw, api_key="s3cret-key")
    assert ok.added == 1

    wrong = run(tmp_path, gw, api_key="wrong-key-x")
    assert wrong.exit_code == EXIT_FATAL and wrong.added == 0
    assert wrong.error is not None and "API key" in wrong.error
    assert len(gw.ingest_calls) == 1 and wrong.pending == 3


def test_max_batches_stops_and_a_rerun_resumes(tmp_path: Path) -> None:
    make_tree(tmp_path, 10)
    gw = FakeGateway()
    partial = run(tmp_path, gw, batch_size=2, max_batches=2, concurrency=1)
    assert partial.interrupted and partial.exit_code == EXIT_INTERRUPTED
    assert (partial.added, partial.pending) == (4, 6)
    rest = run(tmp_path, gw, batch_size=2)
    assert (rest.already, rest.added, rest.pending) == (4, 6, 0)
    assert len(gw.stored) == 10


def test_stop_finishes_the_batches_in_flight(tmp_path: Path) -> None:
    make_tree(tmp_path, 12)
    gw = FakeGateway()
    gw.delay_s = 0.05
    stop = threading.Event()
    summary = run(
        tmp_path, gw, batch_size=2, concurrency=2, stop=stop, on_batch=lambda s: stop.set()
    )
    assert summary.interrupted
    # Every batch that was sent was answered and counted; nothing is lost or double counted.
    sent = sum(len(c) for c in gw.ingest_calls)
    assert summary.added == sent == len(gw.stored)
    assert 1 <= sent < 12 and summary.pending == 12 - sent


def test_dry_run_lists_and_sends_nothing(tmp_path: Path) -> None:
    make_tree(tmp_path, 3)
    gw = FakeGateway()
    run(tmp_path / "d0", gw)
    out = io.StringIO()
    summary = run(tmp_path, gw, dry_run=True, dry_run_out=out)
    assert (summary.would_send, summary.already, summary.added) == (2, 1, 0)
    assert len(gw.ingest_calls) == 1
    listed = sorted(line.split("\t")[0] for line in out.getvalue().splitlines())
    assert listed == ["d1/sub1/img001.jpg", "d2/sub0/img002.jpg"]


def counted(summary: IngestSummary) -> int:
    s = summary
    return s.duplicates + s.already + s.added + s.exists + s.rejected + s.failed + s.pending


@pytest.mark.parametrize("seed", range(5))
def test_every_file_is_counted_exactly_once_under_random_faults(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    make_tree(tmp_path, 20, seed=seed)
    (tmp_path / "dup.jpg").write_bytes((tmp_path / "d1/sub1/img001.jpg").read_bytes())
    (tmp_path / "bad.png").write_bytes(b"nope")
    gw = FakeGateway()
    choices: list[Callable[[], httpx.Response | Exception]] = [
        lambda: unavailable(), lambda: httpx.ConnectError("refused"),
        lambda: httpx.Response(500, json={"error": "Boom.", "error_type": "internal_error"}),
    ]
    gw.faults = [rng.choice(choices)() for _ in range(rng.randrange(3, 10))]
    summary = run(tmp_path, gw, batch_size=rng.randrange(1, 6), concurrency=rng.randrange(1, 4))
    assert counted(summary) == summary.images == 22
    assert summary.added == len(gw.stored)
    assert summary.failed == len([f for f in summary.failures if f.status == "failed"])
    again = run(tmp_path, gw)  # a re-run gets everything in
    assert summary.added + again.added == 20 and again.failed == 0


def test_a_rerun_does_not_send_again_what_the_report_says_was_rejected(tmp_path: Path) -> None:
    images = tmp_path / "images"
    make_tree(images, 2)
    (images / "broken.jpg").write_bytes(BROKEN + b"x" * 100)
    report = tmp_path / "report.jsonl"
    gw = FakeGateway()
    first = run(images, gw, report_path=report)
    assert (first.added, first.rejected, len(gw.ingest_calls)) == (2, 1, 1)

    second = run(images, gw, report_path=report)
    assert (second.already, second.rejected, second.batches) == (2, 1, 0)
    assert len(gw.ingest_calls) == 1
    [line] = [json.loads(x) for x in report.read_text().splitlines()]
    assert line["relative"] == "broken.jpg" and line["error_type"] == "invalid_image"
    assert line["reason"].startswith("rejected by an earlier run")
    assert line["reason"].endswith("The file is not a readable image.")

    third = run(images, gw, report_path=report, retry_rejected=True)
    assert (third.rejected, third.batches, len(gw.ingest_calls)) == (1, 1, 2)


def test_command_line_rejects_bad_numbers(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["somewhere", "--batch-size", "0"])
    assert exc.value.code == 2
    assert "--batch-size must be at least 1" in capsys.readouterr().err


def free_port_url() -> str:
    """A URL nobody listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


def test_nothing_listening_fails_at_once_with_the_sentence(tmp_path: Path) -> None:
    make_tree(tmp_path / "p", 2)
    report = tmp_path / "report.jsonl"
    report.write_text('{"earlier": "run"}\n')
    url = free_port_url()
    started = time.monotonic()
    # The command as a user runs it, with the default ten tries (about two minutes of backoff).
    done = subprocess.run(
        [sys.executable, "-m", "glimpse", "ingest", str(tmp_path / "p"), "--url", url,
         "--report", str(report)],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )
    elapsed = time.monotonic() - started
    assert done.returncode == EXIT_FATAL and elapsed < 10  # the interpreter's start included
    assert f"no Glimpse gateway answers at {url} (" in done.stderr
    assert "start one with `make dev` or `docker compose up`, or pass --url" in done.stderr
    assert "images" not in done.stderr  # no summary of a run that never started
    assert report.read_text() == '{"earlier": "run"}\n'  # the earlier report is kept


def test_a_host_that_does_not_answer_fails_within_the_timeout(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make_tree(tmp_path / "p", 2)
    with socket.socket() as sock:  # the kernel accepts the connection, nobody answers
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        started = time.monotonic()
        code = main([str(tmp_path / "p"), "--url", url, "--timeout", "0.5", "--json",
                     "--report", str(tmp_path / "report.jsonl")])
        elapsed = time.monotonic() - started
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    assert code == EXIT_FATAL and elapsed < 4
    assert summary["error"].startswith(f"no Glimpse gateway answers at {url} (")
    assert summary["error"] in captured.err
    assert (summary["images"], summary["failed"], summary["pending"]) == (0, 0, 0)


def test_the_gateway_is_asked_once_before_anything_is_hashed(tmp_path: Path) -> None:
    make_tree(tmp_path, 3)
    gw = FakeGateway()
    summary = run(tmp_path, gw)
    assert (summary.added, gw.health_calls) == (3, 1)


def test_an_error_answer_to_the_first_contact_lets_the_run_judge(tmp_path: Path) -> None:
    make_tree(tmp_path, 2)
    gw = FakeGateway()
    real = gw.__call__

    def no_healthz(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/healthz":
            return httpx.Response(404, text="Not Found")
        return real(request)

    summary = ingest([tmp_path], "http://gateway.test", retry=FAST,
                     transport=httpx.MockTransport(no_healthz))
    assert summary.added == 2 and summary.exit_code == EXIT_OK


def test_the_gateway_going_away_mid_run_is_retried_then_reported(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make_tree(tmp_path, 2)
    gw = FakeGateway()
    gw.check_faults = [httpx.ConnectError("[Errno 111] Connection refused")] * FAST.attempts
    report = tmp_path / "report.jsonl"
    summary = run(tmp_path, gw, report_path=report)
    assert gw.check_calls == FAST.attempts and summary.retries == FAST.attempts - 1
    assert summary.exit_code == EXIT_FATAL and summary.failed == 2
    assert "unreachable" in (summary.error or "")
    assert len(report.read_text().splitlines()) == 2


def test_the_sentence_names_the_url_and_what_to_do() -> None:
    sentence = unreachable_sentence("http://x:1", httpx.ConnectError("refused"))
    assert sentence == ("no Glimpse gateway answers at http://x:1 (refused); start one with "
                        "`make dev` or `docker compose up`, or pass --url")


def test_a_missing_folder_is_an_error(tmp_path: Path) -> None:
    summary = run(tmp_path / "nope", FakeGateway())
    assert summary.exit_code == EXIT_FATAL and "not a folder" in (summary.error or "")


def test_the_window_grows_while_answers_are_quick_and_shrinks_when_slow() -> None:
    window = InFlightWindow(limit=4, target_s=10.0)
    assert window.size == 1
    for _ in range(6):
        window.answered(1.0, window.size)
    assert window.size == window.largest == 4
    window.answered(12.0, 4)  # too slow: one fewer
    assert window.size == 3
    window.answered(12.0, 4)  # sent before the last change: no news
    assert window.size == 3
    window.answered(3.0, 3)  # 3 s with 3 in flight would be 4 s with 4: grow
    assert window.size == 4
    window.answered(1.0, 3)  # an answer from a shorter queue does not grow it
    window.answered(9.0, 4)  # inside the target, but not with one more in flight: stay
    assert window.size == 4
    window.overloaded()  # a 504, a 429 or a timeout: halve
    assert window.size == 2
    window.overloaded()
    window.overloaded()
    assert window.size == 1 and window.largest == 4


def test_the_window_bounds_the_requests_in_flight(tmp_path: Path) -> None:
    make_tree(tmp_path, 40)
    gw = FakeGateway()
    gw.delay_s = 0.02
    seen: list[int] = []
    lock = threading.Lock()
    in_flight = 0
    real = gw.__call__

    def counting(request: httpx.Request) -> httpx.Response:
        nonlocal in_flight
        if request.url.path == "/ingest":
            with lock:
                in_flight += 1
                seen.append(in_flight)
        try:
            return real(request)
        finally:
            if request.url.path == "/ingest":
                with lock:
                    in_flight -= 1

    summary = ingest([tmp_path], "http://gateway.test", transport=httpx.MockTransport(counting),
                     batch_size=1, concurrency=3, retry=FAST)
    assert summary.added == 40
    assert max(seen) == summary.window == 3  # grew from one to the limit, never past it
    assert seen[0] == 1


def test_gateway_timeouts_midway_are_retried(tmp_path: Path) -> None:
    make_tree(tmp_path, 30)
    gw = FakeGateway()
    timeout = httpx.Response(
        504, json={"error": "The encoder timed out.", "error_type": "upstream_timeout"}
    )
    gw.faults = [None] * 12 + [timeout] * 3
    summary = run(tmp_path, gw, batch_size=1, concurrency=4)
    assert summary.added == 30 and summary.retries == 3


def test_each_upload_sends_the_files_modification_times(tmp_path: Path) -> None:
    """The date taken of a file without EXIF is its mtime, which only the client can read."""
    rels = make_tree(tmp_path, 3)
    os_times = {rel: 1_600_000_000 + n * 86_400 for n, rel in enumerate(rels)}
    for rel, when in os_times.items():
        os.utime(tmp_path / rel, (when, when))
    sent: dict[str, float] = {}
    gw = FakeGateway()

    def recording(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/ingest":
            sent.update(parse_mtimes(request))
        return gw(request)

    summary = ingest([tmp_path], "http://gateway.test", transport=httpx.MockTransport(recording),
                     retry=FAST)
    assert summary.added == 3
    assert sent == {rel: float(when) for rel, when in os_times.items()}
