"""Dynamic batching: inputs from concurrent requests are gathered into one forward pass, run by
ONE model thread.

One thread owns the model because a forward pass already uses every core (CPU intra-op threads,
or the whole GPU); two passes at once would only fight over them. The event loop never waits
on it: each input gets a ``concurrent.futures.Future`` that the loop awaits.

The batching rule: the model thread takes the oldest input and every queued input of the same
kind, up to ``max_batch``. It waits for more, at most ``max_wait`` after the oldest input was
queued, only while other inputs are announced but not yet queued (images still being decoded
by the pool). So a lone text query never waits, and under load the inputs that arrive during
a forward pass form the next batch.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from glimpse.contracts.errors import ErrorType, GlimpseError

logger = logging.getLogger("glimpse.encoder.batching")

Kind = Literal["text", "image"]
BatchResult = Sequence["np.ndarray | BaseException"]
# Runs one batch of payloads of one kind in the model thread; one vector or error per payload.
BatchRunner = Callable[[Kind, list[Any]], BatchResult]

BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
WAIT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class BatchMetrics:
    """What the model thread does, on the app's registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.batch_size = Histogram(
            "glimpse_encoder_batch_size",
            "Inputs per forward pass.",
            ["kind"],
            buckets=BATCH_SIZE_BUCKETS,
            registry=registry,
        )
        self.queue_wait = Histogram(
            "glimpse_encoder_queue_wait_seconds",
            "Time an input (or a run of one request's inputs, counted once) waited in the "
            "queue before its forward pass began.",
            ["kind"],
            buckets=WAIT_BUCKETS,
            registry=registry,
        )
        self.forward = Histogram(
            "glimpse_encoder_forward_seconds",
            "Time of one forward pass (a whole batch), preprocessing on the device included.",
            ["kind"],
            buckets=WAIT_BUCKETS,
            registry=registry,
        )
        self.inputs = Counter(
            "glimpse_encoder_inputs_total",
            "Inputs that went through a forward pass.",
            ["kind"],
            registry=registry,
        )
        self.queue_depth = Gauge(
            "glimpse_encoder_queue_depth", "Inputs waiting for the model.", registry=registry
        )


@dataclass
class _Item:
    """One input (``submit``: its future gets the input's vector or error) or a run of inputs
    of one request (``submit_run``: its future gets the list of their vectors or errors)."""

    kind: Kind
    payloads: list[Any]
    run: bool
    future: Future[Any] = field(default_factory=Future)
    enqueued: float = field(default_factory=time.perf_counter)


class Batcher:
    """A queue of inputs and the one thread that runs them through the model in batches."""

    def __init__(
        self,
        runner: BatchRunner,
        *,
        max_batch: int,
        max_wait_s: float,
        max_queue: int,
        metrics: BatchMetrics,
    ) -> None:
        self._runner = runner
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.max_queue = max_queue
        self._metrics = metrics
        self._queue: deque[_Item] = deque()
        self._queued = 0  # inputs in the queue (a run counts each of its inputs)
        self._announced = 0
        self._cond = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="glimpse-model", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Refuse new inputs, let the model thread finish what is queued, and join it; inputs
        still queued after ``timeout`` get a not_ready error."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)
        with self._cond:
            left = list(self._queue)
            self._queue.clear()
            self._queued = 0
        for item in left:
            if item.future.set_running_or_notify_cancel():
                item.future.set_exception(
                    GlimpseError(ErrorType.not_ready, "The encoder is shutting down; retry.")
                )

    def announce(self, count: int) -> None:
        """``count`` inputs are on their way (being decoded); worth waiting for. Negative
        counts withdraw announcements (an input failed before it was queued)."""
        with self._cond:
            self._announced = max(0, self._announced + count)
            if count < 0:
                self._cond.notify_all()

    def submit(self, kind: Kind, payloads: Sequence[Any], *, announced: bool = False) -> list[
        Future[np.ndarray]
    ]:
        """Queue inputs; each future gets its unit vector (or the input's error)."""
        items = [_Item(kind, [payload], run=False) for payload in payloads]
        self._enqueue(items, len(items), announced)
        return [item.future for item in items]

    def submit_run(self, kind: Kind, payloads: Sequence[Any], *, announced: bool = False) -> (
        Future[list[np.ndarray | BaseException]]
    ):
        """Queue a run of at most ``max_batch`` inputs that travel together (one request's
        files): one future gets one vector or error per input, in order. The model thread's
        bookkeeping is then per run, not per input."""
        if not 0 < len(payloads) <= self.max_batch:
            raise ValueError(f"a run holds 1 to {self.max_batch} inputs, not {len(payloads)}")
        item = _Item(kind, list(payloads), run=True)
        self._enqueue([item], len(payloads), announced)
        return item.future

    def _enqueue(self, items: list[_Item], count: int, announced: bool) -> None:
        with self._cond:
            if announced:
                self._announced = max(0, self._announced - count)
            if self._stopping:
                raise GlimpseError(ErrorType.not_ready, "The encoder is shutting down; retry.")
            if self._queued + count > self.max_queue:
                raise GlimpseError(
                    ErrorType.overloaded,
                    f"The encoder queue is full ({self._queued} inputs waiting, limit "
                    f"{self.max_queue}); retry later.",
                    headers={"Retry-After": "1"},
                )
            self._queue.extend(items)
            self._queued += count
            self._metrics.queue_depth.set(self._queued)
            self._cond.notify_all()

    def _take_batch(self) -> list[_Item] | None:
        """Block until a batch is due; None once stopping and drained."""
        with self._cond:
            while not self._queue:
                if self._stopping:
                    return None
                self._cond.wait()
            first = self._queue[0]
            deadline = first.enqueued + self.max_wait_s
            while not self._stopping:
                same_kind = sum(len(i.payloads) for i in self._queue if i.kind == first.kind)
                remaining = deadline - time.perf_counter()
                if same_kind >= self.max_batch or self._announced == 0 or remaining <= 0:
                    break
                self._cond.wait(remaining)
            # Whole items only, oldest first, while they fit (runs are never split).
            batch: list[_Item] = []
            rest: deque[_Item] = deque()
            size = 0
            for item in self._queue:
                if item.kind == first.kind and size + len(item.payloads) <= self.max_batch:
                    batch.append(item)
                    size += len(item.payloads)
                else:
                    rest.append(item)
            self._queue = rest
            self._queued -= size
            self._metrics.queue_depth.set(self._queued)
        # A request that went away (client disconnected) cancelled its futures: skip those.
        return [item for item in batch if item.future.set_running_or_notify_cancel()]

    def _loop(self) -> None:
        while True:
            batch = self._take_batch()
            if batch is None:
                return
            if batch:
                self._run(batch)

    def _run(self, batch: list[_Item]) -> None:
        kind = batch[0].kind
        start = time.perf_counter()
        for item in batch:  # a run counts once: it waited as one
            self._metrics.queue_wait.labels(kind).observe(start - item.enqueued)
        payloads = [p for item in batch for p in item.payloads]
        try:
            results = self._runner(kind, payloads)
            if len(results) != len(payloads):
                raise RuntimeError(
                    f"runner gave {len(results)} results for {len(payloads)} inputs"
                )
        except Exception as exc:  # noqa: BLE001 - the batch's requests get the error, the thread lives
            logger.exception("forward pass of %d %s inputs failed", len(payloads), kind)
            for item in batch:
                item.future.set_exception(exc)
            return
        finally:
            self._metrics.forward.labels(kind).observe(time.perf_counter() - start)
            self._metrics.batch_size.labels(kind).observe(len(payloads))
            self._metrics.inputs.labels(kind).inc(len(payloads))
        at = 0
        for item in batch:
            count = len(item.payloads)
            if item.run:
                item.future.set_result(list(results[at:at + count]))
            elif isinstance(result := results[at], BaseException):
                item.future.set_exception(result)
            else:
                item.future.set_result(result)
            at += count
