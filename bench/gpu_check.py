#!/usr/bin/env python3
"""What only a GPU can check, checked for correctness (speed is bench_encoder.py's job).

    python bench/gpu_check.py [--model ViT-B-32] [--device cuda]

On the same random weights (seeded, so both loads are identical):
  1. fp16 on the device against fp32 on the CPU: text and image vectors of the sample photos
     (cosine of each pair; fp16 should keep > 0.999);
  2. the nvJPEG path (glimpse/encoder/gpu_decode.py: JPEG bytes decoded, resized, cropped and
     normalised on the device) against the CPU path (Pillow decode + open_clip's transform), both
     through the fp16 model: cosine of each pair (> 0.99: torch's bicubic is not Pillow's);
  3. a truncated JPEG is not sent to nvJPEG (which decodes it without an error) and the CPU
     decoder refuses it;
  4. the text tower replayed as CUDA graphs (glimpse/encoder/text_graphs.py) against the same
     model run eagerly (cosine > 0.999), and one query's latency both ways (p50 of 50);
  5. the rate of the device decode + preprocessing on 256 camera-like 640x480 JPEGs (one size,
     so resized as one group) and on the sample photos (all sizes differ).
Prints one line per check and exits 1 if any fails. `--device cpu` runs the same code paths on
the CPU (torchvision decodes there), which is how this script is tried without a GPU.
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from glimpse.contracts.errors import GlimpseError  # noqa: E402
from glimpse.encoder.config import Settings  # noqa: E402
from glimpse.encoder.gpu_decode import gpu_prepare, supports_gpu_preprocessing  # noqa: E402
from glimpse.encoder.images import (  # noqa: E402
    ImageLimits,
    gpu_decodable_jpeg,
    prepare_pixels,
)
from glimpse.encoder.model import _unit_rows, load_encoder  # noqa: E402
from glimpse.encoder.service import calibration_jpegs  # noqa: E402

TEXTS = ["a photo of a cat", "an astronaut in a white suit", "a cup of coffee on a table",
         "a rocket on the launch pad", "a galaxy in deep space"]
LIMITS = ImageLimits(20 * 1024 * 1024, 60_000_000)


def photos_as_jpegs() -> list[bytes]:
    from skimage import data as skdata
    from sklearn.datasets import load_sample_images

    arrays = [getattr(skdata, n)() for n in ("astronaut", "coffee", "chelsea", "rocket")]
    arrays += list(load_sample_images().images)
    out = []
    for a in arrays:
        buf = io.BytesIO()
        Image.fromarray(np.asarray(a)).convert("RGB").save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.einsum("ij,ij->i", a.astype(np.float64), b.astype(np.float64))


def prepare_rate(batch: list[bytes], encoder) -> float:  # noqa: ANN001
    """Images/s of gpu_prepare over ``batch``, the best of three after a warm-up."""
    gpu_prepare(batch, encoder, LIMITS)  # warm-up: nvJPEG's first batch allocates
    best = float("inf")
    for _ in range(3):
        sync(encoder.device)
        started = time.perf_counter()
        gpu_prepare(batch, encoder, LIMITS)
        sync(encoder.device)
        best = min(best, time.perf_counter() - started)
    return len(batch) / best


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def check_text_graphs(encoder, report, device: str) -> None:  # noqa: ANN001
    """CUDA-graph replays of the text tower against the same model run eagerly."""
    graphs = encoder.text_graphs
    report("text tower captured as CUDA graphs", graphs is not None or device == "cpu",
           f"buckets {graphs.buckets if graphs is not None else None}")
    if graphs is None:
        return

    def eager(texts: list[str]) -> np.ndarray:
        with torch.inference_mode():
            return _unit_rows(encoder.model.encode_text(encoder.tokenize(texts).to(device)))

    worst = 1.0
    for texts in (TEXTS[:1], TEXTS[:3], TEXTS, TEXTS * 7):  # buckets 1, 4, 8, and eager (35)
        worst = min(worst, float(cosines(encoder.encode_texts(texts), eager(texts)).min()))
    report("text CUDA graphs vs eager (same fp16 model)", worst > 0.999, f"cosine min {worst:.5f}")
    queries = [f"{t} number {i}" for i in range(10) for t in TEXTS]
    for name, run in (("eager", eager), ("graphs", encoder.encode_texts)):
        times = []
        for text in queries:
            sync(device)
            started = time.perf_counter()
            run([text])
            times.append(time.perf_counter() - started)
        print(f"     one text query, tokenize + forward + normalise, {name}: p50 "
              f"{np.percentile(times, 50) * 1000:.2f} ms, p90 "
              f"{np.percentile(times, 90) * 1000:.2f} ms", flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default="ViT-B-32")
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    args = p.parse_args(argv)
    failures = 0

    def report(name: str, ok: bool, detail: str) -> None:
        nonlocal failures
        failures += not ok
        print(f"{'ok  ' if ok else 'FAIL'} {name}: {detail}", flush=True)

    t0 = time.perf_counter()
    precision = "fp16" if args.device == "cuda" else "fp32"
    fast = load_encoder(Settings(model=args.model, pretrained="none", device=args.device,
                                 precision=precision))
    ref = load_encoder(Settings(model=args.model, pretrained="none", device="cpu",
                                precision="fp32"))
    print(f"loaded {args.model} on {fast.device} {precision} and on cpu fp32 in "
          f"{time.perf_counter() - t0:.1f} s; torch {torch.__version__}"
          + (f", {torch.cuda.get_device_name()}" if args.device == "cuda" else ""), flush=True)

    cos = cosines(fast.encode_texts(TEXTS), ref.encode_texts(TEXTS))
    report(f"text {precision} on {fast.device} vs fp32 cpu", bool(cos.min() > 0.999),
           f"cosine min {cos.min():.5f} mean {cos.mean():.5f} over {len(TEXTS)} texts")

    check_text_graphs(fast, report, args.device)

    blobs = photos_as_jpegs()
    size = fast.image_size
    cpu_pixels = torch.stack([prepare_pixels(b, LIMITS, size, fast.preprocess) for b in blobs])
    cpu_path = fast.encode_pixels(cpu_pixels.to(fast.device))
    cos = cosines(cpu_path, ref.encode_pixels(cpu_pixels))
    report(f"image {precision} on {fast.device} vs fp32 cpu", bool(cos.min() > 0.999),
           f"cosine min {cos.min():.5f} mean {cos.mean():.5f} over {len(blobs)} photos")

    report("device preprocessing supported", supports_gpu_preprocessing(fast) or
           args.device == "cpu", f"supports_gpu_preprocessing = {supports_gpu_preprocessing(fast)}")
    prepared = gpu_prepare(blobs, fast, LIMITS)
    bad = [x for x in prepared if not isinstance(x, torch.Tensor)]
    report("JPEG decode on the device", not bad, f"{len(blobs) - len(bad)}/{len(blobs)} decoded "
           f"on {fast.device if not bad else '?'}")
    if not bad:
        device_path = fast.encode_pixels(torch.stack(prepared))  # type: ignore[arg-type]
        cos = cosines(device_path, cpu_path)
        report("device JPEG path vs CPU path (same fp16 model)", bool(cos.min() > 0.99),
               f"cosine min {cos.min():.5f} mean {cos.mean():.5f}")
        for label, batch in (
            ("sample photos, 300-1,000 px, every size different", blobs * (256 // len(blobs))),
            ("camera-like 640x480, one size", calibration_jpegs(256)),
        ):
            rate = prepare_rate(batch, fast)
            print(f"     device decode + preprocess of {len(batch)} JPEGs ({label}): "
                  f"{rate:,.0f} images/s", flush=True)

    broken = blobs[0][: len(blobs[0]) // 3]
    routed = gpu_decodable_jpeg(broken, LIMITS)
    try:
        prepare_pixels(broken, LIMITS, size, fast.preprocess)
        refused = "accepted"
    except GlimpseError as exc:
        refused = exc.error_type
    report("truncated JPEG kept from nvJPEG and refused by the CPU decoder",
           routed is None and refused == "invalid_image",
           f"gpu_decodable_jpeg -> {routed}, CPU decoder -> {refused}")
    print(f"{failures} check(s) failed" if failures else "all checks passed", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
