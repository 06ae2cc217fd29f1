"""``ingest()``: the stages of :mod:`.discover`, :mod:`.upload` and :mod:`.report` wired into
one run, hashing one chunk while the uploads of the previous one are in flight."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any

import httpx

from glimpse.cli.ingest.discover import (
    IMAGE_EXTENSIONS,
    Candidate,
    Hashed,
    NewFiles,
    hash_file,
    sendable_kinds,
    walk_images,
)
from glimpse.cli.ingest.report import IngestSummary, Tally, read_rejections, write_report
from glimpse.cli.ingest.upload import (
    DEFAULT_URL,
    PROBE_TIMEOUT_S,
    FatalError,
    GaveUp,
    InFlightWindow,
    RetryPolicy,
    Uploader,
    batches,
    probe,
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
    on_hashed: Callable[[list[Hashed]], None] | None = None,
    transport: httpx.BaseTransport | None = None,
) -> IngestSummary:
    """Ingest every image under ``dirs`` into the gateway at ``url``; see the package doc.

    Before anything else the gateway is asked once (:func:`.upload.probe`, waiting at most
    ``timeout_s`` or five seconds): when nothing answers, the run stops at once with
    :func:`.upload.unreachable_sentence` as its ``error``. Later failures are retried.

    Up to ``concurrency`` upload requests are in flight, fewer while answers take longer than
    ``latency_target_s`` (see :class:`.upload.InFlightWindow`; keep it under the gateway's
    encoder timeout). ``max_batches`` stops after that many upload batches were sent (a partial
    run, resumable), ``stop`` stops the run like a Ctrl-C when set, ``on_batch`` is called after
    each batch is answered, ``on_hashed`` is given each chunk of files hashed (``--watch``
    keeps their digests), and ``transport`` replaces the network (tests).

    The report (JSON lines, one per file not ingested) is written to ``report_path`` when
    given; files the gateway rejected in an earlier run with that report are not sent again
    (the same bytes would be rejected again) unless ``retry_rejected``.
    """
    summary = IngestSummary()
    started = time.monotonic()
    stop = stop or threading.Event()
    for directory in dirs:
        if not Path(directory).is_dir():
            summary.error = f"{directory} is not a folder"
            return summary

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    client = httpx.Client(
        base_url=url.rstrip("/"),
        headers=headers,
        timeout=httpx.Timeout(timeout_s, connect=10.0),
        limits=httpx.Limits(max_connections=concurrency + 2),
        transport=transport,
    )
    # Before the walk, which can take minutes on a large tree: no gateway is told in seconds.
    summary.error = probe(client, url, min(timeout_s, PROBE_TIMEOUT_S))
    if summary.error is not None:
        client.close()
        summary.elapsed_s = round(time.monotonic() - started, 3)
        return summary

    # Walking is cheap next to hashing; doing it first gives the progress bar a total.
    candidates: list[Candidate] = []
    for directory in dirs:
        candidates.extend(walk_images(Path(directory), IMAGE_EXTENSIONS, summary))

    earlier: dict[str, tuple[str, str]] = {}
    if report_path is not None and not retry_rejected:
        earlier = read_rejections(Path(report_path))

    tally = Tally(summary, progress)
    window = InFlightWindow(concurrency, latency_target_s)
    gateway = Uploader(client, tally, retry or RetryPolicy(), window)
    new_files = NewFiles(tally, earlier)
    kinds = sendable_kinds()
    fatal: list[str] = []
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
            hashed = [h for h in hashers.map(lambda c: hash_file(c, kinds, tally), chunk) if h]
            if on_hashed is not None:
                on_hashed(hashed)
            fresh = new_files(hashed)
            if not fresh:
                continue
            try:
                missing = gateway.missing([h.sha256 for h in fresh])
            except GaveUp as exc:
                for h in fresh:
                    tally.fail(h.candidate.path, h.candidate.relative, "failed", "unavailable",
                               str(exc))
                fatal.append(f"the gateway is unreachable: {exc}")
                break
            to_send = [h for h in fresh if h.sha256 in missing]
            tally.count(len(fresh) - len(to_send), already=len(fresh) - len(to_send))
            if dry_run:
                for h in to_send:
                    print(f"{h.candidate.relative}\t{h.candidate.size}", file=dry_run_out)
                tally.count(len(to_send), would_send=len(to_send))
                continue
            for batch in batches(to_send, batch_size, batch_bytes):
                # Unlike a stop, reaching the limit lets the batches already queued go out.
                limit_reached = max_batches is not None and submitted >= max_batches
                if stop.is_set() or limit_reached:
                    break
                if not window.acquire(stop):
                    break
                submitted += 1
                uploaders.submit(gateway.upload, batch).add_done_callback(finished)
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
        tally.close()
    if (stop.is_set() or limit_reached) and not fatal:
        summary.interrupted = True
    if fatal:
        summary.error = fatal[0]
    summary.pending = summary.unaccounted()
    summary.window = window.largest
    summary.elapsed_s = round(time.monotonic() - tally.started, 3)
    if report_path is not None and not dry_run:
        write_report(summary, Path(report_path))
    return summary
