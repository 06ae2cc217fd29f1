#!/usr/bin/env python3
"""Bulk ingestion: load folders of photos into a running Glimpse gateway, fast and resumable.

    glimpse ingest DIR [DIR ...] --url http://localhost:8000 [--api-key KEY]

The pipeline, one stage feeding the next so the encoder behind the gateway never waits:

1. walk each folder (symlinks followed only while they stay inside the folder; a directory is
   entered once, so symlink loops end), keeping files whose extension names an image format;
2. read and hash the files in a thread pool, keeping those whose first bytes are an image's;
3. ask ``POST /ingest/check`` which hashes the gateway lacks, in chunks;
4. upload only those with ``POST /ingest`` (multipart ``files`` parts, each named by the path
   relative to its folder), in batches, several requests in flight: how many adapts to how
   fast the answers come back (:class:`InFlightWindow`), so a slow encoder is kept busy
   without being buried under requests the gateway would time out.

Connection errors, 429, 503 and 504 are retried with exponential backoff and jitter, waiting at
least what ``Retry-After`` asks. An answer saying a file itself is bad is never retried: the
file goes to the report. A re-run uploads nothing already stored, so an interrupted run is
resumed by running it again. The first Ctrl-C stops sending new batches, waits for those in
flight and prints the summary; a second one stops at once.

Importable: ``ingest(dirs, url, ...)`` returns an :class:`IngestSummary`. Only httpx and tqdm
are needed (no Glimpse package), so the script runs on any machine that can reach the gateway.
"""

from __future__ import annotations

import argparse
import email.utils
import hashlib
import json
import os
import random
import signal
import stat
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx

DEFAULT_URL = "http://localhost:8000"
DEFAULT_REPORT = "ingest-report.jsonl"

# Exit statuses of the command line.
EXIT_OK = 0
EXIT_SOME_FAILED = 1  # the run finished; the report lists files it could not ingest
EXIT_FATAL = 2  # bad arguments, or the gateway refused the whole run (URL, API key)
EXIT_INTERRUPTED = 130  # Ctrl-C or a batch limit; run again to resume

IMAGE_EXTENSIONS = {
    ".jpg": "jpeg", ".jpeg": "jpeg", ".jpe": "jpeg", ".jfif": "jpeg",
    ".png": "png", ".webp": "webp", ".bmp": "bmp", ".gif": "gif",
    ".tif": "tiff", ".tiff": "tiff",
    ".heic": "heic", ".heif": "heic",
}
CONTENT_TYPES = {
    "jpeg": "image/jpeg", "png": "image/png", "webp": "image/webp", "bmp": "image/bmp",
    "gif": "image/gif", "tiff": "image/tiff", "heic": "image/heic",
}
_HEIF_BRANDS = {b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1"}

# Statuses worth another try: the gateway or its upstreams are busy, restarting or slow.
RETRY_STATUSES = frozenset({429, 503, 504})
# Statuses that say the whole run cannot work (wrong URL or key): stop instead of failing
# every file one by one.
FATAL_STATUSES = frozenset({401, 403, 404, 405})


def heic_supported() -> bool:
    """HEIC is kept only where a decoder is installed (pillow-heif)."""
    try:
        import pillow_heif  # noqa: F401
    except ImportError:
        return False
    return True


def sniff_image(head: bytes) -> str | None:
    """The image format the first bytes of a file announce, or None."""
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "gif"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if head.startswith(b"BM") and len(head) >= 14:
        return "bmp"
    if head.startswith((b"II*\x00", b"MM\x00*")):
        return "tiff"
    if head[4:8] == b"ftyp" and head[8:12] in _HEIF_BRANDS:
        return "heic"
    return None


# --------------------------------------------------------------------------- the summary


@dataclass
class Failure:
    """A file that could not be ingested and why; one line of the report."""

    path: str
    relative: str
    status: str  # "rejected": the file itself is bad; "failed": it could not be sent
    error_type: str
    reason: str
    sha256: str | None = None


@dataclass
class IngestSummary:
    """What a run did. ``images`` = duplicates + already + added + exists + rejected + failed
    + pending + would_send."""

    files: int = 0  # regular files seen while walking
    images: int = 0  # files with an image extension (the progress bar's total)
    skipped: int = 0  # other files, ignored
    links_skipped: int = 0  # symlinks not followed: out of the folder, dangling, or a loop
    duplicates: int = 0  # same bytes as an earlier file of this run: not sent again
    already: int = 0  # the gateway had them before the upload (/ingest/check)
    added: int = 0
    exists: int = 0  # sent, and the gateway answered that it had them
    rejected: int = 0  # the file itself is bad (not an image, broken, too large)
    failed: int = 0  # could not be sent (gateway unreachable after retries, unreadable)
    pending: int = 0  # not reached because the run was interrupted or stopped
    would_send: int = 0  # --dry-run: files a real run would upload
    bytes_hashed: int = 0
    bytes_uploaded: int = 0
    batches: int = 0  # /ingest requests answered
    retries: int = 0
    window: int = 0  # the most upload requests that were in flight at once
    elapsed_s: float = 0.0
    interrupted: bool = False
    error: str | None = None  # why the run stopped early, when it did
    report: str | None = None
    failures: list[Failure] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures and self.error is None and not self.interrupted

    @property
    def exit_code(self) -> int:
        if self.error is not None:
            return EXIT_FATAL
        if self.interrupted:
            return EXIT_INTERRUPTED
        return EXIT_SOME_FAILED if self.failures else EXIT_OK

    def to_dict(self, with_failures: bool = False) -> dict[str, Any]:
        data = asdict(self)
        if not with_failures:
            data.pop("failures")
        data["files_per_s"] = round(self.images_done / self.elapsed_s, 2) if self.elapsed_s else 0
        return data

    @property
    def images_done(self) -> int:
        return self.images - self.pending

    def describe(self) -> str:
        rate = self.images_done / self.elapsed_s if self.elapsed_s else 0.0
        lines = [
            f"{self.images} images ({self.skipped} other files skipped, "
            f"{self.links_skipped} symlinks not followed) in {self.elapsed_s:.1f} s, "
            f"{rate:.1f} files/s",
            f"  added {self.added}, already there {self.already + self.exists}, "
            f"duplicates in this run {self.duplicates}, rejected {self.rejected}, "
            f"failed {self.failed}"
            + (f", not reached {self.pending}" if self.pending else "")
            + (f", would send {self.would_send}" if self.would_send else ""),
            f"  sent {self.bytes_uploaded / 1e6:.1f} MB in {self.batches} batches, "
            f"{self.retries} retries",
        ]
        if self.interrupted:
            lines.append("  interrupted: run the same command again to resume")
        if self.error:
            lines.append(f"  stopped: {self.error}")
        if self.failures and self.report:
            lines.append(f"  {len(self.failures)} files not ingested, listed in {self.report}")
        return "\n".join(lines)


# --------------------------------------------------------------------------- walking


@dataclass(frozen=True)
class Candidate:
    path: Path  # where to read it
    relative: str  # what the gateway is told, relative to its folder, with "/"
    size: int


def _within(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def walk_images(
    root: Path, extensions: Iterable[str], summary: IngestSummary
) -> Iterator[Candidate]:
    """Files under ``root`` with an image extension, in a stable order.

    Symlinks are followed only when their target stays inside ``root``; each directory is
    entered once (by device and inode), so a loop ends. Real directories are walked before
    symlinked ones, so a file reachable both ways is named by its real path.
    """
    exts = set(extensions)
    root_real = os.path.realpath(root)
    visited: set[tuple[int, int]] = set()
    real_dirs: list[tuple[Path, str]] = [(root, "")]
    linked_dirs: list[tuple[Path, str]] = []
    while real_dirs or linked_dirs:
        directory, prefix = real_dirs.pop() if real_dirs else linked_dirs.pop()
        try:
            st = directory.stat()
        except OSError:
            continue
        if (st.st_dev, st.st_ino) in visited:
            summary.links_skipped += 1
            continue
        visited.add((st.st_dev, st.st_ino))
        try:
            with os.scandir(directory) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError:
            continue
        subdirs: list[tuple[Path, str]] = []
        for entry in entries:
            path = directory / entry.name
            rel = f"{prefix}{entry.name}"
            try:
                is_link = entry.is_symlink()
                if is_link:
                    target = os.path.realpath(path)
                    if not _within(target, root_real) or not os.path.exists(target):
                        summary.links_skipped += 1
                        continue
                    st_entry = os.stat(path)
                else:
                    st_entry = entry.stat(follow_symlinks=False)
            except OSError:
                summary.links_skipped += 1
                continue
            if stat.S_ISDIR(st_entry.st_mode):
                (linked_dirs if is_link else subdirs).append((path, rel + "/"))
            elif stat.S_ISREG(st_entry.st_mode):
                summary.files += 1
                if os.path.splitext(entry.name)[1].lower() in exts:
                    summary.images += 1
                    yield Candidate(path, rel, st_entry.st_size)
                else:
                    summary.skipped += 1
        # Reversed so that popping from the stack walks the directories in name order.
        real_dirs.extend(reversed(subdirs))


# --------------------------------------------------------------------------- retries


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter; Retry-After (capped) is a floor."""

    attempts: int = 10  # tries in all, the first included
    base_s: float = 0.5
    max_s: float = 30.0
    max_retry_after_s: float = 300.0

    def delay(self, attempt: int, retry_after: float | None, rng: random.Random) -> float:
        """Seconds to wait before try ``attempt + 1`` (``attempt`` counts from 1)."""
        backoff = min(self.max_s, self.base_s * 2 ** (attempt - 1))
        # "Equal jitter": half fixed, half random, so clients that failed together spread out
        # without any of them retrying at once.
        wait = backoff / 2 + rng.uniform(0, backoff / 2)
        if retry_after is not None:
            wait = max(min(retry_after, self.max_retry_after_s) * rng.uniform(1.0, 1.1), wait)
        return wait


def parse_retry_after(value: str | None) -> float | None:
    """Retry-After as seconds: either a number of seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class InFlightWindow:
    """How many upload requests may be in flight: up to ``limit``, fewer while answers are slow.

    The gateway gives up waiting for its encoder after a timeout (60 s by default) and answers
    504, yet the encoder still finishes the abandoned work; so on a slow encoder a deep queue
    of requests makes every answer late, and the retries pile on more work. The window starts
    at one request, grows by one while the answers would still come back inside ``target_s``
    with one more in flight, shrinks by one when they do not, and halves on a timeout or a 429:
    the queue stays just deep enough to keep the encoder busy. Only an answer to a request sent
    at the current size moves it, so it changes about once per round trip and does not
    overshoot on answers that saw a queue of another depth.
    """

    def __init__(self, limit: int, target_s: float) -> None:
        self.limit = limit
        self.target_s = target_s
        self.size = 1
        self.largest = 1
        self.in_flight = 0
        self._cond = threading.Condition()

    def acquire(self, stop: threading.Event) -> bool:
        """Wait for room for one more request; False when the run is stopped meanwhile."""
        with self._cond:
            while not stop.is_set() and self.in_flight >= self.size:
                self._cond.wait(0.1)
            if stop.is_set():
                return False
            self.in_flight += 1
            return True

    def release(self) -> None:
        with self._cond:
            self.in_flight -= 1
            self._cond.notify_all()

    def answered(self, latency_s: float, sent_at_size: int) -> None:
        with self._cond:
            if sent_at_size != self.size:
                return  # it saw a queue of another depth: no news about this one
            if latency_s > self.target_s:
                self.size = max(1, self.size - 1)
            elif latency_s * (self.size + 1) / self.size <= self.target_s:
                # When the encoder is the bottleneck, an answer's wait grows with the queue.
                self.size = min(self.limit, self.size + 1)
                self.largest = max(self.largest, self.size)
            self._cond.notify_all()

    def overloaded(self) -> None:
        with self._cond:
            self.size = max(1, self.size // 2)


class GaveUp(Exception):
    """A request failed with a transient error on every try."""


class FatalError(Exception):
    """The gateway refused the run as a whole (wrong URL, missing or wrong API key)."""


def error_sentence(resp: httpx.Response) -> tuple[str, str]:
    """The (error_type, sentence) of an error answer, from the Glimpse error body if any."""
    try:
        body = resp.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        return str(body.get("error_type") or f"http_{resp.status_code}"), body["error"]
    text = resp.text.strip()[:200] or resp.reason_phrase
    return f"http_{resp.status_code}", f"HTTP {resp.status_code}: {text}"


# --------------------------------------------------------------------------- the run


@dataclass
class _Hashed:
    candidate: Candidate
    sha256: str
    kind: str


class _Run:
    """One ingest run: the shared client, the counters and the progress bar."""

    def __init__(
        self,
        client: httpx.Client,
        summary: IngestSummary,
        retry: RetryPolicy,
        window: InFlightWindow,
        progress: bool,
    ) -> None:
        self.client = client
        self.summary = summary
        self.retry = retry
        self.lock = threading.Lock()
        self.rng = random.Random()
        self.started = time.monotonic()
        self.window = window
        self.bar: Any = None
        if progress:
            from tqdm import tqdm

            # disable=None: no bar when stderr is not a terminal (logs, CI).
            self.bar = tqdm(total=summary.images, unit="file", dynamic_ncols=True, disable=None)

    # Counters are touched by the upload threads, hence the lock.
    def count(self, n: int = 1, **fields: int) -> None:
        with self.lock:
            for name, value in fields.items():
                setattr(self.summary, name, getattr(self.summary, name) + value)
            if self.bar is not None:
                s = self.summary
                elapsed = max(time.monotonic() - self.started, 1e-6)
                self.bar.set_postfix_str(
                    f"{s.bytes_hashed / elapsed / 1e6:.1f}MB/s added={s.added} "
                    f"exists={s.already + s.exists} rejected={s.rejected} failed={s.failed}",
                    refresh=False,
                )
                self.bar.update(n)

    def fail(
        self,
        candidate: Candidate,
        status: str,
        error_type: str,
        reason: str,
        sha256: str | None = None,
    ) -> None:
        failure = Failure(
            str(candidate.path), candidate.relative, status, error_type, reason, sha256
        )
        with self.lock:
            self.summary.failures.append(failure)
        self.count(**{status: 1})

    def request(
        self, method: str, url: str, window: InFlightWindow | None = None, **kwargs: Any
    ) -> httpx.Response:
        """Send with retries on transient failures; any other answer is returned as is.

        With ``window``, each try's outcome and wait tell it how deep the queue may be.
        """
        attempt = 0
        while True:
            attempt += 1
            retry_after: float | None = None
            sent_at = time.monotonic()
            sent_at_size = window.size if window is not None else 0
            try:
                resp = self.client.request(method, url, **kwargs)
            except (httpx.NetworkError, httpx.TimeoutException, httpx.RemoteProtocolError) as exc:
                problem = f"{type(exc).__name__}: {exc or 'no detail'}"
                if window is not None and isinstance(exc, httpx.TimeoutException):
                    window.overloaded()
            else:
                if window is not None:
                    if resp.status_code in (429, 504):
                        window.overloaded()
                    elif resp.status_code == 200:
                        window.answered(time.monotonic() - sent_at, sent_at_size)
                if resp.status_code not in RETRY_STATUSES:
                    return resp
                _, sentence = error_sentence(resp)
                problem = f"{resp.status_code} {sentence}"
                retry_after = parse_retry_after(resp.headers.get("retry-after"))
            if attempt >= self.retry.attempts:
                raise GaveUp(f"gave up after {attempt} tries: {problem}")
            self.count(0, retries=1)
            time.sleep(self.retry.delay(attempt, retry_after, self.rng))

    # ---- stage 2: hash
    def hash_file(self, candidate: Candidate, kinds: set[str]) -> _Hashed | None:
        digest = hashlib.sha256()
        try:
            with open(candidate.path, "rb") as fh:
                head = fh.read(64)
                digest.update(head)
                # hashlib releases the GIL on large updates, so the pool hashes in parallel.
                for block in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(block)
                size = fh.tell()
        except OSError as exc:
            self.fail(candidate, "failed", "unreadable", f"could not read the file: {exc}")
            return None
        self.count(0, bytes_hashed=size)
        kind = sniff_image(head)
        if kind is None:
            self.fail(
                candidate, "rejected", "not_an_image",
                "the content is not an image (its first bytes match no supported format)",
                digest.hexdigest(),
            )
            return None
        if kind not in kinds:
            self.fail(
                candidate, "rejected", "unsupported_media_type",
                f"{kind} images need a decoder that is not installed",
                digest.hexdigest(),
            )
            return None
        return _Hashed(candidate, digest.hexdigest(), kind)

    # ---- stage 3: check
    def missing(self, hashes: list[str]) -> set[str]:
        resp = self.request("POST", "/ingest/check", json={"sha256": hashes})
        if resp.status_code in FATAL_STATUSES:
            raise FatalError(f"/ingest/check answered {error_sentence(resp)[1]}")
        if resp.status_code != 200:
            raise GaveUp(f"/ingest/check answered {error_sentence(resp)[1]}")
        return set(resp.json()["missing"])

    # ---- stage 4: upload
    def upload(self, batch: list[_Hashed]) -> None:
        """Send one batch; every file in it ends up counted exactly once."""
        parts = []
        sent: list[_Hashed] = []
        size = 0
        for item in batch:
            try:
                data = item.candidate.path.read_bytes()
            except OSError as exc:
                self.fail(item.candidate, "failed", "unreadable", f"could not read the file: {exc}")
                continue
            parts.append(("files", (item.candidate.relative, data, CONTENT_TYPES[item.kind])))
            sent.append(item)
            size += len(data)
        if not sent:
            return
        try:
            resp = self.request("POST", "/ingest", window=self.window, files=parts)
        except GaveUp as exc:
            for item in sent:
                self.fail(item.candidate, "failed", "unavailable", str(exc), item.sha256)
            return
        except httpx.HTTPError as exc:  # e.g. the client was closed by a second Ctrl-C
            for item in sent:
                self.fail(item.candidate, "failed", "request_error", f"{type(exc).__name__}: {exc}")
            return
        del parts
        if resp.status_code == 200:
            self.count(0, batches=1, bytes_uploaded=size)
            self._record_items(sent, resp)
            return
        error_type, sentence = error_sentence(resp)
        if resp.status_code in FATAL_STATUSES:
            for item in sent:
                self.fail(item.candidate, "failed", error_type, sentence)
            raise FatalError(f"/ingest answered {sentence}")
        if 400 <= resp.status_code < 500:
            if len(sent) > 1:
                # The request as a whole was refused (too large, or one file too odd for the
                # gateway to answer per file): halve it until the bad file stands alone.
                half = len(sent) // 2
                self.upload(sent[:half])
                self.upload(sent[half:])
                return
            self.fail(sent[0].candidate, "rejected", error_type, sentence, sent[0].sha256)
            return
        for item in sent:
            self.fail(item.candidate, "failed", error_type, sentence)

    def _record_items(self, sent: list[_Hashed], resp: httpx.Response) -> None:
        items = resp.json().get("items", [])
        if len(items) != len(sent):
            by_path = {item.get("path"): item for item in items}
            items = [by_path.get(h.candidate.relative) for h in sent]
        for hashed, item in zip(sent, items, strict=True):
            status = item.get("status") if isinstance(item, dict) else None
            if status == "added":
                self.count(added=1)
            elif status == "exists":
                self.count(exists=1)
            elif status == "rejected":
                assert isinstance(item, dict)
                self.fail(
                    hashed.candidate, "rejected", str(item.get("error_type") or "rejected"),
                    str(item.get("error") or "the gateway rejected the file"),
                    hashed.sha256,
                )
            else:
                self.fail(
                    hashed.candidate, "failed", "no_answer",
                    "the gateway's answer did not mention this file",
                )


def _chunks(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    chunk: list[Any] = []
    for item in items:
        chunk.append(item)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _batches(items: list[_Hashed], max_files: int, max_bytes: int) -> Iterator[list[_Hashed]]:
    batch: list[_Hashed] = []
    size = 0
    for item in items:
        if batch and (len(batch) >= max_files or size + item.candidate.size > max_bytes):
            yield batch
            batch, size = [], 0
        batch.append(item)
        size += item.candidate.size
    if batch:
        yield batch


def ingest(
    dirs: Sequence[str | os.PathLike[str]],
    url: str = DEFAULT_URL,
    api_key: str | None = None,
    *,
    batch_size: int = 16,
    batch_bytes: int = 32 << 20,
    concurrency: int = 8,
    latency_target_s: float = 40.0,
    hash_workers: int | None = None,
    check_chunk: int = 256,
    retry: RetryPolicy | None = None,
    timeout_s: float = 300.0,
    dry_run: bool = False,
    dry_run_out: IO[str] | None = None,
    report_path: str | os.PathLike[str] | None = None,
    retry_rejected: bool = False,
    progress: bool = False,
    max_batches: int | None = None,
    stop: threading.Event | None = None,
    on_batch: Callable[[IngestSummary], None] | None = None,
    transport: httpx.BaseTransport | None = None,
) -> IngestSummary:
    """Ingest every image under ``dirs`` into the gateway at ``url``; see the module doc.

    Up to ``concurrency`` upload requests are in flight, fewer while answers take longer than
    ``latency_target_s`` (see :class:`InFlightWindow`; keep it under the gateway's encoder
    timeout). ``max_batches`` stops after that many upload batches were sent (a partial run,
    resumable), ``stop`` stops the run like a Ctrl-C when set, ``on_batch`` is called after
    each batch is answered, and ``transport`` replaces the network (tests).

    The report (JSON lines, one per file not ingested) is written to ``report_path`` when
    given; files the gateway rejected in an earlier run with that report are not sent again
    (the same bytes would be rejected again) unless ``retry_rejected``.
    """
    summary = IngestSummary()
    stop = stop or threading.Event()
    kinds = set(CONTENT_TYPES) - (set() if heic_supported() else {"heic"})
    # Walking is cheap next to hashing; doing it first gives the progress bar a total.
    candidates: list[Candidate] = []
    for directory in dirs:
        root = Path(directory)
        if not root.is_dir():
            summary.error = f"{directory} is not a folder"
            return summary
        candidates.extend(walk_images(root, IMAGE_EXTENSIONS, summary))

    earlier: dict[str, tuple[str, str]] = {}
    if report_path is not None and not retry_rejected:
        earlier = read_rejections(Path(report_path))

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    client = httpx.Client(
        base_url=url.rstrip("/"),
        headers=headers,
        timeout=httpx.Timeout(timeout_s, connect=10.0),
        limits=httpx.Limits(max_connections=concurrency + 2),
        transport=transport,
    )
    window = InFlightWindow(concurrency, latency_target_s)
    run = _Run(client, summary, retry or RetryPolicy(), window, progress)
    fatal: list[str] = []
    seen: set[str] = set()
    submitted = 0
    limit_reached = False

    def finished(fut: Future[None]) -> None:
        window.release()
        if fut.cancelled():
            return
        exc = fut.exception()
        if isinstance(exc, FatalError):
            fatal.append(str(exc))
            stop.set()
        elif exc is not None:
            fatal.append(f"an upload crashed: {type(exc).__name__}: {exc}")
            stop.set()
        if on_batch is not None:
            on_batch(summary)

    hashers = ThreadPoolExecutor(hash_workers or min(8, (os.cpu_count() or 2) * 2), "hash")
    uploaders = ThreadPoolExecutor(concurrency, "upload")
    try:
        for chunk in _chunks(candidates, check_chunk):
            if stop.is_set() or limit_reached:
                break
            hashed = [h for h in hashers.map(lambda c: run.hash_file(c, kinds), chunk) if h]
            fresh = []
            for h in hashed:
                if h.sha256 in seen:
                    run.count(duplicates=1)
                elif h.sha256 in earlier:
                    seen.add(h.sha256)
                    error_type, reason = earlier[h.sha256]
                    run.fail(h.candidate, "rejected", error_type, reason, h.sha256)
                else:
                    seen.add(h.sha256)
                    fresh.append(h)
            if not fresh:
                continue
            try:
                missing = run.missing([h.sha256 for h in fresh])
            except GaveUp as exc:
                for h in fresh:
                    run.fail(h.candidate, "failed", "unavailable", str(exc))
                fatal.append(f"the gateway is unreachable: {exc}")
                break
            to_send = [h for h in fresh if h.sha256 in missing]
            run.count(len(fresh) - len(to_send), already=len(fresh) - len(to_send))
            if dry_run:
                for h in to_send:
                    print(f"{h.candidate.relative}\t{h.candidate.size}", file=dry_run_out)
                run.count(len(to_send), would_send=len(to_send))
                continue
            for batch in _batches(to_send, batch_size, batch_bytes):
                # Unlike a stop, reaching the limit lets the batches already queued go out.
                limit_reached = max_batches is not None and submitted >= max_batches
                if stop.is_set() or limit_reached:
                    break
                if not window.acquire(stop):
                    break
                submitted += 1
                uploaders.submit(run.upload, batch).add_done_callback(finished)
    except FatalError as exc:
        fatal.append(str(exc))
    except KeyboardInterrupt:
        stop.set()
    finally:
        hashers.shutdown(wait=False, cancel_futures=True)
        try:
            # Let the batches in flight finish, so their answers are counted and reported;
            # after a stop, those still queued are dropped (they count as pending).
            uploaders.shutdown(wait=True, cancel_futures=stop.is_set())
        except KeyboardInterrupt:
            stop.set()
            uploaders.shutdown(wait=False, cancel_futures=True)
        client.close()
        if run.bar is not None:
            run.bar.close()
    if (stop.is_set() or limit_reached) and not fatal:
        summary.interrupted = True
    if fatal:
        summary.error = fatal[0]
    summary.pending = _unaccounted(summary)
    summary.window = window.largest
    summary.elapsed_s = round(time.monotonic() - run.started, 3)
    if report_path is not None and not dry_run:
        write_report(summary, Path(report_path))
    return summary


def _unaccounted(s: IngestSummary) -> int:
    """Files the run stopped before answering for: they count as pending."""
    done = s.duplicates + s.already + s.added + s.exists + s.rejected + s.failed + s.would_send
    return max(0, s.images - done)


def read_rejections(path: Path) -> dict[str, tuple[str, str]]:
    """sha256 -> (error_type, reason) of the files an earlier report says the gateway refused."""
    rejections: dict[str, tuple[str, str]] = {}
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return rejections
    for line in lines:
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and entry.get("status") == "rejected" and entry.get("sha256"):
            reason = str(entry.get("reason", ""))
            if not reason.startswith(_EARLIER):
                reason = _EARLIER + reason
            rejections[str(entry["sha256"])] = (str(entry.get("error_type")), reason)
    return rejections


_EARLIER = "rejected by an earlier run (--retry-rejected sends it again): "


def write_report(summary: IngestSummary, path: Path) -> None:
    """One JSON object per line for each file not ingested; an empty file when none."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        for failure in sorted(summary.failures, key=lambda f: f.path):
            fh.write(json.dumps(asdict(failure), ensure_ascii=False) + "\n")
    os.replace(tmp, path)
    summary.report = str(path)


# --------------------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="glimpse ingest",
        description="Ingest folders of images into a Glimpse gateway (resumable: re-run to "
        "continue; only new files are uploaded).",
        epilog="Exit status: 0 all ingested; 1 some files not ingested (see the report); "
        "2 bad arguments or the gateway refused the run; 130 interrupted.",
    )
    p.add_argument("dirs", nargs="+", metavar="DIR", help="folders to ingest, recursively")
    p.add_argument("--url", default=os.environ.get("GLIMPSE_URL", DEFAULT_URL),
                   help="the gateway (default: $GLIMPSE_URL or %(default)s)")
    p.add_argument("--api-key", default=os.environ.get("GLIMPSE_API_KEY"),
                   help="sent as 'Authorization: Bearer KEY' (default: $GLIMPSE_API_KEY)")
    p.add_argument("--batch-size", type=int, default=16, help="files per request (%(default)s)")
    p.add_argument("--batch-mb", type=float, default=32.0,
                   help="most megabytes per request (%(default)s)")
    p.add_argument("--concurrency", type=int, default=8,
                   help="most upload requests in flight (%(default)s); fewer while answers "
                   "are slow")
    p.add_argument("--latency-target", type=float, default=40.0,
                   help="seconds an answer may take before fewer requests are kept in flight; "
                   "keep it under the gateway's GATEWAY_ENCODER_TIMEOUT_S (%(default)s)")
    p.add_argument("--hash-workers", type=int, default=None, help="hashing threads")
    p.add_argument("--retries", type=int, default=10,
                   help="tries per request on connection errors, 429, 503, 504 (%(default)s)")
    p.add_argument("--timeout", type=float, default=300.0,
                   help="seconds to wait for one answer (%(default)s)")
    p.add_argument("--report", default=DEFAULT_REPORT,
                   help="where to list the files not ingested, as JSON lines (%(default)s)")
    p.add_argument("--retry-rejected", action="store_true",
                   help="send again the files the report says the gateway rejected before")
    p.add_argument("--max-batches", type=int, default=None,
                   help="stop after sending this many batches (a trial run; re-run to resume)")
    p.add_argument("--dry-run", action="store_true",
                   help="print the files that would be uploaded (path, bytes) and send none")
    p.add_argument("--json", action="store_true", help="print the summary as JSON on stdout")
    p.add_argument("--quiet", action="store_true", help="no progress bar, no summary text")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for name in ("batch_size", "concurrency", "retries"):
        if getattr(args, name) < 1:
            build_parser().error(f"--{name.replace('_', '-')} must be at least 1")
    stop = threading.Event()

    def on_sigint(signum: int, frame: Any) -> None:
        # First Ctrl-C: finish the batches in flight, then summarise. Second: stop now.
        signal.signal(signal.SIGINT, signal.default_int_handler)
        stop.set()
        if not args.quiet:
            print("\nstopping: finishing the batches in flight (Ctrl-C again to abort)",
                  file=sys.stderr)

    # Signal handlers can only be set from the main thread (tests may call main elsewhere).
    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, on_sigint) if in_main else None
    try:
        summary = ingest(
            args.dirs,
            args.url,
            args.api_key,
            batch_size=args.batch_size,
            batch_bytes=int(args.batch_mb * (1 << 20)),
            concurrency=args.concurrency,
            latency_target_s=args.latency_target,
            hash_workers=args.hash_workers,
            retry=RetryPolicy(attempts=args.retries),
            timeout_s=args.timeout,
            dry_run=args.dry_run,
            dry_run_out=sys.stdout,
            report_path=args.report,
            retry_rejected=args.retry_rejected,
            progress=not args.quiet,
            max_batches=args.max_batches,
            stop=stop,
        )
    finally:
        if in_main:
            signal.signal(signal.SIGINT, previous)
    if args.json:
        print(json.dumps(summary.to_dict(), indent=2))
    elif not args.quiet:
        print(summary.describe(), file=sys.stderr)
    elif summary.error:
        print(f"ingest: {summary.error}", file=sys.stderr)
    return summary.exit_code


if __name__ == "__main__":
    sys.exit(main())
