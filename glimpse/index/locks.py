"""A readers-writer lock: searches share the index, writes and swaps take it alone."""

from __future__ import annotations

import threading
from collections.abc import Callable
from types import TracebackType


class RWLock:
    """Many readers or one writer. Waiting writers go first, so a stream of searches cannot
    starve an add, a delete or the swap of a freshly trained index.

    Every search takes the read side, so it is kept cheap: a plain ``Lock`` under the condition
    (not the default ``RLock``: nothing re-enters it), entered directly, and context managers that
    are objects, not generators.
    """

    def __init__(self) -> None:
        self._mutex = threading.Lock()
        self._cond = threading.Condition(self._mutex)
        self._readers = 0
        self._writer = False
        self._waiting_writers = 0
        self._read = _Side(self.acquire_read, self.release_read)
        self._write = _Side(self.acquire_write, self.release_write)

    def read(self) -> _Side:
        return self._read

    def write(self) -> _Side:
        return self._write

    def acquire_read(self) -> None:
        with self._mutex:  # (the condition's lock: entering it directly skips a Python call)
            while self._writer or self._waiting_writers:
                self._cond.wait()
            self._readers += 1

    def release_read(self) -> None:
        with self._mutex:
            self._readers -= 1
            if self._readers == 0:
                self._cond.notify_all()

    def acquire_write(self) -> None:
        with self._cond:
            self._waiting_writers += 1
            try:
                while self._writer or self._readers:
                    self._cond.wait()
            finally:
                self._waiting_writers -= 1
            self._writer = True

    def release_write(self) -> None:
        with self._cond:
            self._writer = False
            self._cond.notify_all()


class _Side:
    """``with lock.read():`` / ``with lock.write():``; holds no state of its own, so one object
    serves every thread and nested use."""

    __slots__ = ("_enter", "_exit")

    def __init__(self, enter: Callable[[], None], exit_: Callable[[], None]) -> None:
        self._enter = enter
        self._exit = exit_

    def __enter__(self) -> None:
        self._enter()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._exit()
