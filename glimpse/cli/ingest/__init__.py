"""Bulk ingestion: load folders of photos into a running Glimpse gateway, fast and resumable.

    glimpse ingest DIR [DIR ...] --url http://localhost:8000 [--api-key KEY]

First the gateway is asked once (``GET /healthz``, a few seconds at most): when nothing
answers at the URL, the run stops at once with the sentence ``glimpse demo`` prints too.
Then the pipeline, one stage feeding the next so the encoder behind the gateway never waits:

1. walk each folder (symlinks followed only while they stay inside the folder; a directory is
   entered once, so symlink loops end), keeping files whose extension names an image format;
2. read and hash the files in a thread pool, keeping those whose first bytes are an image's;
3. ask ``POST /ingest/check`` which hashes the gateway lacks, in chunks;
4. upload only those with ``POST /ingest`` (multipart ``files`` parts, each named by the path
   relative to its folder), in batches, several requests in flight: how many adapts to how
   fast the answers come back (:class:`InFlightWindow`), so a slow encoder is kept busy
   without being buried under requests the gateway would time out.

Once the gateway has answered, connection errors, 429, 503 and 504 are retried with
exponential backoff and jitter, waiting at least what ``Retry-After`` asks. An answer saying a
file itself is bad is never retried: the file goes to the report. A re-run uploads nothing
already stored, so an interrupted run is resumed by running it again. The first Ctrl-C stops
sending new batches, waits for those in flight and prints the summary; a second one stops at
once.

The modules: :mod:`.discover` (walk, hash, sniff, what is new), :mod:`.upload` (the gateway:
first contact, check, batches, retries, the in-flight window), :mod:`.report` (counters,
summary, the JSON-lines report), :mod:`.run` (``ingest()``, the stages wired together) and
:mod:`.cli` (argparse and ``main``). Importable: ``ingest(dirs, url, ...)`` returns an
:class:`IngestSummary`. Only httpx and tqdm are needed, no other part of Glimpse, so it runs on
any machine that can reach the gateway.
"""

from glimpse.cli.ingest.cli import build_parser, main
from glimpse.cli.ingest.discover import (
    CONTENT_TYPES,
    IMAGE_EXTENSIONS,
    Candidate,
    heic_supported,
    sniff_image,
    walk_images,
)
from glimpse.cli.ingest.report import (
    DEFAULT_REPORT,
    EXIT_FATAL,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_SOME_FAILED,
    Failure,
    IngestSummary,
    read_rejections,
    write_report,
)
from glimpse.cli.ingest.run import ingest
from glimpse.cli.ingest.upload import (
    DEFAULT_URL,
    FatalError,
    GaveUp,
    InFlightWindow,
    RetryPolicy,
    parse_retry_after,
    probe,
    unreachable_sentence,
)

__all__ = [
    "CONTENT_TYPES", "DEFAULT_REPORT", "DEFAULT_URL", "EXIT_FATAL", "EXIT_INTERRUPTED",
    "EXIT_OK", "EXIT_SOME_FAILED", "IMAGE_EXTENSIONS", "Candidate", "Failure", "FatalError",
    "GaveUp", "InFlightWindow", "IngestSummary", "RetryPolicy", "build_parser",
    "heic_supported", "ingest", "main", "parse_retry_after", "probe", "read_rejections",
    "sniff_image", "unreachable_sentence", "walk_images", "write_report",
]
