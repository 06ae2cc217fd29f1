#!/usr/bin/env python3
"""How fast POST /admin/model migrates a collection, and what it costs searches meanwhile.

The real index and gateway as processes, with either encoder:

  instant  bench/instant_encoder.py (a unit vector at once, 512-d; the new model 256-d): the
           migration's own cost (reading originals, the index's space writes, the throttle's
           probes), no model in the way;
  tiny     glimpse.encoder with glimpse-tiny (64-d) migrating to glimpse-tiny-32 (32-d), both
           random weights: a real forward pass per image, on this machine's CPU.

Per run: ``--n`` JPEGs (64x48) are ingested, the idle search p50 is taken over ``--searches``
text searches one after another, then the migration starts while the same search loop runs
until the switch. Throughput: items migrated / seconds from POST /admin/model to the state
``switched`` (as polled, every 50 ms). Search p50 during the migration: the loop's searches
between the start and the switch. Every run is one row per quantity. Writes
bench/results/bench_migration.csv (appends).

``--floors``: runs per throttle floor (migration.MIN_IDLE_MS, set through
bench/migration_gateway.py): the idle probe p50 the throttle compares with is at least this.

    .venv/bin/python bench/bench_migration.py [--n 300] [--runs 2] [--encoders instant tiny]
        [--floors 1 5 10]
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from datetime import date
from pathlib import Path

import httpx
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from glimpse.gateway.migration import MIN_IDLE_MS  # noqa: E402
from tests.support.procs import ServiceProcess  # noqa: E402
from tests.support.stack import TINY_DIM, TINY_ENCODER_ENV  # noqa: E402

OUT = ROOT / "bench" / "results" / "bench_migration.csv"
KEY = "bench-migration"
INSTANT_DIM = 512
NEW = {"instant": "instant-second", "tiny": "glimpse-tiny-32"}
BATCH = 32  # files per /ingest call


def _jpeg(seed: int) -> bytes:
    rng = random.Random(seed)
    img = Image.frombytes("RGB", (64, 48), rng.randbytes(64 * 48 * 3))
    out = io.BytesIO()
    img.save(out, "JPEG", quality=85)
    return out.getvalue()


@contextmanager
def services(kind: str, workdir: Path, floor: float | None) -> Iterator[str]:
    """Index, encoder (``kind``) and gateway as processes; the gateway's URL."""
    threads = {"OMP_NUM_THREADS": "1"}
    with ExitStack() as stack:

        def start(role: str, module: str, env: dict[str, str]) -> ServiceProcess:
            proc = ServiceProcess(module, {**threads, **env}, workdir / f"{role}.log")
            stack.callback(proc.stop)
            proc.start(timeout=180)
            return proc

        if kind == "instant":
            dim = INSTANT_DIM
            encoder = start("encoder", "bench.instant_encoder",
                            {"INSTANT_ENCODER_DIM": str(INSTANT_DIM)})
        else:
            dim = TINY_DIM
            encoder = start("encoder", "glimpse.encoder.main", dict(TINY_ENCODER_ENV))
        index = start("index", "glimpse.index.main",
                      {"INDEX_DATA_DIR": str(workdir / "index"), "INDEX_DIM": str(dim)})
        gateway = start("gateway", "bench.migration_gateway", {
            "GATEWAY_ENCODER_URL": encoder.url, "GATEWAY_INDEX_URL": index.url,
            "GATEWAY_MEDIA_DIR": str(workdir / "media"), "GATEWAY_API_KEY": KEY,
            **({} if floor is None else {"BENCH_MIN_IDLE_MS": str(floor)}),
        })
        try:
            yield gateway.url
        except Exception:
            for proc in (gateway, index, encoder):  # why a run failed, before the logs go
                print(f"--- {proc.module} ---\n{proc.log_tail(3000)}", file=sys.stderr)
            raise


class SearchLoop(threading.Thread):
    """Text searches one after another: (start time, milliseconds) of each, and failures."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url, self.failures = url, 0
        self.timings: list[tuple[float, float]] = []
        self.halt = threading.Event()

    def run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=60) as client:
            while not self.halt.is_set():
                started = time.monotonic()
                answer = client.post("/search/text", json={"query": "a photo", "k": 10})
                took = (time.monotonic() - started) * 1000.0
                if answer.status_code == 200:
                    self.timings.append((started, took))
                else:
                    self.failures += 1


def one_run(kind: str, n: int, searches: int, floor: float | None) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="bench-migration-") as tmp, \
            services(kind, Path(tmp), floor) as url, \
            httpx.Client(base_url=url, timeout=120,
                         headers={"Authorization": f"Bearer {KEY}"}) as client:
        for start in range(0, n, BATCH):
            files = [("files", (f"b/{s}.jpg", _jpeg(s), "image/jpeg"))
                     for s in range(start, min(n, start + BATCH))]
            r = client.post("/ingest", files=files)
            r.raise_for_status()
        idle = []
        for _ in range(searches):
            started = time.monotonic()
            client.post("/search/text", json={"query": "a photo", "k": 10}).raise_for_status()
            idle.append((time.monotonic() - started) * 1000.0)
        loop = SearchLoop(url)
        loop.start()
        time.sleep(0.5)
        began = time.monotonic()
        r = client.post("/admin/model", json={"model": NEW[kind], "pretrained": "none"})
        assert r.status_code == 202, r.text
        while True:
            status = client.get("/admin/model").json()
            if status["state"] == "switched":
                switched = time.monotonic()
                break
            assert status["state"] == "running", status
            time.sleep(0.05)
        loop.halt.set()
        loop.join()
        during = [ms for t, ms in loop.timings if began <= t < switched]
        assert loop.failures == 0 and during, (loop.failures, len(during))
        return {
            "throughput": n / (switched - began),
            "idle_p50": statistics.median(idle),
            "during_p50": statistics.median(during),
            "during_count": len(during),
            "delay_s": float(status["delay_s"]),
            "gateway_idle_p50": float(status["idle_p50_ms"] or 0.0),
        }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=300, help="items to migrate (%(default)s)")
    p.add_argument("--runs", type=int, default=2)
    p.add_argument("--searches", type=int, default=40, help="idle searches (%(default)s)")
    p.add_argument("--encoders", nargs="+", choices=sorted(NEW), default=["instant", "tiny"])
    p.add_argument("--floors", nargs="+", type=float, default=[None],
                   help="throttle floors in ms (default: the gateway's MIN_IDLE_MS)")
    args = p.parse_args(argv)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, cwd=ROOT, check=True).stdout.strip()
    command = "python bench/bench_migration.py " + " ".join(argv or sys.argv[1:])
    load = f"load average {os.getloadavg()[0]:.1f} at the start"
    model = {"instant": "instant encoder (512-d to 256-d)",
             "tiny": "glimpse-tiny to glimpse-tiny-32 (64-d to 32-d, random weights, CPU)"}
    written = 0
    runs = ((k, f, r) for k in args.encoders for f in args.floors for r in range(args.runs))
    for kind, floor, run in runs:
        got = one_run(kind, args.n, args.searches, floor)
        print(kind, floor, run, {k: round(v, 2) for k, v in got.items()}, flush=True)
        base = {"date": date.today().isoformat(), "commit": commit, "machine": "dev-2core"}
        floor_ms = MIN_IDLE_MS if floor is None else floor
        what = (f"{{}}: {model[kind]}, {args.n} items, 1 search client, throttle floor "
                f"{floor_ms:g} ms")
        note = (f"run {run + 1} of {args.runs}; {int(got['during_count'])} searches during; "
                f"throttle delay {got['delay_s']} s at the end; index probe p50 idle "
                f"{got['gateway_idle_p50']:.2f} ms; {load}")
        rows = [{**base, "what": what.format("migration throughput"),
                 "variant": "glimpse", "value": f"{got['throughput']:.1f}",
                 "unit": "items/s", "command": "" if written else command, "note": note}]
        for variant, key in (("idle", "idle_p50"), ("during the migration", "during_p50")):
            rows.append({**base, "what": what.format("search p50 (POST /search/text)"),
                         "variant": variant, "value": f"{got[key]:.2f}", "unit": "ms",
                         "command": "", "note": note})
        # Each run's rows at once: a later run that fails keeps the earlier ones.
        new_file = not OUT.exists()
        with OUT.open("a", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
            if new_file:
                writer.writeheader()
            writer.writerows(rows)
        written += len(rows)
    print(f"wrote {written} rows to {OUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
