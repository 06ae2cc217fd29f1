"""What an ingest run tells: the counters and progress bar while it runs, the summary and exit
status at the end, and the JSON-lines report of the files it could not ingest."""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_REPORT = "ingest-report.jsonl"

# Exit statuses of the command line.
EXIT_OK = 0
EXIT_SOME_FAILED = 1  # the run finished; the report lists files it could not ingest
EXIT_FATAL = 2  # bad arguments, no gateway, or the gateway refused the whole run (URL, API key)
EXIT_INTERRUPTED = 130  # Ctrl-C or a batch limit; run again to resume


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

    def unaccounted(self) -> int:
        """Files the run stopped before answering for: they count as pending."""
        done = (self.duplicates + self.already + self.added + self.exists + self.rejected
                + self.failed + self.would_send)
        return max(0, self.images - done)

    def describe(self) -> str:
        if self.error and not self.files:
            # Stopped before the walk (no gateway, a folder that is not one): nothing to count.
            return f"stopped: {self.error}"
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


class Tally:
    """The summary's counters, shared by the hashing and upload threads, and the progress bar
    they move."""

    def __init__(self, summary: IngestSummary, progress: bool) -> None:
        self.summary = summary
        self.lock = threading.Lock()
        self.started = time.monotonic()
        self.bar: Any = None
        if progress:
            from tqdm import tqdm

            # disable=None: no bar when stderr is not a terminal (logs, CI).
            self.bar = tqdm(total=summary.images, unit="file", dynamic_ncols=True, disable=None)

    def count(self, n: int = 1, **fields: int) -> None:
        """Add to the named counters; ``n`` files are done (the bar moves by that much)."""
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
        self, path: Path, relative: str, status: str, error_type: str, reason: str,
        sha256: str | None = None,
    ) -> None:
        """One file not ingested: ``status`` is "rejected" or "failed"."""
        failure = Failure(str(path), relative, status, error_type, reason, sha256)
        with self.lock:
            self.summary.failures.append(failure)
        self.count(**{status: 1})

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


_EARLIER = "rejected by an earlier run (--retry-rejected sends it again): "


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


def write_report(summary: IngestSummary, path: Path) -> None:
    """One JSON object per line for each file not ingested; an empty file when none."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        for failure in sorted(summary.failures, key=lambda f: f.path):
            fh.write(json.dumps(asdict(failure), ensure_ascii=False) + "\n")
    os.replace(tmp, path)
    summary.report = str(path)
