"""The encoder service on ONNX Runtime against raw torch eager, side by side in one run.

Rows, for one model (default ViT-B-32 with random weights: speed does not depend on them):
  * images/s of raw torch eager forward on pre-decoded tensors (bench_encoder.py's ``Raw``, in
    its own thread, batches of --max-batch) and images/s of the service with
    ENCODER_RUNTIME=onnx from JPEG bytes over HTTP (--clients requests of --files-per-request
    images in flight), alternated each round so that a noisy neighbour hits both;
  * single text query p50: raw torch tokenize + forward + normalise, and one POST
    /v1/embed/text through the ONNX service (distinct texts: no cache hits);
  * CPU seconds per image of each side (the raw process's, the service process's): on a
    shared machine, wall-clock rates move with the neighbours' load, CPU time much less.

Every round is printed and, with --csv, appended as rows in bench/results' format.

    python bench/bench_onnx.py --rounds 3 --csv bench/results/bench_onnx.csv
    python bench/bench_onnx.py --torch-threads 1       # model threads of both sides
    python bench/bench_onnx.py --quantize int8         # int8 dynamic quantisation
Other options are bench_encoder.py's (--model, --images, --clients, --max-batch, ...).
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import datetime
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.bench_encoder import (  # noqa: E402 - after the path fix above
    TEXTS,
    Raw,
    make_jpegs,
    parse_args,
    service_image_rate,
    start_service,
    text_latencies,
)

FIELDS = ["date", "commit", "machine", "what", "variant", "value", "high", "runs", "unit",
          "command", "note"]


def own_args(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter,
                                add_help=False)
    p.add_argument("--quantize", default="none", choices=["none", "int8"])
    p.add_argument("--csv", type=Path, help="append the rows here (bench/results format)")
    p.add_argument("--machine", default="dev-2core")
    p.add_argument("--note", default="", help="e.g. the load average")
    return p.parse_known_args(argv)


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def commit() -> str:
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                         text=True, check=False)
    return out.stdout.strip() or "-"


def main(argv: list[str] | None = None) -> int:
    mine, rest = own_args(argv)
    args = parse_args(rest)
    measured = commit()  # the code the service starts from, whatever lands while it runs
    # start_service passes this process's environment on to the service.
    os.environ.update(ENCODER_RUNTIME="onnx", ENCODER_ONNX_QUANTIZE=mine.quantize)
    from glimpse.encoder.service import cpu_count

    # Both sides run the model on this many threads (the service: OMP_NUM_THREADS).
    threads = args.torch_threads or cpu_count()
    print(f"# bench_onnx: {args.model} pretrained={args.pretrained} cpus={os.cpu_count()} "
          f"model threads={threads} quantize={mine.quantize}; {args.images} images/measurement, "
          f"batch {args.max_batch}, "
          f"{args.clients} clients x {args.files_per_request} files, {args.rounds} rounds",
          flush=True)
    jpegs = make_jpegs(args.distinct)
    raw = Raw(args, threads)
    pixels = raw.pixels(jpegs)
    texts = TEXTS * (1 + args.text_queries * args.rounds // len(TEXTS))
    log_path = REPO / "artifacts" / "bench_onnx_service.log"
    log_path.parent.mkdir(exist_ok=True)
    proc, url = start_service(args, log_path)
    rounds: list[dict[str, float]] = []
    try:
        info = httpx.get(url + "/v1/info").json()
        if info.get("runtime") != "onnx":
            raise SystemExit(f"the service runs {info.get('runtime')}: {info.get('runtime_note')}")
        warm = argparse.Namespace(**{**vars(args), "images": args.clients * args.files_per_request})
        asyncio.run(service_image_rate(url, jpegs, warm))
        for round_no in range(args.rounds):
            cpu = time.process_time()
            torch_rate = raw.image_rate(pixels, args.images, args.max_batch)
            torch_cpu = (time.process_time() - cpu) / args.images
            cpu = process_cpu_s(proc.pid)
            onnx_rate = asyncio.run(service_image_rate(url, jpegs, args))
            onnx_cpu = (process_cpu_s(proc.pid) - cpu) / args.images
            round_texts = texts[round_no * args.text_queries:(round_no + 1) * args.text_queries]
            raw_text, svc_text, _ = text_latencies(raw, url, round_texts, round_no)
            row = {
                "torch": torch_rate, "onnx": onnx_rate, "ratio": onnx_rate / torch_rate,
                "torch_cpu_ms": torch_cpu * 1000, "onnx_cpu_ms": onnx_cpu * 1000,
                "torch_text_ms": statistics.median(raw_text) * 1000,
                "onnx_text_ms": statistics.median(svc_text) * 1000,
            }
            rounds.append(row)
            print(f"round {round_no + 1}: images/s torch eager {torch_rate:6.1f} | ONNX service "
                  f"{onnx_rate:6.1f} | ratio {row['ratio']:.2f}   CPU ms/image torch "
                  f"{row['torch_cpu_ms']:.0f} | ONNX service {row['onnx_cpu_ms']:.0f}   "
                  f"text p50 ms torch "
                  f"{row['torch_text_ms']:6.1f} | ONNX service {row['onnx_text_ms']:6.1f}",
                  flush=True)
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
    ratios = [r["ratio"] for r in rounds]
    print(f"images/s ratio ONNX service / torch eager: median {statistics.median(ratios):.2f} "
          f"({min(ratios):.2f} .. {max(ratios):.2f}; target >= 1.6)")
    if mine.csv:
        write_rows(mine, args, rounds, argv, measured)
    return 0


def write_rows(mine: argparse.Namespace, args: argparse.Namespace,
               rounds: list[dict[str, float]], argv: list[str] | None, measured: str) -> None:
    engine = f"ONNX Runtime {'int8' if mine.quantize == 'int8' else 'fp32'}"
    threads = f"{args.torch_threads} threads" if args.torch_threads else "default threads"
    base = {"date": datetime.date.today().isoformat(), "commit": measured,
            "machine": mine.machine, "high": "", "runs": "", "note": mine.note}
    image_what = (f"images/s, {args.model} on CPU, {engine} service ({threads}, JPEG bytes over "
                  f"HTTP, {args.clients} clients) vs torch eager forward")
    cpu_what = (f"CPU ms per image, {args.model}, {engine} service ({threads}, JPEG bytes "
                f"over HTTP) vs torch eager forward")
    text_what = f"text query p50, {args.model} on CPU, {engine} service vs torch eager"
    command = "bench/bench_onnx.py " + " ".join(argv if argv is not None else sys.argv[1:])
    out: list[dict[str, Any]] = []
    for r in rounds:
        out += [
            {**base, "what": image_what, "variant": "raw torch eager forward",
             "value": f"{r['torch']:.1f}", "unit": "images/s"},
            {**base, "what": image_what, "variant": "glimpse", "value": f"{r['onnx']:.1f}",
             "unit": "images/s"},
            {**base, "what": cpu_what, "variant": "raw torch eager forward",
             "value": f"{r['torch_cpu_ms']:.0f}", "unit": "ms"},
            {**base, "what": cpu_what, "variant": "glimpse", "value": f"{r['onnx_cpu_ms']:.0f}",
             "unit": "ms"},
            {**base, "what": text_what, "variant": "raw torch eager forward",
             "value": f"{r['torch_text_ms']:.1f}", "unit": "ms"},
            {**base, "what": text_what, "variant": "glimpse",
             "value": f"{r['onnx_text_ms']:.1f}", "unit": "ms"},
        ]
    out[0]["command"] = command
    new = not mine.csv.exists()
    with mine.csv.open("a", newline="") as f:
        writer = csv.DictWriter(f, FIELDS, restval="")
        if new:
            writer.writeheader()
        writer.writerows(out)


if __name__ == "__main__":
    raise SystemExit(main())
