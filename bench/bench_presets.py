"""Each model preset's speed and memory on this machine's CPU (issue 22: the presets table).

Speed does not depend on the weights, so each preset's architecture is built at random weights
(nothing can be downloaded here) through the service's own loader, ``load_encoder``, in a
process of its own so that its memory is its own; rounds alternate the presets, so that load
from other processes on a shared machine hits each alike. Per preset and runtime it gives:
  * images/s of the image tower on preprocessed pixels, batches of --batch, each round kept;
  * a single text query's p50 (tokenize, forward, normalise);
  * the process's resident memory once the model is loaded and has run.

`multilingual`'s image tower is `fast`'s (ViT-B-32) and its text tower needs the
xlm-roberta-base files from the Hugging Face hub, so it is not measured here.

    python bench/bench_presets.py --rounds 3 --csv bench/results/bench_presets.csv
    python bench/bench_presets.py --presets fast small --runtime onnx
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import append_rows  # noqa: E402 - after the path fix above

MEASURED = ("fast", "small", "best")


def measure(name: str, runtime: str, batch: int, rounds: int, seconds: float) -> dict[str, object]:
    """One preset in this process: images/s per round, text p50, resident memory."""
    import numpy as np
    import torch

    from glimpse.encoder.config import Settings
    from glimpse.encoder.model import load_encoder

    encoder = load_encoder(Settings(model=name, pretrained="none", device="cpu",
                                    runtime=runtime))
    size = encoder.image_size
    pixels = torch.from_numpy(
        np.random.default_rng(0).standard_normal((batch, 3, size, size), dtype=np.float32))
    encoder.encode_pixels(pixels)  # warm-up: first-call allocations and kernel choices
    rates = []
    for _ in range(rounds):
        done, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            encoder.encode_pixels(pixels)
            done += batch
        rates.append(done / (time.perf_counter() - start))
    texts = []
    for i in range(21):
        start = time.perf_counter()
        encoder.encode_texts([f"a photo of {i} red bicycles against a brick wall"])
        texts.append((time.perf_counter() - start) * 1000)
    return {"rates": rates, "text_ms": statistics.median(texts[1:]), "runtime": encoder.runtime,
            "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=list(MEASURED), choices=MEASURED)
    parser.add_argument("--runtime", default="torch", choices=("torch", "onnx"))
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=8.0, help="per round")
    parser.add_argument("--csv", type=Path)
    parser.add_argument("--note", default="")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # the child process's preset
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(measure(args.one, args.runtime, args.batch, args.rounds, args.seconds)))
        return 0
    rows: list[dict[str, object]] = []
    for round_ in range(args.rounds):
        for name in args.presets:
            child = subprocess.run(
                [sys.executable, __file__, "--one", name, "--runtime", args.runtime,
                 "--batch", str(args.batch), "--rounds", "1", "--seconds", str(args.seconds)],
                capture_output=True, text=True, check=True,
                env={**os.environ, "HF_HUB_OFFLINE": "1"})
            got = json.loads(child.stdout.strip().splitlines()[-1])
            load = os.getloadavg()[0]
            print(f"round {round_ + 1}, {name}: {got['runtime']}, images/s {got['rates'][0]:.1f}; "
                  f"text p50 {got['text_ms']:.1f} ms; RSS {got['rss_mb']:.0f} MB; load {load:.1f}",
                  flush=True)
            base = {"variant": f"`{name}`",
                    "note": f"random weights; round {round_ + 1}; load {load:.1f} {args.note}"}
            rt = got["runtime"]
            rows += [
                {**base, "what": f"preset images/s on CPU, {rt}, batch {args.batch}",
                 "value": f"{got['rates'][0]:.1f}", "unit": "images/s"},
                {**base, "what": f"preset text query p50 on CPU, {rt}",
                 "value": f"{got['text_ms']:.1f}", "unit": "ms"},
                {**base, "what": f"preset process memory (max RSS), {rt}",
                 "value": f"{got['rss_mb']:.0f}", "unit": "MB"},
            ]
    if args.csv and rows:
        append_rows(args.csv, rows, "bench/bench_presets.py " + " ".join(
            argv if argv is not None else sys.argv[1:]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
