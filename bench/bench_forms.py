"""Multipart parse cost per 107 KiB file part: glimpse/web/forms.py (python-multipart and an
adapter; file parts are views of the body) against the hand parser it replaced (``git show
55ae10b:contracts/multipart.py``), both as the gateway called it (a copy per part) and as the
encoder did (``file_views``), side by side in one process, alternated so that the machine's
drift hits all alike.

    python bench/bench_forms.py [--parts 8] [--rounds 21] [--csv bench/results/bench_forms.csv]

Prints the median and the range of the per-part cost of each; with --csv, appends one row
each in bench/results' format.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import functools
import os
import platform
import statistics
import subprocess
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from glimpse.web.forms import parse_form  # noqa: E402

OLD_COMMIT = "55ae10b"
PART_BYTES = 107 * 1024
BOUNDARY = "----glimpseBenchBoundary7MA4YWxkTrZu0gW"  # a browser-like 38 characters


def old_parse_form() -> Callable[..., list[object]]:
    """The hand parser as it was at OLD_COMMIT, loaded from git into a module of its own."""
    source = subprocess.run(
        ["git", "show", f"{OLD_COMMIT}:contracts/multipart.py"],
        cwd=REPO, check=True, capture_output=True, text=True,
    ).stdout.replace("from contracts.errors", "from glimpse.contracts.errors")
    module = types.ModuleType("old_multipart")
    sys.modules[module.__name__] = module  # dataclasses look their module up
    exec(compile(source, "old_multipart.py", "exec"), module.__dict__)  # noqa: S102
    return module.parse_form  # type: ignore[no-any-return]


def form_body(parts: int) -> bytes:
    """``parts`` file parts of random bytes and one text field, as a browser sends them."""
    out = []
    for i in range(parts):
        out.append(
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="files"; '
            f'filename="photo{i}.jpg"\r\nContent-Type: image/jpeg\r\n\r\n'.encode()
            + os.urandom(PART_BYTES) + b"\r\n"
        )
    out.append(f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="encoding"\r\n\r\n'
               f"base64\r\n--{BOUNDARY}--\r\n".encode())
    return b"".join(out)


def per_part_us(parse: Callable[..., list[object]], body: bytes, parts: int, loops: int) -> float:
    content_type = f"multipart/form-data; boundary={BOUNDARY}"
    started = time.perf_counter()
    for _ in range(loops):
        got = parse(body, content_type, max_files=parts, max_fields=4, max_field_bytes=1024)
    elapsed = time.perf_counter() - started
    assert len(got) == parts + 1
    return elapsed / loops / parts * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", type=int, default=8, help="file parts per body")
    parser.add_argument("--rounds", type=int, default=21, help="alternated rounds")
    parser.add_argument("--loops", type=int, default=50, help="parses per round")
    parser.add_argument("--csv", type=Path, help="append the two results to this CSV")
    args = parser.parse_args()
    body = form_body(args.parts)
    old = old_parse_form()
    variants = {
        "python-multipart + adapter": parse_form,
        "hand parser (55ae10b)": old,
        "hand parser (55ae10b), file_views": functools.partial(old, file_views=True),
    }
    samples: dict[str, list[float]] = {name: [] for name in variants}
    for parse in variants.values():  # warm-up
        per_part_us(parse, body, args.parts, 5)
    for _ in range(args.rounds):
        for name, parse in variants.items():
            samples[name].append(per_part_us(parse, body, args.parts, args.loops))
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO,
                            capture_output=True, text=True).stdout.strip() or "-"
    rows = []
    for name, values in samples.items():
        median = statistics.median(values)
        print(f"{name:36s} {median:6.1f} µs per 107 KiB part "
              f"(range {min(values):.1f}-{max(values):.1f}, {len(values)} rounds)")
        rows.append({
            "date": datetime.date.today().isoformat(), "commit": commit,
            "machine": f"{platform.machine()} {os.cpu_count()} cores",
            "what": "multipart parse per 107 KiB part", "value": round(median, 2),
            "unit": "µs", "variant": name, "high": round(max(values), 2),
            "runs": len(values), "command": "python bench/bench_forms.py",
            "note": f"low {min(values):.2f}; {args.parts} parts per body",
        })
    if args.csv is not None:
        new = not args.csv.exists()
        with args.csv.open("a", newline="") as out:
            writer = csv.DictWriter(out, fieldnames=list(rows[0]))
            if new:
                writer.writeheader()
            writer.writerows(rows)


if __name__ == "__main__":
    main()
