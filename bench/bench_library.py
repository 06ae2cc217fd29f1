"""Library scans (glimpse/gateway/library.py): a rescan of an unchanged library, and a first scan.

    python bench/bench_library.py [--files 100000] [--first 2000] [--runs 3] [--csv]

- rescan: ``--files`` small files in 100 folders, their records written by a first plan; then
  Library.plan() of the unchanged folder (stat only, no file read), files per second;
- first scan: ``--first`` 640x480 JPEGs in a library of a real gateway, its encoder the instant
  stand-in (bench/instant_encoder.py) and a real index: the files per second of the gateway's
  own scan (read, hash, header check, encoder and index calls, records), from its
  GET /admin/libraries.

``--csv`` appends the rows to bench/results/bench_library.csv.
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench_ingest import generate, instant_services  # noqa: E402
from glimpse.gateway.library import Library, Row  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "bench_library.csv"


def rescan_rates(root: Path, files: int, runs: int) -> list[float]:
    for n in range(files):
        folder = root / f"{n % 100:02d}"
        if n < 100:
            folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{n}.jpg").write_bytes(b"x" * (n % 97 + 1))
    library = Library("bench", root, root.parent / "state", watch="off")
    library.check_root()
    plan = library.plan()
    library.state.put(
        (path, Row(size, mtime, "0" * 64, n, "indexed", None))
        for n, (path, size, mtime) in enumerate(plan.changed)
    )
    rates = []
    for _ in range(runs):
        start = time.perf_counter()
        plan = library.plan()
        seconds = time.perf_counter() - start
        assert plan.seen == files and not plan.changed and not plan.gone
        rates.append(files / seconds)
    library.state.close()
    return rates


def first_scan_rate(workdir: Path, files: int) -> float:
    photos = workdir / "photos"
    generate(photos, files, (640, 480))
    past = time.time() - 60  # settled: a first scan takes them at once
    for path in photos.rglob("*"):
        os.utime(path, (past, past))
    env = {"GATEWAY_LIBRARIES": f"photos={photos}", "GATEWAY_LIBRARY_WATCH": "off"}
    with instant_services(workdir, env) as procs:
        deadline = time.monotonic() + 1800
        with httpx.Client(base_url=procs["gateway"].url, timeout=30) as client:
            while True:
                status = client.get("/admin/libraries").json()["libraries"][0]
                if status["last_scan"] is not None:
                    break
                assert time.monotonic() < deadline
                time.sleep(0.2)
    assert status["indexed"] == files, status
    return float(files / status["last_scan"]["seconds"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--first", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--csv", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rescans = rescan_rates(Path(tmp) / "lib", args.files, args.runs)
    with tempfile.TemporaryDirectory() as tmp:
        first = first_scan_rate(Path(tmp), args.first)
    for rate in rescans:
        print(f"rescan of {args.files} unchanged files: {rate:,.0f} files/s")
    print(f"first scan of {args.first} 640x480 JPEGs, instant encoder: {first:,.0f} files/s")
    if args.csv:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, check=False).stdout.strip() or "-"
        load = f"load {os.getloadavg()[0]:.1f}"
        date = time.strftime("%Y-%m-%d")
        command = f"bench/bench_library.py --files {args.files} --first {args.first}"
        rows = [
            [date, commit, "dev-2core",
             f"library rescan of {args.files} unchanged files (stat only)", "", f"{rate:.0f}",
             "", "", "files/s", command if n == 0 else "", f"shared machine, {load}"]
            for n, rate in enumerate(rescans)
        ]
        rows.append([date, commit, "dev-2core",
                     f"library first scan of {args.first} 640x480 JPEGs, instant encoder", "",
                     f"{first:.0f}", "", "", "files/s", "", f"shared machine, {load}"])
        new = not RESULTS.exists()
        with RESULTS.open("a", newline="") as fh:
            writer = csv.writer(fh)
            if new:
                writer.writerow(["date", "commit", "machine", "what", "variant", "value", "high",
                                 "runs", "unit", "command", "note"])
            writer.writerows(rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
