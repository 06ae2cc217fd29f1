"""RELIABILITY.md #17: the encoder stops while the gateway is under load.

Four clients search by text without pause. The encoder is killed (SIGKILL: the process is
gone, connections are refused), later started again on the same port. Figures: the longest
a search took to answer once the encoder was gone, what it answered (503
upstream_unavailable, never a 500 or a hang), and how long after the encoder was back the
first search succeeded again, with no restart of the gateway.

A frozen encoder (SIGSTOP: connections accepted, never answered) is the harder case: the
gateway must not hold the client for its whole read timeout.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest


@dataclass
class Load:
    """Clients searching in a loop; each answer is (start, seconds, status, error_type)."""

    url: str
    clients: int = 4
    answers: list[tuple[float, float, int, str | None]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def _run(self, n: int) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as http:
            i = 0
            while not self.stop.is_set():
                i += 1
                started = time.monotonic()
                try:
                    r = http.post("/search/text", json={"query": f"load {n} {i}", "k": 5})
                    status = r.status_code
                    kind = r.json().get("error_type") if status != 200 else None
                except httpx.HTTPError as exc:
                    status, kind = 0, type(exc).__name__
                self.answers.append((started, time.monotonic() - started, status, kind))
                time.sleep(0.01)

    def __enter__(self) -> Load:
        self.threads = [threading.Thread(target=self._run, args=(n,), daemon=True)
                        for n in range(self.clients)]
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(60)

    def since(self, t: float) -> list[tuple[float, float, int, str | None]]:
        return [a for a in list(self.answers) if a[0] >= t]


@pytest.mark.slow
def test_encoder_killed_under_load(stack: Any, figure: Any) -> None:
    with Load(stack.gateway_url) as load:
        time.sleep(1.5)
        assert any(a[2] == 200 for a in load.answers), load.answers[-5:]
        killed_at = time.monotonic()
        stack.encoder.kill()
        time.sleep(3.0)
        down = load.since(killed_at + 0.2)  # requests begun after the kill was surely seen
        restarted_at = time.monotonic()
        stack.encoder.start(180)
        ready_at = time.monotonic()
        recovered_at = None
        deadline = ready_at + 30
        while time.monotonic() < deadline and recovered_at is None:
            ok = [a for a in load.since(ready_at) if a[2] == 200]
            if ok:
                recovered_at = ok[0][0] + ok[0][1]
            time.sleep(0.05)
    slowest = max((a[1] for a in down), default=None)
    kinds = sorted({(a[2], a[3]) for a in down})
    figure(
        requests_while_down=len(down),
        slowest_answer_while_down_s=round(slowest, 3) if slowest is not None else None,
        answers_while_down=[f"{s} {k}" for s, k in kinds],
        encoder_restart_s=round(ready_at - restarted_at, 1),
        recovered_after_encoder_ready_s=(
            round(recovered_at - ready_at, 3) if recovered_at is not None else None),
    )
    assert down, "no request was made while the encoder was down"
    assert kinds == [(503, "upstream_unavailable")], kinds
    assert slowest is not None and slowest < 2.0, slowest
    assert recovered_at is not None, "the gateway did not recover by itself within 30 s"


@pytest.mark.slow
def test_encoder_frozen_under_load(stack: Any, figure: Any) -> None:
    assert stack.encoder.proc is not None
    pid = stack.encoder.proc.pid
    with Load(stack.gateway_url) as load:
        time.sleep(1.0)
        frozen_at = time.monotonic()
        os.kill(pid, signal.SIGSTOP)
        try:
            time.sleep(4.0)
        finally:
            os.kill(pid, signal.SIGCONT)
        thawed_at = time.monotonic()
        time.sleep(2.0)
    # Each request in flight while the encoder was frozen: how long it waited on the frozen
    # encoder (until its answer, or until the thaw released it).
    waits = [
        (min(start + took, thawed_at) - max(start, frozen_at), status, kind)
        for start, took, status, kind in list(load.answers)
        if start < thawed_at and start + took > frozen_at + 0.2
    ]
    slowest = max((w for w, _, _ in waits), default=None)
    during = [a for a in load.answers if frozen_at + 0.2 < a[0] + a[1] < thawed_at]
    kinds = sorted({(a[2], a[3]) for a in during})
    after = [a for a in load.since(thawed_at + 0.5) if a[2] == 200]
    figure(requests_in_flight_while_frozen=len(waits), answered_while_frozen=len(during),
           slowest_answer_while_frozen_s=round(slowest, 3) if slowest is not None else None,
           answers_while_frozen=[f"{s} {k}" for s, k in kinds],
           recovered_after_thaw=bool(after))
    assert waits, "no request was made while the encoder was frozen"
    assert slowest is not None and slowest < 2.0, (
        f"a search waited {slowest:.1f}s on the frozen encoder", kinds)
    assert all(s in (503, 504) for s, _ in kinds), kinds
    assert after, "searches did not succeed again after the encoder thawed"
