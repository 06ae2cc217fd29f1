"""The batcher on its own, with a fake model: gathering, waiting, overload, failures."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor, wait

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from glimpse.contracts.errors import GlimpseError
from glimpse.encoder.batching import Batcher, BatchMetrics, Kind


class FakeModel:
    """Doubles each payload; records the batches; can be slowed down or made to fail."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.batches: list[tuple[Kind, list[float]]] = []
        self.fail = False
        self.gate = threading.Event()
        self.gate.set()

    def __call__(self, kind: Kind, payloads: list[float]) -> list[np.ndarray]:
        self.gate.wait(5)
        if self.fail:
            raise RuntimeError("boom")
        self.batches.append((kind, list(payloads)))
        time.sleep(self.delay)
        return [np.array([2.0 * p], np.float32) for p in payloads]


@pytest.fixture
def make() -> Iterator:
    made: list[Batcher] = []

    def _make(model: FakeModel, **kw: float) -> Batcher:
        params = {"max_batch": 8, "max_wait_s": 0.05, "max_queue": 100} | kw
        batcher = Batcher(
            model,
            max_batch=int(params["max_batch"]),
            max_wait_s=float(params["max_wait_s"]),
            max_queue=int(params["max_queue"]),
            metrics=BatchMetrics(CollectorRegistry()),
        )
        batcher.start()
        made.append(batcher)
        return batcher

    yield _make
    for batcher in made:
        batcher.stop()


def test_results_come_back_in_order(make) -> None:
    model = FakeModel()
    batcher = make(model)
    futures = batcher.submit("text", [1.0, 2.0, 3.0])
    assert [f.result(5)[0] for f in futures] == [2.0, 4.0, 6.0]


def test_inputs_queued_during_a_forward_pass_form_the_next_batch(make) -> None:
    model = FakeModel()
    batcher = make(model, max_batch=4)
    model.gate.clear()  # hold the model thread inside its first batch
    first = batcher.submit("image", [0.0])
    time.sleep(0.05)
    rest = [batcher.submit("image", [float(i)])[0] for i in range(1, 10)]
    model.gate.set()
    wait([*first, *rest], timeout=5)
    sizes = [len(p) for _, p in model.batches]
    assert sizes == [1, 4, 4, 1]


def test_kinds_are_never_mixed_and_order_is_kept(make) -> None:
    model = FakeModel()
    batcher = make(model)
    model.gate.clear()
    batcher.submit("text", [0.0])
    time.sleep(0.05)
    futures = batcher.submit("image", [1.0, 2.0]) + batcher.submit("text", [3.0])
    futures += batcher.submit("image", [4.0])
    model.gate.set()
    wait(futures, timeout=5)
    assert model.batches == [("text", [0.0]), ("image", [1.0, 2.0, 4.0]), ("text", [3.0])]


def test_a_lone_input_does_not_wait(make) -> None:
    batcher = make(FakeModel(), max_wait_s=5.0)
    start = time.perf_counter()
    batcher.submit("text", [1.0])[0].result(5)
    assert time.perf_counter() - start < 1.0


def test_announced_inputs_are_waited_for_but_at_most_max_wait(make) -> None:
    model = FakeModel()
    batcher = make(model, max_wait_s=0.3)
    batcher.announce(2)
    first = batcher.submit("image", [1.0], announced=True)[0]
    time.sleep(0.05)
    second = batcher.submit("image", [2.0], announced=True)[0]
    wait([first, second], timeout=5)
    assert [len(p) for _, p in model.batches] == [2]

    batcher.announce(1)  # announced but never arrives: the batch goes after max_wait
    start = time.perf_counter()
    batcher.submit("image", [3.0])[0].result(5)
    assert 0.2 < time.perf_counter() - start < 2.0
    batcher.announce(-1)


def test_concurrent_submitters_are_gathered(make) -> None:
    model = FakeModel(delay=0.02)
    batcher = make(model, max_batch=16)
    with ThreadPoolExecutor(16) as pool:
        futures = list(pool.map(lambda i: batcher.submit("text", [float(i)])[0], range(64)))
    assert sorted(f.result(5)[0] for f in futures) == [2.0 * i for i in range(64)]
    assert len(model.batches) < 64
    assert max(len(p) for _, p in model.batches) > 1


def test_a_full_queue_is_overloaded(make) -> None:
    model = FakeModel()
    batcher = make(model, max_queue=3)
    model.gate.clear()
    batcher.submit("text", [0.0])
    time.sleep(0.05)
    batcher.submit("text", [1.0, 2.0, 3.0])
    with pytest.raises(GlimpseError) as info:
        batcher.submit("text", [4.0])
    assert info.value.status == 429 and info.value.error_type == "overloaded"
    model.gate.set()


def test_a_failing_batch_fails_its_inputs_and_the_thread_lives_on(make) -> None:
    model = FakeModel()
    batcher = make(model)
    model.fail = True
    with pytest.raises(RuntimeError, match="boom"):
        batcher.submit("text", [1.0])[0].result(5)
    model.fail = False
    assert batcher.submit("text", [1.0])[0].result(5)[0] == 2.0


def test_cancelled_inputs_are_skipped(make) -> None:
    model = FakeModel()
    batcher = make(model)
    model.gate.clear()
    batcher.submit("text", [0.0])
    time.sleep(0.05)
    gone, kept = batcher.submit("text", [1.0, 2.0])
    assert gone.cancel()
    model.gate.set()
    assert kept.result(5)[0] == 4.0
    assert [p for _, p in model.batches] == [[0.0], [2.0]]


def test_stop_finishes_the_queue_then_refuses(make) -> None:
    model = FakeModel()
    batcher = make(model)
    model.gate.clear()
    batcher.submit("text", [0.0])
    time.sleep(0.05)
    (queued,) = batcher.submit("text", [1.0])
    threading.Timer(0.2, model.gate.set).start()
    batcher.stop()
    assert queued.result(0)[0] == 2.0
    with pytest.raises(GlimpseError):
        batcher.submit("text", [2.0])


def test_a_run_travels_whole_and_gets_one_answer_per_input(make) -> None:
    model = FakeModel()
    model.gate.clear()  # hold the model thread so that everything below queues
    batcher = make(model, max_batch=8)
    blocker = batcher.submit("image", [0.0])
    time.sleep(0.1)  # the model thread has taken it and waits at the gate
    runs = [batcher.submit_run("image", [1.0, 2.0, 3.0]), batcher.submit_run("image", [4.0] * 5),
            batcher.submit_run("image", [5.0, 6.0])]
    single = batcher.submit("image", [7.0])
    model.gate.set()
    assert [float(v[0]) for v in runs[0].result(5)] == [2.0, 4.0, 6.0]
    assert len(runs[1].result(5)) == 5 and float(single[0].result(5)[0]) == 14.0
    blocker[0].result(5)
    sizes = [len(payloads) for _, payloads in model.batches]
    # Runs are never split: 3 + 5 fill the second batch; the third run waits for the next.
    assert sizes[1:] == [8, 3] and sum(sizes) == 12


def test_a_run_counts_each_input_against_the_queue_limit(make) -> None:
    model = FakeModel()
    model.gate.clear()
    batcher = make(model, max_batch=8, max_queue=10)
    batcher.submit("image", [0.0])  # taken by the model thread, or still queued
    time.sleep(0.1)
    batcher.submit_run("image", [1.0] * 8)
    with pytest.raises(GlimpseError) as excinfo:
        batcher.submit_run("image", [1.0] * 3)
    assert excinfo.value.error_type == "overloaded"
    with pytest.raises(ValueError):
        batcher.submit_run("image", [1.0] * 9)  # larger than a batch
    model.gate.set()


def test_a_failing_batch_fails_every_run_in_it(make) -> None:
    model = FakeModel()
    model.fail = True
    batcher = make(model)
    run = batcher.submit_run("image", [1.0, 2.0])
    with pytest.raises(RuntimeError, match="boom"):
        run.result(5)
