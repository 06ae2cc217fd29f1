"""Talking to the gateway: the first contact, ``/ingest/check``, and the uploads in batches,
with retries of transient failures and a number of requests in flight that adapts to how fast
the answers come back."""

from __future__ import annotations

import email.utils
import json
import random
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx

from glimpse.cli.ingest.discover import CONTENT_TYPES, Hashed
from glimpse.cli.ingest.report import Tally

DEFAULT_URL = "http://localhost:8000"

# How long the first contact may take: a gateway that is up answers /healthz at once, so a
# longer wait only delays telling the user that none is there.
PROBE_TIMEOUT_S = 5.0
# Statuses worth another try: the gateway or its upstreams are busy, restarting or slow.
RETRY_STATUSES = frozenset({429, 503, 504})
# Statuses that say the whole run cannot work (wrong URL or key): stop instead of failing
# every file one by one.
FATAL_STATUSES = frozenset({401, 403, 404, 405})


def unreachable_sentence(url: str, exc: Exception) -> str:
    """What `glimpse ingest` and `glimpse demo` say when no gateway answers at ``url``."""
    return (f"no Glimpse gateway answers at {url} ({exc}); start one with `make dev` "
            "or `docker compose up`, or pass --url")


def probe(client: httpx.Client, url: str, timeout_s: float = PROBE_TIMEOUT_S) -> str | None:
    """None when anything answers HTTP at ``url`` (even an error: later requests judge it),
    else :func:`unreachable_sentence`. Not retried: nothing has worked yet, so a refused or
    silent connection is a wrong URL or a stopped gateway, not a passing failure."""
    try:
        client.get("/healthz", timeout=timeout_s)
    except httpx.TransportError as exc:
        return unreachable_sentence(url, exc)
    return None


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


def batches(items: list[Hashed], max_files: int, max_bytes: int) -> Iterator[list[Hashed]]:
    """``items`` in order, cut into requests of at most that many files and bytes."""
    batch: list[Hashed] = []
    size = 0
    for item in items:
        if batch and (len(batch) >= max_files or size + item.candidate.size > max_bytes):
            yield batch
            batch, size = [], 0
        batch.append(item)
        size += item.candidate.size
    if batch:
        yield batch


class Uploader:
    """The run's requests to the gateway, on one shared client; every answer is counted in
    ``tally``."""

    def __init__(
        self, client: httpx.Client, tally: Tally, retry: RetryPolicy, window: InFlightWindow
    ) -> None:
        self.client = client
        self.tally = tally
        self.retry = retry
        self.window = window
        self.rng = random.Random()

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
            self.tally.count(0, retries=1)
            time.sleep(self.retry.delay(attempt, retry_after, self.rng))

    def missing(self, hashes: list[str]) -> set[str]:
        """The hashes the gateway does not have yet (``/ingest/check``)."""
        resp = self.request("POST", "/ingest/check", json={"sha256": hashes})
        if resp.status_code in FATAL_STATUSES:
            raise FatalError(f"/ingest/check answered {error_sentence(resp)[1]}")
        if resp.status_code != 200:
            raise GaveUp(f"/ingest/check answered {error_sentence(resp)[1]}")
        return set(resp.json()["missing"])

    def _fail(self, item: Hashed, status: str, error_type: str, reason: str,
              with_sha: bool = True) -> None:
        c = item.candidate
        self.tally.fail(c.path, c.relative, status, error_type, reason,
                        item.sha256 if with_sha else None)

    def upload(self, batch: list[Hashed]) -> None:
        """Send one batch; every file in it ends up counted exactly once."""
        parts = []
        sent: list[Hashed] = []
        size = 0
        mtimes: dict[str, float] = {}  # the date taken of files whose EXIF has none
        for item in batch:
            try:
                data = item.candidate.path.read_bytes()
                mtimes[item.candidate.relative] = item.candidate.path.stat().st_mtime
            except OSError as exc:
                self._fail(item, "failed", "unreadable", f"could not read the file: {exc}", False)
                continue
            parts.append(("files", (item.candidate.relative, data, CONTENT_TYPES[item.kind])))
            sent.append(item)
            size += len(data)
        if not sent:
            return
        try:
            resp = self.request("POST", "/ingest", window=self.window, files=parts,
                                data={"mtimes": json.dumps(mtimes)})
        except GaveUp as exc:
            for item in sent:
                self._fail(item, "failed", "unavailable", str(exc))
            return
        except httpx.HTTPError as exc:  # e.g. the client was closed by a second Ctrl-C
            for item in sent:
                self._fail(item, "failed", "request_error", f"{type(exc).__name__}: {exc}", False)
            return
        del parts
        if resp.status_code == 200:
            self.tally.count(0, batches=1, bytes_uploaded=size)
            self._record_items(sent, resp)
            return
        error_type, sentence = error_sentence(resp)
        if resp.status_code in FATAL_STATUSES:
            for item in sent:
                self._fail(item, "failed", error_type, sentence, False)
            raise FatalError(f"/ingest answered {sentence}")
        if 400 <= resp.status_code < 500:
            if len(sent) > 1:
                # The request as a whole was refused (too large, or one file too odd for the
                # gateway to answer per file): halve it until the bad file stands alone.
                half = len(sent) // 2
                self.upload(sent[:half])
                self.upload(sent[half:])
                return
            self._fail(sent[0], "rejected", error_type, sentence)
            return
        for item in sent:
            self._fail(item, "failed", error_type, sentence, False)

    def _record_items(self, sent: list[Hashed], resp: httpx.Response) -> None:
        items = resp.json().get("items", [])
        if len(items) != len(sent):
            by_path = {item.get("path"): item for item in items}
            items = [by_path.get(h.candidate.relative) for h in sent]
        for hashed, item in zip(sent, items, strict=True):
            status = item.get("status") if isinstance(item, dict) else None
            if status == "added":
                self.tally.count(added=1)
            elif status == "exists":
                self.tally.count(exists=1)
            elif status == "rejected":
                assert isinstance(item, dict)
                self._fail(hashed, "rejected", str(item.get("error_type") or "rejected"),
                           str(item.get("error") or "the gateway rejected the file"))
            else:
                self._fail(hashed, "failed", "no_answer",
                           "the gateway's answer did not mention this file", False)
