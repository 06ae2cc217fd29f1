"""``combined`` (milvus_service.py): the Milvus backend's words search joins its vector and
keyword futures with done-callbacks, so no search thread waits on another."""

from __future__ import annotations

from concurrent.futures import CancelledError, Future, ThreadPoolExecutor

import pytest

from glimpse.index.milvus_service import combined


def test_the_results_pair_up_whichever_finishes_first() -> None:
    vectors: Future[str] = Future()
    words: Future[str] = Future()
    both = combined(lambda a, b: (a, b), vectors, words)
    words.set_result("keyword hits")
    assert not both.done()  # one result alone settles nothing
    vectors.set_result("vector hits")
    assert both.result(timeout=1) == ("vector hits", "keyword hits")


def test_results_set_on_other_threads_reach_the_caller() -> None:
    with ThreadPoolExecutor(1) as pool:
        # One worker: the second job queues behind the first and nothing waits on a future.
        both = combined(lambda a, b: a + b, pool.submit(sum, [1, 2]), pool.submit(len, "abc"))
        assert both.result(timeout=5) == 6


@pytest.mark.parametrize("failing", [0, 1])
def test_an_exception_in_either_reaches_the_caller_without_waiting_for_the_other(
    failing: int,
) -> None:
    futures: list[Future[int]] = [Future(), Future()]
    both = combined(lambda a, b: (a, b), *futures)
    futures[failing].set_exception(ValueError("milvus unreachable"))
    with pytest.raises(ValueError, match="milvus unreachable"):
        both.result(timeout=1)
    futures[1 - failing].set_result(1)  # the late one changes nothing and raises nothing
    with pytest.raises(ValueError, match="milvus unreachable"):
        both.result(timeout=1)


def test_an_error_of_make_reaches_the_caller() -> None:
    done: Future[int] = Future()
    done.set_result(0)
    with pytest.raises(ZeroDivisionError):
        combined(lambda n: 1 / n, done).result(timeout=1)


def test_cancelling_the_join_cancels_what_has_not_started() -> None:
    queued: Future[int] = Future()
    running: Future[int] = Future()
    assert running.set_running_or_notify_cancel()
    both = combined(lambda a, b: (a, b), queued, running)
    assert both.cancel()
    assert queued.cancelled() and not running.cancelled()
    running.set_result(1)  # finishing after the caller left raises nothing
    assert both.cancelled()


def test_a_cancelled_input_cancels_the_join() -> None:
    first: Future[int] = Future()
    second: Future[int] = Future()
    both = combined(lambda a, b: (a, b), first, second)
    first.cancel()
    assert both.cancelled() and second.cancelled()
    with pytest.raises(CancelledError):
        both.result(timeout=1)
