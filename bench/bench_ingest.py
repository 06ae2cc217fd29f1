#!/usr/bin/env python3
"""Bulk ingestion end to end vs the encoder's own rate, side by side in one run.

    python bench/bench_ingest.py [--n 2000] [--model ViT-B-32] [--pretrained none]

1. Generates N realistic JPEGs (default 2,000 at 640x480): random crops of the colour sample
   photos that scikit-image and scikit-learn ship, resized, colour-jittered, sometimes flipped,
   saved at JPEG quality 80-95. Every file is different.
2. Starts the encoder, index and gateway as processes on free ports (or uses the running ones
   given by --gateway-url and --encoder-url; the gateway's index must then be empty of them).
3. Measures, on the same files:
   - the encoder's own rate: the files posted straight to its /v1/embed/image, in batches of
     --batch-size with --concurrency requests in flight; half of the files before the
     end-to-end run and half after, so drift in a shared machine's load shows;
   - end to end: glimpse/cli/ingest.py's ingest() through the gateway (hash, /ingest/check,
     upload, header check, media store, encode, index add), with the same batching.
4. Prints both rates and their ratio (target: >= 0.80 on CPU).

The model's speed does not depend on its weights, so ENCODER_PRETRAINED=none (random weights,
no download) measures the same forward pass as the real checkpoint.

    python bench/bench_ingest.py --instant [--n 2000] [--batch-size 32] [--concurrency 8]

measures the gateway's own per-image ingest cost instead, on the CPU: the real gateway and the
real index service as processes, and in place of the encoder a benchmark stand-in that answers
every file with the same unit vector at once (bench/instant_encoder.py, 512-d). The JPEGs go
through glimpse/cli/ingest.py over real HTTP as above. It reports images/s and the CPU time per
image of each process, read with psutil around the run (the gateway's is the figure: target
<= 400 us on a 2-core machine; its kernel part beside it), of ingest.py (this process) and of
ingest.py against an instant fake gateway; then the gateway's CPU per thumbnail of a search
page, at first view (made from the original when it is not there yet) and cached.

    python bench/bench_ingest.py --instant --workers 2 --compare-old /tmp/old-main --runs 4

measures images/s of the same ingest against the old code in a worktree (one with top-level
packages and scripts/bench_ingest.py, e.g. ``git worktree add /tmp/old-main 55ae10b``: a single
gateway process and its pack store), side by side in one run: each run starts fresh services
on each side, in alternating order, on the same JPEGs; every run is printed, then the ratio of
the medians (target: >= 0.80). ``--results FILE`` appends the runs as rows (bench/results/).
"""

from __future__ import annotations

import argparse
import csv
import functools
import io
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import psutil
from PIL import Image, ImageEnhance

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from glimpse.cli.ingest import ingest  # noqa: E402
from tests.support.procs import ServiceProcess  # noqa: E402

SOURCES = ["astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field",
           "immunohistochemistry", "retina", "colorwheel"]


@functools.cache
def sample_photos() -> tuple[Image.Image, ...]:
    """The colour photos that scikit-image and scikit-learn ship (no download)."""
    import skimage.data
    from sklearn.datasets import load_sample_images

    photos = [Image.fromarray(np.asarray(getattr(skimage.data, name)())) for name in SOURCES]
    photos += [Image.fromarray(a) for a in skimage.data.stereo_motorcycle()[:2]]
    photos += [Image.fromarray(a) for a in load_sample_images().images]
    return tuple(p.convert("RGB") for p in photos)


def realistic_jpeg(photo: Image.Image, rng: random.Random, size: tuple[int, int]) -> bytes:
    """A random crop of ``photo`` at ``size``, colour-jittered, as a camera-like JPEG."""
    w, h = photo.size
    aspect = size[0] / size[1] * rng.uniform(0.85, 1.15)
    area = w * h * rng.uniform(0.3, 1.0)
    cw = min(w, int((area * aspect) ** 0.5))
    ch = min(h, int(cw / aspect))
    x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
    img = photo.crop((x, y, x + cw, y + ch)).resize(size, Image.Resampling.BILINEAR)
    if rng.random() < 0.5:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    img = ImageEnhance.Brightness(img).enhance(rng.uniform(0.7, 1.3))
    img = ImageEnhance.Contrast(img).enhance(rng.uniform(0.7, 1.3))
    img = ImageEnhance.Color(img).enhance(rng.uniform(0.6, 1.4))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=rng.randint(80, 95))
    return buf.getvalue()


def _write_one(job: tuple[Path, int, tuple[int, int], int]) -> Path:
    folder, i, size, seed = job
    photos = sample_photos()  # once per worker process (cached)
    rng = random.Random(seed * 1_000_003 + i)
    path = folder / f"batch{i // 100:03d}" / f"img{i:05d}.jpg"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(realistic_jpeg(photos[i % len(photos)], rng, size))
    return path


def generate(folder: Path, n: int, size: tuple[int, int], seed: int = 0) -> list[Path]:
    """``n`` different JPEGs under ``folder`` (100 per sub-folder); their paths.

    About 8 ms of CPU per image, made in one process per core: threads did not scale (57.6 s
    for 8,000 on a 16-core GPU host, most of Pillow's enhance steps hold the GIL)."""
    jobs = [(folder, i, size, seed) for i in range(n)]
    workers = min(os.cpu_count() or 1, max(1, n // 200))
    if workers == 1:
        return [_write_one(job) for job in jobs]
    with ProcessPoolExecutor(workers) as pool:
        return list(pool.map(_write_one, jobs, chunksize=50))


@dataclass
class Rate:
    images: int
    seconds: float

    @property
    def per_s(self) -> float:
        return self.images / self.seconds if self.seconds else 0.0


def encoder_rate(
    encoder_url: str, paths: Sequence[Path], batch_size: int, concurrency: int
) -> Rate:
    """Images/s of the encoder alone: the files posted to /v1/embed/image, batches in flight."""
    batches = [paths[i : i + batch_size] for i in range(0, len(paths), batch_size)]
    done = 0
    lock = threading.Lock()

    def post(batch: Sequence[Path]) -> None:
        nonlocal done
        files = [("files", (p.name, p.read_bytes(), "image/jpeg")) for p in batch]
        resp = client.post("/v1/embed/image", files=files)
        resp.raise_for_status()
        if any(e is not None for e in resp.json()["errors"]):
            raise RuntimeError(f"the encoder refused some files: {resp.json()['errors']}")
        with lock:
            done += len(batch)

    with httpx.Client(base_url=encoder_url, timeout=600) as client:
        started = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as pool:
            list(pool.map(post, batches))
        return Rate(done, time.perf_counter() - started)


def client_rate(folder: Path, batch_size: int, concurrency: int) -> Rate:
    """Images/s of ingest() alone: walk, hash, check and upload to a gateway that answers at
    once (an in-process fake of the network), the script's own ceiling."""
    # The fake needs the part count only: one "added" per multipart part.
    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/ingest/check":
            return httpx.Response(200, json={"missing": json.loads(request.read())["sha256"]})
        parts = request.read().count(b'Content-Disposition: form-data; name="files"')
        return httpx.Response(200, json={"items": [{"path": "", "status": "added"}] * parts})

    summary = ingest([folder], "http://fake", batch_size=batch_size, concurrency=concurrency,
                     transport=httpx.MockTransport(answer))
    return Rate(summary.added, summary.elapsed_s)


@contextmanager
def services(
    workdir: Path, model: str, pretrained: str, extra_env: dict[str, str]
) -> Iterator[tuple[str, str]]:
    """Encoder, index and gateway as processes; yields (gateway_url, encoder_url)."""
    with ExitStack() as stack:
        encoder = ServiceProcess(
            "glimpse.encoder.main",
            {"ENCODER_MODEL": model, "ENCODER_PRETRAINED": pretrained, **extra_env},
            workdir / "encoder.log",
        )
        stack.callback(encoder.stop)
        encoder.start(timeout=600)
        dim = int(httpx.get(encoder.url + "/v1/info", timeout=10).json()["dim"])
        index = ServiceProcess(
            "glimpse.index.main",
            {"INDEX_DATA_DIR": str(workdir / "index"), "INDEX_DIM": str(dim)},
            workdir / "index.log",
        )
        stack.callback(index.stop)
        index.start(timeout=120)
        gateway = ServiceProcess(
            "glimpse.gateway.main",
            {
                "GATEWAY_ENCODER_URL": encoder.url,
                "GATEWAY_INDEX_URL": index.url,
                "GATEWAY_MEDIA_DIR": str(workdir / "media"),
            },
            workdir / "gateway.log",
        )
        stack.callback(gateway.stop)
        gateway.start(timeout=120)
        yield gateway.url, encoder.url


INSTANT_DIM = 512  # ViT-B-32's: the vectors the gateway decodes and forwards are full-sized


@contextmanager
def instant_services(
    workdir: Path, gateway_env: dict[str, str]
) -> Iterator[dict[str, ServiceProcess]]:
    """The stand-in encoder, the real index and the real gateway as processes, by role."""
    with ExitStack() as stack:
        procs: dict[str, ServiceProcess] = {}

        def start(role: str, module: str, env: dict[str, str]) -> ServiceProcess:
            proc = ServiceProcess(module, env, workdir / f"{role}.log")
            stack.callback(proc.stop)
            proc.start(timeout=120)
            procs[role] = proc
            return proc

        encoder = start("encoder", "bench.instant_encoder",
                        {"INSTANT_ENCODER_DIM": str(INSTANT_DIM)})
        index = start("index", "glimpse.index.main",
                      {"INDEX_DATA_DIR": str(workdir / "index"), "INDEX_DIM": str(INSTANT_DIM)})
        start("gateway", "glimpse.gateway.main", {
            "GATEWAY_ENCODER_URL": encoder.url,
            "GATEWAY_INDEX_URL": index.url,
            "GATEWAY_MEDIA_DIR": str(workdir / "media"),
            **gateway_env,
        })
        yield procs


def cpu_seconds(pid: int | None = None) -> tuple[float, float, float]:
    """User + system CPU time of a process (all its threads) and of its child processes (a
    service's uvicorn workers), this one when ``pid`` is None, the system part, and the main
    threads' (the event loops', in the services)."""
    root = psutil.Process(pid)
    total = system = loop = 0.0
    for process in [root, *(root.children(recursive=True) if pid is not None else [])]:
        try:
            times = process.cpu_times()
            main = next((t for t in process.threads() if t.id == process.pid), None)
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
        system += times.system
        loop += float(main.user_time + main.system_time) if main is not None else 0.0
    return total, system, loop


@dataclass
class Cost:
    """What one measured step took: its count, wall time and each process's CPU time."""

    count: int
    seconds: float
    cpu_s: dict[str, float]
    system_s: dict[str, float] = field(default_factory=dict)  # the kernel's part of cpu_s
    loop_s: dict[str, float] = field(default_factory=dict)  # the main thread's part of cpu_s

    @property
    def per_s(self) -> float:
        return self.count / self.seconds if self.seconds else 0.0

    def us_per(self, role: str) -> float:
        return self.cpu_s[role] / self.count * 1e6 if self.count else 0.0

    def system_us_per(self, role: str) -> float:
        return self.system_s[role] / self.count * 1e6 if self.count else 0.0

    def loop_us_per(self, role: str) -> float:
        return self.loop_s[role] / self.count * 1e6 if self.count else 0.0


@contextmanager
def measured(pids: dict[str, int | None], cost: Cost) -> Iterator[None]:
    """Fill ``cost``'s wall time and per-process CPU time over the ``with`` body."""
    before = {role: cpu_seconds(pid) for role, pid in pids.items()}
    started = time.perf_counter()
    yield
    cost.seconds = time.perf_counter() - started
    after = {role: cpu_seconds(pid) for role, pid in pids.items()}
    cost.cpu_s = {role: after[role][0] - before[role][0] for role in pids}
    cost.system_s = {role: after[role][1] - before[role][1] for role in pids}
    cost.loop_s = {role: after[role][2] - before[role][2] for role in pids}


def fetch_all(url: str, requests: Sequence[tuple[str, dict[str, str]]],
              concurrency: int) -> list[httpx.Response]:
    """GET every (path, headers) with ``concurrency`` connections (a browser opens about six)."""
    with httpx.Client(base_url=url, timeout=120) as client, \
            ThreadPoolExecutor(concurrency) as pool:
        return list(pool.map(lambda r: client.get(r[0], headers=r[1]), requests))


def instant_run(args: argparse.Namespace, workdir: Path, paths: list[Path]) -> int:
    """The gateway's own ingest and thumbnail cost, its upstreams instant (see the doc)."""
    total_mb = sum(p.stat().st_size for p in paths) / 1e6
    # Warm-up files of their own (another seed): the first requests of a fresh process import
    # and allocate, which is not per-image cost.
    warm = generate(workdir / "warm-up", 2 * args.batch_size, args.size, seed=1)
    client_alone = Cost(0, 0.0, {})
    with measured({"ingest.py": None}, client_alone):
        client_alone.count = client_rate(workdir / "images", args.batch_size,
                                         args.concurrency).images
    gateway_env = dict(kv.split("=", 1) for kv in args.gateway_env)
    gateway_env.setdefault("WEB_CONCURRENCY", str(args.workers))  # uvicorn --workers
    with instant_services(workdir, gateway_env) as procs:
        gateway_url = procs["gateway"].url
        warmed = ingest([workdir / "warm-up"], gateway_url, batch_size=args.batch_size,
                        concurrency=args.concurrency)
        if warmed.added != len(warm):
            print(f"warm-up did not add every file:\n{warmed.describe()}", file=sys.stderr)
            return 1
        pids: dict[str, int | None] = {role: p.proc.pid for role, p in procs.items() if p.proc}
        pids["ingest.py"] = None
        run = Cost(0, 0.0, {})
        with measured(pids, run):
            summary = ingest([workdir / "images"], gateway_url, batch_size=args.batch_size,
                             concurrency=args.concurrency, progress=not args.quiet)
        run.count = summary.added
        if summary.added != len(paths) or summary.failures:
            print(f"the run did not add every file:\n{summary.describe()}", file=sys.stderr)
            return 1

        # A search page's thumbnails: first view, then again (the browser's cache aside), then
        # revalidated with the ETag the first view gave.
        k = min(args.thumbnails, len(paths))
        hits = httpx.post(gateway_url + "/search/text", json={"query": "a photo", "k": k},
                          timeout=60).json()["results"]
        urls = [hit["thumbnail_url"] for hit in hits]
        gateway_only = {"gateway": pids["gateway"]}
        thumbs: list[tuple[str, Cost]] = []
        etags: list[str] = []
        for name in ("first view", "cached", "revalidated"):
            requests = [(url, {"If-None-Match": etag} if name == "revalidated" else {})
                        for url, etag in zip(urls, etags or [""] * len(urls), strict=True)]
            cost = Cost(len(urls), 0.0, {})
            with measured(gateway_only, cost):
                answers = fetch_all(gateway_url, requests, 6)
            want = 304 if name == "revalidated" else 200
            if any(r.status_code != want for r in answers):
                print(f"thumbnails ({name}): {[r.status_code for r in answers][:10]}",
                      file=sys.stderr)
                return 1
            etags = etags or [r.headers["etag"] for r in answers]
            thumbs.append((name, cost))

    print()
    print(f"gateway alone: stand-in encoder (bench/instant_encoder.py, unit vectors, "
          f"{INSTANT_DIM}-d, no decoding), real index service; cpus={os.cpu_count()}"
          + (f"; gateway env {' '.join(args.gateway_env)}" if args.gateway_env else ""))
    print(f"{len(paths)} JPEGs {args.size[0]}x{args.size[1]}, {total_mb:.0f} MB; batches of "
          f"{args.batch_size}; up to {summary.window} of {args.concurrency} requests in flight; "
          f"{summary.retries} retries")
    print(f"{'':34}{'images':>8}{'seconds':>9}{'images/s':>10}{'CPU us/image':>14}")
    print(f"{'ingest end to end':34}{run.count:>8}{run.seconds:>9.2f}{run.per_s:>10.1f}")
    for role in ("gateway", "ingest.py", "encoder", "index"):
        label = {"encoder": "stand-in encoder", "ingest.py": "ingest.py (client)"}.get(role, role)
        print(f"{'  ' + label:34}{'':27}{run.us_per(role):>14.0f}")
    print(f"{'ingest.py, instant fake gateway':34}{client_alone.count:>8}"
          f"{client_alone.seconds:>9.2f}{client_alone.per_s:>10.1f}"
          f"{client_alone.us_per('ingest.py'):>14.0f}")
    print(f"{'thumbnails of a search page':34}{'thumbs':>8}{'seconds':>9}{'thumbs/s':>10}"
          f"{'gateway us':>14}")
    for name, cost in thumbs:
        print(f"{'  ' + name:34}{cost.count:>8}{cost.seconds:>9.2f}{cost.per_s:>10.1f}"
              f"{cost.us_per('gateway'):>14.0f}")
    figure = run.us_per("gateway")
    verdict = "meets" if figure <= 400 else "ABOVE"
    print(f"gateway CPU per ingested image: {figure:.0f} us ({verdict} the 400 us target; "
          f"kernel {run.system_us_per('gateway'):.0f} us of it, its event loop's thread "
          f"{run.loop_us_per('gateway'):.0f} us)")
    return 0


# One measured ingest against the old code, run by its own interpreter in its worktree: its
# services (scripts/bench_ingest.py's instant_services) and its client (scripts/ingest.py).
_OLD_RUN = """
import json, sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from scripts.bench_ingest import Cost, instant_services, measured
from scripts.ingest import ingest
workdir, images, warm = Path(sys.argv[2]), sys.argv[3], sys.argv[4]
batch, concurrency = int(sys.argv[5]), int(sys.argv[6])
with instant_services(workdir, {}) as procs:
    url = procs["gateway"].url
    ingest([warm], url, batch_size=batch, concurrency=concurrency)
    pids = {role: p.proc.pid for role, p in procs.items()}
    cost = Cost(0, 0.0, {})
    with measured({**pids, "client": None}, cost):
        summary = ingest([images], url, batch_size=batch, concurrency=concurrency)
print(json.dumps({"added": summary.added, "seconds": cost.seconds,
                  **{f"{role}_cpu_s": cpu for role, cpu in cost.cpu_s.items()}}))
"""


def _new_run(workdir: Path, images: Path, warm: Path, args: argparse.Namespace) -> dict[str, float]:
    """One measured ingest through this checkout's services (see :func:`_OLD_RUN`)."""
    with instant_services(workdir, {"WEB_CONCURRENCY": str(args.workers)}) as procs:
        url = procs["gateway"].url
        ingest([warm], url, batch_size=args.batch_size, concurrency=args.concurrency)
        cost = Cost(0, 0.0, {})
        pids: dict[str, int | None] = {role: p.proc.pid for role, p in procs.items() if p.proc}
        with measured({**pids, "client": None}, cost):
            summary = ingest([images], url, batch_size=args.batch_size,
                             concurrency=args.concurrency)
    return {"added": summary.added, "seconds": cost.seconds,
            **{f"{role}_cpu_s": cpu for role, cpu in cost.cpu_s.items()}}


def _old_run(workdir: Path, images: Path, warm: Path, args: argparse.Namespace) -> dict[str, float]:
    done = subprocess.run(
        [sys.executable, "-c", _OLD_RUN, str(args.compare_old), str(workdir), str(images),
         str(warm), str(args.batch_size), str(args.concurrency)],
        cwd=args.compare_old, capture_output=True, text=True, timeout=900,
    )
    if done.returncode != 0:
        raise RuntimeError(f"the old code's run failed:\n{done.stderr[-3000:]}")
    answer: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return answer


def compare_run(args: argparse.Namespace, workdir: Path, paths: list[Path]) -> int:
    """This checkout's gateway (``--workers`` processes) against the old code's, alternated."""
    warm = workdir / "warm-up"
    generate(warm, 2 * args.batch_size, args.size, seed=1)
    sides = {
        f"glimpse, GATEWAY_WORKERS={args.workers}": _new_run,
        "before: one gateway process, pack store (55ae10b)": _old_run,
    }
    runs: list[tuple[int, str, dict[str, float]]] = []
    for n in range(args.runs):
        order = list(sides) if n % 2 == 0 else list(reversed(sides))
        for side in order:
            run_dir = workdir / f"run{n}-{len(runs) % 2}"
            run_dir.mkdir(parents=True)
            result = sides[side](run_dir, workdir / "images", warm, args)
            if result["added"] != len(paths):
                print(f"{side}: run {n} added {result['added']} of {len(paths)}", file=sys.stderr)
                return 1
            runs.append((n, side, result))
            print(f"run {n} {side}: {result['added'] / result['seconds']:.1f} images/s",
                  file=sys.stderr)
    load = os.getloadavg()[0]
    print(f"ingest, instant encoder, {len(paths)} JPEGs {args.size[0]}x{args.size[1]}, batches "
          f"of {args.batch_size}, {args.concurrency} in flight; cpus={os.cpu_count()}; "
          f"load {load:.1f}")
    roles = ("gateway", "client", "index", "encoder")
    print(f"{'run':>4}  {'side':52}{'images/s':>10}  CPU us/image: "
          + " ".join(f"{role:>8}" for role in roles))
    for n, side, r in runs:
        print(f"{n:>4}  {side:52}{r['added'] / r['seconds']:>10.1f}{'':15}"
              + " ".join(f"{r[role + '_cpu_s'] / r['added'] * 1e6:>8.0f}" for role in roles))
    medians = {side: statistics.median(r["added"] / r["seconds"] for _, s, r in runs if s == side)
               for side in sides}
    new, old = medians.values()
    ratio = new / old
    print(f"median images/s: {new:.1f} against {old:.1f}; ratio {ratio:.2f} "
          f"({'meets' if ratio >= 0.8 else 'BELOW'} the 0.80 target)")
    if args.results is not None:
        _append_results(args, paths, runs, ratio, load)
    return 0


def _append_results(args: argparse.Namespace, paths: list[Path],
                    runs: list[tuple[int, str, dict[str, float]]], ratio: float,
                    load: float) -> None:
    """The runs as rows of bench/results/ (README.md there): images/s and the gateway's CPU
    per image of each run, in the order run, then the ratio of the medians."""
    def git(*command: str) -> str:
        return subprocess.run(["git", *command], cwd=REPO, capture_output=True,
                              text=True).stdout.strip()

    commit = git("rev-parse", "--short", "HEAD") or "-"
    dirty = " (the working tree had uncommitted changes)" if git("status", "--porcelain") else ""
    today = time.strftime("%Y-%m-%d")
    setup = (f"instant encoder, {args.size[0]}x{args.size[1]} JPEGs, batches of {args.batch_size}, "
             f"{args.concurrency} in flight, {len(paths)} images")
    command = (f"bench/bench_ingest.py --instant --workers {args.workers} --compare-old "
               f"{args.compare_old} --runs {args.runs} --n {len(paths)}")
    note = f"alternated; load {load:.1f} at the end{dirty}"
    rows = []
    for what, unit, value in (
        (f"ingest images/s, {setup}", "images/s",
         lambda r: f"{r['added'] / r['seconds']:.1f}"),
        (f"gateway CPU per ingested image (all its processes), {setup}", "us",
         lambda r: f"{r['gateway_cpu_s'] / r['added'] * 1e6:.0f}"),
    ):
        for n, side, r in runs:
            variant = "glimpse" if side.startswith("glimpse") else side
            first = command if not rows else ""
            rows.append([today, commit, "dev-2core", what, variant, value(r), "", "", unit,
                         first, f"{note}; run {n}"])
    rows.append([today, commit, "dev-2core",
                 f"ingest images/s, GATEWAY_WORKERS={args.workers} over one gateway process and "
                 "the pack store, ratio of the medians", "glimpse", f"{ratio:.2f}", "",
                 str(args.runs), "ratio", "", note])
    with open(args.results, "a", newline="") as fh:
        csv.writer(fh).writerows(rows)


def parse_size(text: str) -> tuple[int, int]:
    w, _, h = text.lower().partition("x")
    return int(w), int(h)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=2000, help="images to generate (%(default)s)")
    p.add_argument("--size", type=parse_size, default=(640, 480), help="WxH (640x480)")
    p.add_argument("--model", default="ViT-B-32", help="open_clip model (%(default)s)")
    p.add_argument("--pretrained", default="none",
                   help="weights; 'none' = random, same speed (%(default)s)")
    p.add_argument("--batch-size", type=int, default=16, help="files per request (%(default)s)")
    p.add_argument("--concurrency", type=int, default=8,
                   help="requests in flight: the encoder-alone run's, the most ingest.py "
                   "keeps (%(default)s)")
    p.add_argument("--gateway-url", default=None, help="use a running gateway")
    p.add_argument("--encoder-url", default=None, help="its encoder (with --gateway-url)")
    p.add_argument("--workdir", type=Path, default=None, help="keep files and logs here")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--instant", action="store_true",
                   help="the gateway's own cost: a stand-in encoder that answers at once")
    p.add_argument("--thumbnails", type=int, default=200,
                   help="--instant: thumbnails of a search page to fetch (%(default)s)")
    p.add_argument("--gateway-env", action="append", default=[], metavar="KEY=VALUE",
                   help="--instant: a setting for the gateway process (repeatable)")
    p.add_argument("--workers", type=int, default=1,
                   help="--instant: the gateway's worker processes (%(default)s)")
    p.add_argument("--compare-old", type=Path, default=None, metavar="WORKTREE",
                   help="--instant: side by side with the old code in this worktree")
    p.add_argument("--runs", type=int, default=4, help="--compare-old: runs per side")
    p.add_argument("--results", type=Path, default=None,
                   help="--compare-old: append the runs to this CSV (bench/results/)")
    args = p.parse_args(argv)
    if (args.gateway_url is None) != (args.encoder_url is None):
        p.error("--gateway-url and --encoder-url go together")
    if args.instant and args.gateway_url:
        p.error("--instant starts its own services")
    if any("=" not in kv for kv in args.gateway_env):
        p.error("--gateway-env takes KEY=VALUE")
    if args.compare_old is not None and not args.instant:
        p.error("--compare-old goes with --instant")
    # A plain `kill` must still stop the services this run started (the ExitStack below).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    with ExitStack() as stack:
        workdir = args.workdir or Path(stack.enter_context(tempfile.TemporaryDirectory()))
        workdir.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        paths = generate(workdir / "images", args.n, args.size)
        total_mb = sum(p.stat().st_size for p in paths) / 1e6
        print(f"generated {len(paths)} JPEGs {args.size[0]}x{args.size[1]} ({total_mb:.0f} MB) "
              f"in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        if args.compare_old is not None:
            return compare_run(args, workdir, paths)
        if args.instant:
            return instant_run(args, workdir, paths)

        if args.gateway_url:
            gateway_url, encoder_url = args.gateway_url, args.encoder_url
        else:
            t0 = time.perf_counter()
            env: dict[str, str] = {}
            gateway_url, encoder_url = stack.enter_context(
                services(workdir, args.model, args.pretrained, env)
            )
            print(f"services ready in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        info = httpx.get(encoder_url + "/v1/info", timeout=10).json()

        client = client_rate(workdir / "images", args.batch_size, args.concurrency)
        print(f"ingest.py against an instant fake gateway: {client.per_s:.1f} images/s",
              file=sys.stderr)
        # Warm-up outside the timings: the first forwards of a fresh process are slower.
        encoder_rate(encoder_url, paths[: 2 * args.batch_size], args.batch_size, 2)
        half = len(paths) // 2
        before = encoder_rate(encoder_url, paths[:half], args.batch_size, args.concurrency)
        print(f"encoder alone (first half): {before.per_s:.1f} images/s", file=sys.stderr)
        summary = ingest(
            [workdir / "images"], gateway_url,
            batch_size=args.batch_size, concurrency=args.concurrency,
            progress=not args.quiet,
        )
        if summary.added != len(paths) or summary.failures:
            print(f"end-to-end run did not add every file:\n{summary.describe()}", file=sys.stderr)
            for f in summary.failures[:5]:
                print(f"  {f.relative}: {f.reason}", file=sys.stderr)
            return 1
        e2e = Rate(summary.added, summary.elapsed_s)
        print(f"end to end: {e2e.per_s:.1f} images/s ({summary.retries} retries, up to "
              f"{summary.window} requests in flight)", file=sys.stderr)
        after = encoder_rate(encoder_url, paths[half:], args.batch_size, args.concurrency)
        print(f"encoder alone (second half): {after.per_s:.1f} images/s", file=sys.stderr)

    alone = Rate(before.images + after.images, before.seconds + after.seconds)
    ratio = e2e.per_s / alone.per_s if alone.per_s else 0.0
    print()
    print(f"model {info['model']} pretrained={info['pretrained']} device={info['device']} "
          f"precision={info['precision']} max_batch={info['max_batch']}; cpus={os.cpu_count()}")
    print(f"{len(paths)} JPEGs {args.size[0]}x{args.size[1]}, {total_mb:.0f} MB; batches of "
          f"{args.batch_size}; in flight: {args.concurrency} (encoder alone), up to "
          f"{summary.window} reached (ingest.py, adaptive), {summary.retries} retries")
    print(f"{'':32}{'images':>8}{'seconds':>10}{'images/s':>10}")
    rows = [("encoder alone, before e2e", before), ("end to end (ingest.py)", e2e),
            ("encoder alone, after e2e", after), ("encoder alone, both", alone),
            ("ingest.py, instant fake gateway", client)]
    for name, rate in rows:
        print(f"{name:32}{rate.images:>8}{rate.seconds:>10.1f}{rate.per_s:>10.1f}")
    verdict = "meets" if ratio >= 0.8 else "BELOW"
    print(f"ratio end to end / encoder alone: {ratio:.2f} ({verdict} the 0.80 target)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
