"""The command line: ``glimpse ingest DIR [DIR ...] --url URL``, its options and exit status."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from glimpse.cli.ingest.report import DEFAULT_REPORT, EXIT_FATAL, EXIT_OK
from glimpse.cli.ingest.run import ingest
from glimpse.cli.ingest.upload import DEFAULT_URL, FatalError, RetryPolicy
from glimpse.cli.ingest.watch import DEFAULT_STATE, Entry, first_pass_entries, watch_folders


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="glimpse ingest",
        description="Ingest folders of images into a Glimpse gateway (resumable: re-run to "
        "continue; only new files are uploaded).",
        epilog="Exit status: 0 all ingested; 1 some files not ingested (see the report); "
        "2 bad arguments, no gateway at --url, or the gateway refused the run; 130 interrupted.",
    )
    p.add_argument("dirs", nargs="+", metavar="DIR", help="folders to ingest, recursively")
    p.add_argument("--url", default=DEFAULT_URL,
                   help="the gateway (default: %(default)s)")
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
                   help="tries per request on connection errors, 429, 503, 504 once the "
                   "gateway has answered (%(default)s)")
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
    p.add_argument("--watch", action="store_true",
                   help="after the upload, keep watching the folders and keep the gateway in "
                   "sync: new and changed files are uploaded, deleted ones deleted, moved ones "
                   "given their new path (Ctrl-C stops)")
    p.add_argument("--state", default=DEFAULT_STATE,
                   help="--watch: where the files' sizes, mtimes and digests are kept across "
                   "runs (%(default)s)")
    p.add_argument("--poll", action="store_true",
                   help="--watch: compare the folders every few seconds instead of inotify "
                   "(network filesystems, where inotify sees nothing)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON on stdout")
    p.add_argument("--quiet", action="store_true", help="no progress bar, no summary text")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for name in ("batch_size", "concurrency", "retries"):
        if getattr(args, name) < 1:
            build_parser().error(f"--{name.replace('_', '-')} must be at least 1")
    if args.watch and args.dry_run:
        build_parser().error("--watch and --dry-run cannot go together")
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
    hashed: list[Any] = []
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
            on_hashed=hashed.extend if args.watch else None,
        )
        if args.json:
            print(json.dumps(summary.to_dict(), indent=2), flush=True)
        if not (args.json or args.quiet):
            print(summary.describe(), file=sys.stderr)
        elif summary.error:
            print(f"glimpse ingest: {summary.error}", file=sys.stderr)
        if not args.watch or summary.error or summary.interrupted or stop.is_set():
            return summary.exit_code
        return _watch(args, first_pass_entries(args.dirs, hashed, summary), stop)
    finally:
        if in_main:
            signal.signal(signal.SIGINT, previous)


def _watch(args: argparse.Namespace, hashed: dict[str, dict[str, Entry]],
           stop: threading.Event) -> int:
    """--watch, after the first pass: until Ctrl-C (then 0) or a refusal of the run (2)."""
    import httpx

    def log(line: str) -> None:
        if not args.quiet:
            print(f"glimpse ingest --watch: {line}", file=sys.stderr, flush=True)

    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    with httpx.Client(base_url=args.url.rstrip("/"), headers=headers,
                      timeout=httpx.Timeout(args.timeout, connect=10.0)) as client:
        try:
            log(f"watching {', '.join(args.dirs)} (Ctrl-C stops)")
            watch_folders(args.dirs, client, Path(args.state), stop, hashed=hashed,
                          poll=args.poll, retry=RetryPolicy(attempts=args.retries), log=log)
        except FatalError as exc:
            print(f"glimpse ingest: {exc}", file=sys.stderr)
            return EXIT_FATAL
        except ImportError as exc:
            print(f"glimpse ingest: --watch needs the watchdog package ({exc})", file=sys.stderr)
            return EXIT_FATAL
    return EXIT_OK
