"""Encoder benchmark: the raw open_clip model vs the encoder service, side by side in one run.

Rows, for one model (default ViT-B-32 with random weights: speed does not depend on them):
  * images/s of the raw model forward on pre-decoded tensors (the limit), in batches of
    --max-batch, and images/s of the service from JPEG bytes over HTTP with --clients requests
    of --files-per-request images in flight;
  * single text query latency (p50, p90): raw tokenize + forward + normalise, and one
    POST /v1/embed/text per query through the service (distinct texts, so no cache hits; each
    sent once more as a cache hit, to show the service's share without the model);
  * the batch sizes the service formed (from its /metrics).
Rounds alternate raw and service measurements so that noise from a shared machine hits both.

    python bench/bench_encoder.py                       # CPU, ViT-B-32
    python bench/bench_encoder.py --device cuda --precision fp16 --images 8192 \\
        --max-batch 256 --clients 16 --files-per-request 32    # a GPU machine
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

TEXTS = [
    f"a photo of a {adj} {noun}"
    for adj in ("red", "small", "old", "bright", "wet", "striped", "wooden", "shiny")
    for noun in ("cat", "rocket", "cup of coffee", "astronaut", "flower", "temple", "galaxy",
                 "bicycle", "mountain", "street")
]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default="ViT-B-32")
    p.add_argument("--pretrained", default="none", help="tag, checkpoint path, or none")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "fp16", "bf16"])
    p.add_argument("--images", type=int, default=192, help="images per measurement")
    p.add_argument("--distinct", type=int, default=64, help="distinct JPEGs (cycled)")
    p.add_argument("--max-batch", type=int, default=32)
    p.add_argument("--clients", type=int, default=8, help="image requests in flight")
    p.add_argument("--files-per-request", type=int, default=8)
    p.add_argument("--text-queries", type=int, default=30)
    p.add_argument("--rounds", type=int, default=2, help="raw/service alternations")
    p.add_argument("--torch-threads", type=int, default=0, help="0: the service's default")
    p.add_argument("--decode-workers", type=int, default=0, help="0: the service's default")
    p.add_argument("--encoding", default="base64", choices=["float", "base64"])
    p.add_argument("--gpu-decode", default="auto", choices=["auto", "on", "off"],
                   help="the service's ENCODER_GPU_DECODE (CUDA only)")
    p.add_argument("--json", type=Path, help="also write the results here")
    return p.parse_args(argv)


# -- data ----------------------------------------------------------------------------------------


def sample_photos() -> list[np.ndarray]:
    from skimage import data as skdata
    from sklearn.datasets import load_sample_images

    photos = [
        getattr(skdata, name)()
        for name in ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field",
                     "immunohistochemistry", "retina")
    ]
    photos += list(load_sample_images().images)
    return [p if p.ndim == 3 else np.stack([p] * 3, axis=-1) for p in photos]


def make_jpegs(count: int) -> list[bytes]:
    """``count`` distinct 640x480 JPEGs (crops, flips and qualities of the sample photos)."""
    photos = [Image.fromarray(p).convert("RGB") for p in sample_photos()]
    rng = np.random.default_rng(0)
    out = []
    for i in range(count):
        img = photos[i % len(photos)]
        scale = max(640 / img.width, 480 / img.height) * float(rng.uniform(1.0, 1.4))
        img = img.resize((int(img.width * scale) + 1, int(img.height * scale) + 1))
        x = int(rng.integers(0, img.width - 640 + 1))
        y = int(rng.integers(0, img.height - 480 + 1))
        img = img.crop((x, y, x + 640, y + 480))
        if i // len(photos) % 2:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=int(rng.integers(80, 95)))
        out.append(buf.getvalue())
    return out


# -- raw model ------------------------------------------------------------------------------------


class Raw:
    """open_clip alone: the limit the service chases.

    The model runs in one dedicated thread, as in the service. On this shared 2-core machine
    torch with 2 intra-op threads called from the MAIN thread was 3-10x slower than the same
    calls from another thread (docs/encoder.md); measuring the raw model from the main thread
    would flatter the service.
    """

    def __init__(self, args: argparse.Namespace, threads: int) -> None:
        import open_clip
        import torch

        from glimpse.encoder.model import register_model_configs, resolve_precision

        register_model_configs()
        self.torch = torch
        if args.device == "cpu":
            torch.set_num_threads(threads)
        self.device = args.device
        self.precision = resolve_precision(args.precision, args.device)
        self.dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[
            self.precision
        ]
        pretrained = None if args.pretrained.lower() == "none" else args.pretrained
        model, _, self.preprocess = open_clip.create_model_and_transforms(
            args.model, pretrained=pretrained, precision=self.precision, device=args.device
        )
        self.model = model.eval()
        self.tokenizer = open_clip.get_tokenizer(args.model)
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="raw-model")

    def image_rate(self, pixels: Any, total: int, batch: int, bf16: bool = False) -> float:
        """Images/s of the bare forward pass; ``bf16``: under CPU autocast to bfloat16."""
        return self._thread.submit(self._image_rate, pixels, total, batch, bf16).result()

    def text_latency(self, text: str) -> float:
        return self._thread.submit(self._text_latency, text).result()

    def sync(self) -> None:
        if self.device == "cuda":
            self.torch.cuda.synchronize()

    def pixels(self, jpegs: list[bytes]) -> Any:
        tensors = [self.preprocess(Image.open(io.BytesIO(b)).convert("RGB")) for b in jpegs]
        return self.torch.stack(tensors).to(self.device, self.dtype)

    def _image_rate(self, pixels: Any, total: int, batch: int, bf16: bool) -> float:
        torch = self.torch
        autocast = (torch.autocast("cpu", dtype=torch.bfloat16) if bf16
                    else contextlib.nullcontext())
        with torch.inference_mode(), autocast:
            self.model.encode_image(pixels[:batch])  # warm-up
            self.sync()
            start = time.perf_counter()
            done = 0
            while done < total:
                n = min(batch, total - done)
                idx = torch.arange(done, done + n) % pixels.shape[0]
                features = self.model.encode_image(pixels[idx.to(pixels.device)])
                features = torch.nn.functional.normalize(features.float(), dim=-1).cpu()
                done += n
            self.sync()
            return total / (time.perf_counter() - start)

    def _text_latency(self, text: str) -> float:
        torch = self.torch
        with torch.inference_mode():
            self.sync()
            start = time.perf_counter()
            features = self.model.encode_text(self.tokenizer([text]).to(self.device))
            torch.nn.functional.normalize(features.float(), dim=-1).cpu().numpy()
            return time.perf_counter() - start


# -- the service ---------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_service(args: argparse.Namespace, log_path: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {
        **os.environ,
        "ENCODER_MODEL": args.model,
        "ENCODER_PRETRAINED": args.pretrained,
        "ENCODER_DEVICE": args.device,
        "ENCODER_PRECISION": args.precision,
        "ENCODER_MAX_BATCH": str(args.max_batch),
        **({"OMP_NUM_THREADS": str(args.torch_threads)} if args.torch_threads else {}),
        "ENCODER_DECODE_WORKERS": str(args.decode_workers),
        "ENCODER_GPU_DECODE": args.gpu_decode,
        "PYTHONUNBUFFERED": "1",
    }
    log = open(log_path, "wb")  # noqa: SIM115 - the child owns it
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "glimpse.encoder.main:app", "--host", "127.0.0.1",
         "--port", str(port), "--log-level", "warning", "--no-access-log"],
        cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    log.close()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"encoder exited:\n{log_path.read_text()[-3000:]}")
        try:
            if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise TimeoutError("encoder not ready in 600 s")


def batch_histogram(metrics_text: str) -> dict[str, float]:
    """Cumulative bucket counts of glimpse_encoder_batch_size for images, plus count and sum."""
    out: dict[str, float] = {}
    for match in re.finditer(
        r'^glimpse_encoder_batch_size_(bucket|count|sum)\{(?:kind="image",?)(?:le="([^"]+)")?\} '
        r"([0-9.e+]+)$",
        metrics_text,
        re.MULTILINE,
    ):
        kind, le, value = match.groups()
        out[f"le={le}" if kind == "bucket" else kind] = float(value)
    return out


def image_forward_seconds(metrics_text: str) -> float:
    match = re.search(
        r'^glimpse_encoder_forward_seconds_sum\{kind="image"\} ([0-9.e+]+)$', metrics_text, re.M
    )
    return float(match.group(1)) if match else 0.0


def histogram_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}


async def service_image_rate(url: str, jpegs: list[bytes], args: argparse.Namespace) -> float:
    total = args.images
    per = args.files_per_request
    next_index = 0
    lock = asyncio.Lock()

    async def client_loop(client: httpx.AsyncClient) -> int:
        nonlocal next_index
        sent = 0
        while True:
            async with lock:
                if next_index >= total:
                    return sent
                start, next_index = next_index, min(total, next_index + per)
            files = [
                ("files", (f"{i}.jpg", jpegs[i % len(jpegs)], "image/jpeg"))
                for i in range(start, next_index)
            ]
            r = await client.post(
                url + "/v1/embed/image", files=files, params={"encoding": args.encoding}
            )
            r.raise_for_status()
            body = r.json()
            assert all(e is None for e in body["errors"]), body["errors"]
            sent += len(files)

    limits = httpx.Limits(max_connections=args.clients)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        begin = time.perf_counter()
        counts = await asyncio.gather(*(client_loop(client) for _ in range(args.clients)))
        elapsed = time.perf_counter() - begin
    assert sum(counts) == total
    return total / elapsed


def text_latencies(
    raw: Raw, url: str, texts: list[str], round_no: int
) -> tuple[list[float], list[float], list[float]]:
    """Single queries, raw and through the service taking turns, so that a noisy neighbour
    on a shared machine slows both sides alike. Every service query misses its cache; each is
    then sent once more, a cache hit: the service's cost without the model."""
    raw_out, svc_out, hit_out = [], [], []
    with httpx.Client(timeout=60) as client:
        client.post(url + "/v1/embed/text", json={"texts": ["warm-up query"]}).raise_for_status()
        raw.text_latency("warm-up query")
        for text in texts:
            raw_out.append(raw.text_latency(text))
            body = {"texts": [f"{text} ({round_no})"]}
            for out in (svc_out, hit_out):
                start = time.perf_counter()
                client.post(url + "/v1/embed/text", json=body).raise_for_status()
                out.append(time.perf_counter() - start)
    return raw_out, svc_out, hit_out


# -- report ---------------------------------------------------------------------------------------


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values) * 1000.0, q))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from glimpse.encoder.config import Settings
    from glimpse.encoder.service import choose_threads

    threads, workers = choose_threads(Settings(decode_workers=args.decode_workers), args.device)
    threads = args.torch_threads or threads
    print(f"# bench_encoder: {args.model} pretrained={args.pretrained} device={args.device} "
          f"precision={args.precision} cpus={os.cpu_count()} torch_threads={threads} "
          f"decode_workers={workers}", flush=True)
    print(f"# {args.images} images/measurement, batch {args.max_batch}, {args.clients} clients "
          f"x {args.files_per_request} files/request, encoding={args.encoding}, "
          f"{args.text_queries} text queries, {args.rounds} rounds", flush=True)
    jpegs = make_jpegs(args.distinct)
    mean_kib = np.mean([len(j) for j in jpegs]) / 1024
    print(f"# JPEGs: {len(jpegs)} distinct 640x480, mean {mean_kib:.0f} KiB", flush=True)
    raw = Raw(args, threads)
    pixels = raw.pixels(jpegs)
    texts = (TEXTS * (1 + args.text_queries * args.rounds // len(TEXTS)))
    log_path = REPO / "artifacts" / "bench_encoder_service.log"
    log_path.parent.mkdir(exist_ok=True)
    proc, url = start_service(args, log_path)
    rows: list[dict[str, Any]] = []
    try:
        info = httpx.get(url + "/v1/info").json()
        print(f"# service: JPEGs decoded on the GPU: {info.get('gpu_decode')} (--gpu-decode "
              f"{args.gpu_decode}; decoders timed at warm-up, images/s: "
              f"{info.get('decode_rates')}; text CUDA graphs for batches "
              f"{info.get('text_graph_batches')})", flush=True)
        # Warm the service's image path (and its first-batch costs) before measuring.
        asyncio.run(service_image_rate(url, jpegs, argparse.Namespace(
            **{**vars(args), "images": args.clients * args.files_per_request})))
        for round_no in range(args.rounds):
            raw_rate = raw.image_rate(pixels, args.images, args.max_batch)
            metrics_before = httpx.get(url + "/metrics").text
            begin = time.perf_counter()
            svc_rate = asyncio.run(service_image_rate(url, jpegs, args))
            wall = time.perf_counter() - begin
            metrics_after = httpx.get(url + "/metrics").text
            hist = histogram_delta(batch_histogram(metrics_before), batch_histogram(metrics_after))
            # Share of the service's wall time its model thread spent in forward passes: near 1
            # means the model never starved (the loss is contention), lower means bubbles.
            busy = (
                image_forward_seconds(metrics_after) - image_forward_seconds(metrics_before)
            ) / wall
            round_texts = texts[round_no * args.text_queries:(round_no + 1) * args.text_queries]
            raw_text, svc_text, hit_text = text_latencies(raw, url, round_texts, round_no)
            mean_batch = hist.get("sum", 0.0) / max(hist.get("count", 1.0), 1.0)
            row = {
                "round": round_no + 1,
                "raw_images_per_s": raw_rate,
                "service_images_per_s": svc_rate,
                "image_ratio": svc_rate / raw_rate,
                "raw_text_p50_ms": pct(raw_text, 50),
                "raw_text_p90_ms": pct(raw_text, 90),
                "service_text_p50_ms": pct(svc_text, 50),
                "service_text_p90_ms": pct(svc_text, 90),
                "service_text_cached_p50_ms": pct(hit_text, 50),
                "text_ratio_p50": statistics.median(svc_text) / statistics.median(raw_text),
                "model_busy": busy,
                "forward_passes": hist.get("count", 0.0),
                "mean_batch": mean_batch,
                "batch_buckets": {k: v for k, v in hist.items() if k.startswith("le=") and v},
            }
            rows.append(row)
            print(
                f"round {row['round']}: images/s raw {raw_rate:7.1f} | service {svc_rate:7.1f} "
                f"| ratio {row['image_ratio']:.2f}   text p50 ms raw {row['raw_text_p50_ms']:6.1f}"
                f" | service {row['service_text_p50_ms']:6.1f} | ratio {row['text_ratio_p50']:.2f}"
                f" (cache hit {row['service_text_cached_p50_ms']:.1f})"
                f"   batches: {int(row['forward_passes'])} passes, mean size {mean_batch:.1f}, "
                f"model busy {busy:.0%}",
                flush=True,
            )
            print(f"         batch size cumulative buckets: {row['batch_buckets']}", flush=True)
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
    best_image = max(r["image_ratio"] for r in rows)
    worst_image = min(r["image_ratio"] for r in rows)
    text_ratios = [r["text_ratio_p50"] for r in rows]
    print(f"image ratio service/raw: {worst_image:.2f} .. {best_image:.2f}  (target >= 0.80)")
    print(f"text p50 ratio service/raw: {min(text_ratios):.2f} .. {max(text_ratios):.2f}  "
          "(target <= 1.30)")
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                         "service": info, "rounds": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
