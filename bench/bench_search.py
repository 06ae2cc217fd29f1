"""What the gateway adds to a search: /search/text and /search/image through the gateway vs the
encoder and the index called directly (the sum of their own latencies), side by side in one run.

    python bench/bench_search.py                      # starts index, encoder (tiny) and gateway
    python bench/bench_search.py --requests 400 --images 2000

For each query kind and for 1 and 8 concurrent clients it measures both paths on the same
queries, interleaved (1 client) or back to back (8 clients), and prints p50/p99 latency,
throughput, the p50 difference (target: gateway adds <= 2 ms) and the throughput ratio
(target: gateway loses <= 10 %). The direct path is one client doing exactly the two upstream
calls the gateway makes (embed with base64 output, then search with the base64 vector).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import itertools
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from glimpse.gateway.http import HttpPool, Reply, json_body, multipart_body  # noqa: E402
from tests.support.stack import start_stack  # noqa: E402

WORDS = ["cat", "dog", "beach", "mountain", "city", "car", "tree", "flower", "boat", "bird"]


def jpeg_of(seed: int, size: int = 224) -> bytes:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)
    img = Image.fromarray(base).resize((size, size), Image.Resampling.BICUBIC)
    out = io.BytesIO()
    img.save(out, format="JPEG", quality=85)
    return out.getvalue()


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


class Paths:
    """The two ways of answering one query: through the gateway, or the two calls directly.

    Every call, direct or to the gateway, goes through the same lean client the gateway uses
    for its upstreams (http.py): with httpx here (~0.7 ms of CPU per call) the direct
    path, which makes two calls from this process, would pay for its client twice and make
    the gateway look better than it is.
    """

    def __init__(self, gateway: str, encoder: str, index: str, k: int,
                 keywords: bool = True) -> None:
        def pool(url: str) -> HttpPool:
            return HttpPool(url, connect_timeout=5, read_timeout=60, max_connections=64)

        self.gateway, self.encoder, self.index = pool(gateway), pool(encoder), pool(index)
        self.k = k
        self.keywords = keywords

    async def aclose(self) -> None:
        for client in (self.gateway, self.encoder, self.index):
            await client.aclose()

    @staticmethod
    def _ok(reply: Reply) -> Reply:
        if reply.status_code != 200:
            raise RuntimeError(f"HTTP {reply.status_code}: {reply.content[:200]!r}")
        return reply

    async def _post_json(self, pool: HttpPool, path: str, value: Any) -> Reply:
        body, content_type = json_body(value)
        return self._ok(await pool.request("POST", path, body=body, content_type=content_type))

    async def _post_form(self, pool: HttpPool, path: str, fields: dict[str, str],
                         files: list[tuple[str, tuple[str, bytes, str]]]) -> Reply:
        body, content_type = multipart_body(fields, files)
        return self._ok(await pool.request("POST", path, body=body, content_type=content_type))

    async def _index_search(self, vector: str) -> None:
        await self._post_json(self.index, "/v1/search", {"vectors": [vector], "k": self.k})

    async def direct_text(self, query: str) -> None:
        r = await self._post_json(
            self.encoder, "/v1/embed/text", {"texts": [query], "encoding": "base64"}
        )
        await self._index_search(r.json()["embeddings"][0])

    async def gateway_text(self, query: str) -> None:
        body: dict[str, Any] = {"query": query, "k": self.k}
        if not self.keywords:
            body["keywords"] = False  # the vector search alone, as the old code answered
        await self._post_json(self.gateway, "/search/text", body)

    async def direct_image(self, data: bytes) -> None:
        r = await self._post_form(
            self.encoder, "/v1/embed/image", {"encoding": "base64"},
            [("files", ("q.jpg", data, "image/jpeg"))],
        )
        await self._index_search(r.json()["embeddings"][0])

    async def gateway_image(self, data: bytes) -> None:
        await self._post_form(
            self.gateway, "/search/image", {"k": str(self.k)},
            [("file", ("q.jpg", data, "image/jpeg"))],
        )


Call = Callable[[Any], Awaitable[None]]


async def run_interleaved(
    direct: Call, gateway: Call, inputs: list[Any]
) -> tuple[list[float], list[float], float, float]:
    """One client: alternate the two paths query by query (same load on both)."""
    lat_d: list[float] = []
    lat_g: list[float] = []
    for i, item in enumerate(inputs):
        order = [(direct, lat_d), (gateway, lat_g)]
        if i % 2:
            order.reverse()
        for call, sink in order:
            t = time.perf_counter()
            await call(item)
            sink.append((time.perf_counter() - t) * 1000)
    return lat_d, lat_g, 1000 / statistics.mean(lat_d), 1000 / statistics.mean(lat_g)


async def run_concurrent(call: Call, inputs: list[Any], clients: int) -> tuple[list[float], float]:
    """``clients`` tasks share the queries; returns latencies and requests per second."""
    queue = list(reversed(inputs))
    latencies: list[float] = []

    async def worker() -> None:
        while queue:
            item = queue.pop()
            t = time.perf_counter()
            await call(item)
            latencies.append((time.perf_counter() - t) * 1000)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(clients)))
    return latencies, len(inputs) / (time.perf_counter() - start)


def row(kind: str, clients: int, path: str, lat: list[float], rps: float) -> dict[str, Any]:
    return {
        "kind": kind,
        "clients": clients,
        "path": path,
        "p50_ms": round(percentile(lat, 50), 2),
        "p99_ms": round(percentile(lat, 99), 2),
        "rps": round(rps, 1),
    }


def cpu_seconds(pids: dict[str, int]) -> dict[str, float]:
    times = {name: psutil.Process(pid).cpu_times() for name, pid in pids.items()}
    return {name: t.user + t.system for name, t in times.items()}


async def cpu_per_request(
    call: Call, inputs: list[Any], pids: dict[str, int]
) -> dict[str, float]:
    """CPU milliseconds each service process spends per request (one client, sequential).

    Unlike latency, CPU time hardly depends on what else the machine is doing.
    """
    before = cpu_seconds(pids)
    for item in inputs:
        await call(item)
    after = cpu_seconds(pids)
    return {name: (after[name] - before[name]) * 1000 / len(inputs) for name in pids}


async def bench(
    urls: dict[str, str], args: argparse.Namespace, pids: dict[str, int] | None = None
) -> list[dict[str, Any]]:
    paths = Paths(urls["gateway"], urls["encoder"], urls["index"], args.k,
                  keywords=not args.no_keywords)
    n = args.requests
    fresh = itertools.count()
    images = [jpeg_of(10_000 + i) for i in range(64)]

    def texts(count: int) -> list[Any]:
        # Never the same text twice, so the encoder's text cache answers for neither path.
        return [f"a photo of a {WORDS[i % len(WORDS)]} number {i}" for i in
                (next(fresh) for _ in range(count))]

    def image_queries(count: int) -> list[Any]:
        return [images[next(fresh) % len(images)] for _ in range(count)]

    rows: list[dict[str, Any]] = []
    try:
        kinds: list[tuple[str, Call, Call, Callable[[int], list[Any]]]] = [
            ("text", paths.direct_text, paths.gateway_text, texts),
            ("image", paths.direct_image, paths.gateway_image, image_queries),
        ]
        for kind, direct, gateway, inputs_of in kinds:
            await run_interleaved(direct, gateway, inputs_of(20))  # warm-up
            lat_d, lat_g, rps_d, rps_g = await run_interleaved(direct, gateway, inputs_of(n))
            rows += [row(kind, 1, "direct", lat_d, rps_d), row(kind, 1, "gateway", lat_g, rps_g)]
            if pids:
                for name, call in (("direct", direct), ("gateway", gateway)):
                    cpu = await cpu_per_request(call, inputs_of(n), pids)
                    rows.append({"kind": kind, "clients": 1, "path": name, "cpu_ms": cpu})
            # Alternate which path runs first and keep the better of two tries of each: the
            # machine is shared, so a single run can catch someone else's burst.
            best: dict[str, tuple[list[float], float]] = {}
            for attempt in range(2):
                order = [("direct", direct), ("gateway", gateway)]
                for name, call in order if attempt == 0 else order[::-1]:
                    lat, rps = await run_concurrent(call, inputs_of(n), args.clients)
                    if name not in best or rps > best[name][1]:
                        best[name] = (lat, rps)
            for name in ("direct", "gateway"):
                rows.append(row(kind, args.clients, name, *best[name]))
            print(f"# {kind} done", file=sys.stderr, flush=True)
    finally:
        await paths.aclose()
    return rows


def summarise(rows: list[dict[str, Any]]) -> list[str]:
    cpu_rows = [r for r in rows if "cpu_ms" in r]
    rows = [r for r in rows if "cpu_ms" not in r]
    lines = [f"{'kind':<6} {'clients':>7} {'path':<8} {'p50 ms':>8} {'p99 ms':>8} {'req/s':>8}"]
    for r in rows:
        lines.append(
            f"{r['kind']:<6} {r['clients']:>7} {r['path']:<8} {r['p50_ms']:>8.2f} "
            f"{r['p99_ms']:>8.2f} {r['rps']:>8.1f}"
        )
    lines.append("")
    by = {(r["kind"], r["clients"], r["path"]): r for r in rows}
    # The targets: the gateway adds <= 2 ms at p50 (the one-client runs measure latency) and
    # loses <= 10 % of the throughput of throughput-bound runs (the concurrent ones; with one
    # client, throughput is only 1/latency).
    for kind, clients in sorted({(r["kind"], r["clients"]) for r in rows}):
        d, g = by[(kind, clients, "direct")], by[(kind, clients, "gateway")]
        added = g["p50_ms"] - d["p50_ms"]
        ratio = g["rps"] / d["rps"]
        if clients == 1:
            verdict = f"({'ok' if added <= 2.0 else 'OVER'} <= 2 ms)"
            rest = f"throughput {ratio:.3f}x direct (latency-bound: no target)"
        else:
            verdict = "(queueing: no target)"
            rest = f"throughput {ratio:.3f}x direct ({'ok' if ratio >= 0.9 else 'OVER'} >= 0.90)"
        lines.append(
            f"{kind:<6} {clients} client(s): gateway adds {added:+.2f} ms at p50 {verdict}; {rest}"
        )
    if cpu_rows:
        lines += ["", "CPU ms per request by process (1 client, sequential):"]
        for r in cpu_rows:
            parts = ", ".join(f"{name} {ms:.2f}" for name, ms in r["cpu_ms"].items())
            lines.append(f"  {r['kind']:<6} {r['path']:<8} {parts}")
    return lines


def embed_dim(model: str) -> int:
    """The embedding size of an open_clip model config (no weights loaded)."""
    import open_clip

    config = open_clip.get_model_config(model)
    if config is None:
        raise SystemExit(f"unknown open_clip model {model!r}")
    return int(config["embed_dim"])


def ingest(gateway: str, count: int) -> None:
    with httpx.Client(base_url=gateway, timeout=120) as client:
        for start in range(0, count, 50):
            files = [
                ("files", (f"bench/{i}.jpg", jpeg_of(i, 96), "image/jpeg"))
                for i in range(start, min(count, start + 50))
            ]
            client.post("/ingest", files=files).raise_for_status()
    print(f"# ingested {count} images", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=300, help="queries per measured run")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients (besides 1)")
    parser.add_argument("--images", type=int, default=1000, help="collection size to ingest")
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--no-keywords", action="store_true",
                        help="text searches without the keyword search fused in (issue 26)")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument(
        "--model", default="glimpse-tiny",
        help="open_clip model of the started stack, random weights (ViT-B-32: the real cost "
        "of an encoder call; glimpse-tiny: the gateway's share at its largest)",
    )
    parser.add_argument(
        "--device", choices=["cpu", "cuda", "auto"],
        help="the started encoder's ENCODER_DEVICE (default: cpu for glimpse-tiny, auto, i.e. "
        "the GPU when there is one, for other models; a ViT-B-32 stack on one CPU thread did "
        "not finish a GPU run's 120 s step)",
    )
    parser.add_argument(
        "--urls", nargs=3, metavar=("GATEWAY", "ENCODER", "INDEX"),
        help="use running services instead of starting a tiny-model stack",
    )
    args = parser.parse_args(argv)

    def run(urls: dict[str, str], pids: dict[str, int] | None = None) -> list[dict[str, Any]]:
        ingest(urls["gateway"], args.images)
        return asyncio.run(bench(urls, args, pids))

    if args.urls:
        rows = run(dict(zip(("gateway", "encoder", "index"), args.urls, strict=True)))
        model = httpx.get(args.urls[1] + "/v1/info").json()
    else:
        model_env = {} if args.model == "glimpse-tiny" else {
            "ENCODER_MODEL": args.model, "ENCODER_PRETRAINED": "none",
            "INDEX_DIM": str(embed_dim(args.model)),
        }
        model_env["ENCODER_DEVICE"] = args.device or (
            "cpu" if args.model == "glimpse-tiny" else "auto"
        )
        with tempfile.TemporaryDirectory() as tmp, start_stack(
            Path(tmp), timeout=600, **model_env
        ) as stack:
            urls = {"gateway": stack.gateway_url, "encoder": stack.encoder.url,
                    "index": stack.index.url}
            pids = {
                name: service.proc.pid
                for name, service in (
                    ("gateway", stack.gateway), ("encoder", stack.encoder), ("index", stack.index)
                )
                if service.proc is not None
            }
            # This process: on the direct path it makes the same two upstream calls as the
            # gateway, so its CPU per request is what those two HTTP calls cost here.
            pids["bench client"] = os.getpid()
            rows = run(urls, pids)
            model = httpx.get(stack.encoder.url + "/v1/info").json()
    print(
        f"model {model['model']} ({model['pretrained']}, dim {model['dim']}, {model['device']}); "
        f"{args.images} images; k={args.k}; {args.requests} queries per run"
    )
    print("\n".join(summarise(rows)))
    if args.json:
        args.json.write_text(json.dumps({"model": model, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
