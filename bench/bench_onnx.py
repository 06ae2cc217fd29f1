"""The encoder service on ONNX Runtime against raw torch eager, side by side in one run.

Rows, for one model (default ViT-B-32 with random weights: speed does not depend on them):
  * images/s of raw torch eager forward on pre-decoded tensors (bench_encoder.py's ``Raw``, in
    its own thread, batches of --max-batch), of the raw ONNX Runtime session the service loads
    (its export and options, on the same tensors, in its own thread) and of the service with
    ENCODER_RUNTIME=onnx from JPEG bytes over HTTP (--clients requests of --files-per-request
    images in flight), alternated each round so that a noisy neighbour hits all three;
  * single text query p50: raw torch tokenize + forward + normalise, and one POST
    /v1/embed/text through the ONNX service (distinct texts: no cache hits);
  * CPU seconds per image of each side (the raw process's, the service process's): on a
    shared machine, wall-clock rates move with the neighbours' load, CPU time much less.

Every round is printed and, with --csv, appended as rows in bench/results' format.

With --profile, one more service pass (not in the rounds) runs under py-spy (.venv/bin/py-spy,
needs ptrace rights), and the share of wall time of each service thread is printed and
recorded: the model thread in the ONNX run, preparing batches or waiting for one; the decode
thread decoding or idle; the event loop handling HTTP or idle.

With --near-duplicates it measures instead whether int8 keeps the near-duplicate figures:
bench_relevance.py's image set (sample-photo tiles and LFW faces; half of the queries have 1 to
3 transformed copies in the collection) embedded by torch, ONNX Runtime fp32 and int8, for
glimpse-tiny and ViT-B-32 (random weights), and per runtime: recall@1 over the queries with
copies, the recall a perfect per-query cut could reach (copies ranked above every other photo),
precision and recall of the relevance cutoff, and the copies fp32 ranks first that int8 does not.

    python bench/bench_onnx.py --rounds 3 --csv bench/results/bench_onnx.csv
    python bench/bench_onnx.py --near-duplicates --csv bench/results/onnx_near_duplicates.csv

With --kernel-split, ONNX Runtime's own profiler times the served image session (its export
and options) on --images pre-decoded images in batches of --max-batch, in this process, and
each operator type's share of the kernel time is printed and recorded.

With --session-options it compares ONNX Runtime session options in this process, on
pre-decoded pixels of the cached export (fp32, or int8 with --quantize): graph optimisation
level, intra-op threads, execution mode, spinning, an optimised model saved and loaded without
optimising again, and two sessions of one thread each run concurrently from a thread pool on
halves of each batch, and the model through ONNX Runtime's transformer optimiser (its
fusions); raw torch eager runs in the same rounds, in fp32 and under bf16 autocast. Each
variant's images/s, CPU ms per image and session start time, every round, alternated.

    python bench/bench_onnx.py --session-options --rounds 3 --csv bench/results/onnx_sessions.csv
    python bench/bench_onnx.py --torch-threads 1       # model threads of both sides
    python bench/bench_onnx.py --quantize int8         # int8 dynamic quantisation
Other options are bench_encoder.py's (--model, --images, --clients, --max-batch, ...).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple

import httpx
import numpy as np

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
from bench.common import append_rows  # noqa: E402


def own_args(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    # No abbreviations: "--model" must reach bench_encoder's options, not match "--models".
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter,
                                add_help=False, allow_abbrev=False)
    p.add_argument("--quantize", default="none", choices=["none", "int8"])
    p.add_argument("--csv", type=Path, help="append the rows here (bench/results format)")
    p.add_argument("--machine", default="dev-2core")
    p.add_argument("--note", default="", help="e.g. the load average")
    p.add_argument("--near-duplicates", action="store_true",
                   help="near-duplicate retrieval of torch, ONNX fp32 and int8 (no speed)")
    p.add_argument("--models", default="glimpse-tiny,ViT-B-32", help="with --near-duplicates")
    p.add_argument("--queries", type=int, default=200, help="with --near-duplicates")
    p.add_argument("--session-options", action="store_true",
                   help="ONNX Runtime session options side by side, in this process")
    p.add_argument("--profile", action="store_true",
                   help="one more service pass under py-spy: each thread's share of wall time")
    p.add_argument("--kernel-split", action="store_true",
                   help="ONNX Runtime's profiler on the served image session: time per operator")
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
    if mine.near_duplicates:
        return near_duplicates(mine, argv)
    args = parse_args(rest)
    if mine.session_options:
        return session_options(mine, args, argv)
    if mine.kernel_split:
        return kernel_split(mine, args, argv)
    measured = commit()  # the code the service starts from, whatever lands while it runs
    # start_service passes this process's environment on to the service.
    os.environ.update(ENCODER_RUNTIME="onnx", ENCODER_ONNX_QUANTIZE=mine.quantize)
    from glimpse.encoder.config import Settings
    from glimpse.encoder.onnx_runtime import entry_dir, export_key
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
    split: dict[str, float] = {}
    model_thread = ThreadPoolExecutor(1, thread_name_prefix="raw-onnx")
    try:
        info = httpx.get(url + "/v1/info").json()
        if info.get("runtime") != "onnx":
            raise SystemExit(f"the service runs {info.get('runtime')}: {info.get('runtime_note')}")
        # The export the service just loaded (or made), with the options it runs it with.
        settings = Settings(model=args.model, pretrained=args.pretrained, device="cpu",
                            runtime="onnx", onnx_quantize=mine.quantize)
        session = Variant(entry_dir(settings, export_key(settings, mine.quantize)) / "image.onnx",
                          1, threads)
        session_pixels = pixels.numpy()
        warm = argparse.Namespace(**{**vars(args), "images": args.clients * args.files_per_request})
        asyncio.run(service_image_rate(url, jpegs, warm))
        for round_no in range(args.rounds):
            cpu = time.process_time()
            torch_rate = raw.image_rate(pixels, args.images, args.max_batch)
            torch_cpu = (time.process_time() - cpu) / args.images
            session_rate, session_cpu_ms = model_thread.submit(
                session.rate, session_pixels, args.images, args.max_batch).result()
            cpu = process_cpu_s(proc.pid)
            onnx_rate = asyncio.run(service_image_rate(url, jpegs, args))
            onnx_cpu = (process_cpu_s(proc.pid) - cpu) / args.images
            round_texts = texts[round_no * args.text_queries:(round_no + 1) * args.text_queries]
            raw_text, svc_text, _ = text_latencies(raw, url, round_texts, round_no)
            row = {
                "torch": torch_rate, "onnx": onnx_rate, "ratio": onnx_rate / torch_rate,
                "session": session_rate, "session_ratio": session_rate / torch_rate,
                "torch_cpu_ms": torch_cpu * 1000, "onnx_cpu_ms": onnx_cpu * 1000,
                "session_cpu_ms": session_cpu_ms,
                "torch_text_ms": statistics.median(raw_text) * 1000,
                "onnx_text_ms": statistics.median(svc_text) * 1000,
            }
            rounds.append(row)
            print(f"round {round_no + 1}: images/s torch eager {torch_rate:5.1f} | ONNX session "
                  f"{session_rate:5.1f} | ONNX service {onnx_rate:5.1f} | ratio "
                  f"{row['ratio']:.2f} (session {row['session_ratio']:.2f})   CPU ms/image "
                  f"torch {row['torch_cpu_ms']:.0f} | session {session_cpu_ms:.0f} | service "
                  f"{row['onnx_cpu_ms']:.0f}   text p50 ms torch {row['torch_text_ms']:6.1f} | "
                  f"ONNX service {row['onnx_text_ms']:6.1f}   load {os.getloadavg()[0]:.1f}",
                  flush=True)
        if mine.profile:
            split = profile_service(proc.pid, url, jpegs, args, rounds[-1]["onnx"])
    finally:
        model_thread.shutdown()
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
    for key, name in (("ratio", "ONNX service"), ("session_ratio", "raw ONNX session")):
        ratios = [r[key] for r in rounds]
        print(f"images/s ratio {name} / torch eager: median {statistics.median(ratios):.2f} "
              f"({min(ratios):.2f} .. {max(ratios):.2f}; target >= 1.6)")
    if mine.csv:
        write_rows(mine, args, rounds, argv, measured, split)
    return 0


# What the leaf Python frame of a py-spy sample (with --idle) says a service thread is doing.
_PROFILE_STATES = {
    "glimpse-model": (("Session.run", "in the ONNX run"), ("Condition.wait", "waiting for a batch"),
                      ("", "preparing batches and answers")),
    "glimpse-decode": (("_worker (concurrent", "idle"), ("", "decoding and preprocessing")),
    "MainThread": (("Runner.run (asyncio", "idle"), ("", "handling HTTP")),
}


def profile_service(pid: int, url: str, jpegs: list[bytes], args: argparse.Namespace,
                    rate: float) -> dict[str, float]:
    """The share of wall time of each service thread in each state of _PROFILE_STATES, e.g.
    {"model thread: in the ONNX run": 0.99, ...}. py-spy samples a pass of 4 x --images from a
    fifth to half of its expected time (``rate``: the service's images/s so far), stopped early
    if the pass ends, so neither the ramp-up nor the tail (fewer requests in flight) counts."""
    spy_bin = Path(sys.executable).with_name("py-spy")
    out = Path(tempfile.mkdtemp()) / "service.txt"
    long_pass = argparse.Namespace(**{**vars(args), "images": 4 * args.images})
    seconds = 4 * args.images / rate
    with ThreadPoolExecutor(1) as client:
        running = client.submit(asyncio.run, service_image_rate(url, jpegs, long_pass))
        time.sleep(seconds / 5)
        spy = subprocess.Popen(
            [str(spy_bin if spy_bin.exists() else "py-spy"), "record", "--pid", str(pid),
             "--format", "raw", "--threads", "--idle", "--nonblocking", "--rate", "20",
             "-o", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        with contextlib.suppress(TimeoutError):
            running.result(timeout=seconds * 0.3)
        spy.send_signal(signal.SIGINT)  # py-spy writes its file and exits
        _, errors = spy.communicate(timeout=60)
        rate = running.result()
    if not out.exists():
        raise SystemExit(f"py-spy failed: {errors[-2000:]}")
    split = thread_shares(out.read_text())
    shutil.rmtree(out.parent, ignore_errors=True)
    print(f"profiled service pass: {rate:.1f} images/s; share of wall time: "
          + ", ".join(f"{k} {v:.1%}" for k, v in split.items()), flush=True)
    return split


def thread_shares(raw: str) -> dict[str, float]:
    """py-spy's raw output (--threads --idle) as each service thread's share of samples in each
    state of _PROFILE_STATES; other threads are left out."""
    samples: dict[str, dict[str, int]] = {}
    for line in raw.splitlines():
        stack, count = line.rsplit(" ", 1)
        frames = stack.split(";")
        thread = frames[0].split(": ", 1)[-1].rstrip("_0123456789")
        if thread not in _PROFILE_STATES:
            continue
        python = [f for f in frames[1:] if ".py:" in f]
        leaf = python[-1] if python else frames[-1]
        state = next(name for start, name in _PROFILE_STATES[thread] if leaf.startswith(start))
        states = samples.setdefault(thread, {})
        states[state] = states.get(state, 0) + int(count)
    split = {}
    for thread, states in samples.items():
        label = {"glimpse-model": "model thread", "glimpse-decode": "decode thread",
                 "MainThread": "event loop"}[thread]
        total = sum(states.values())
        for state, n in sorted(states.items(), key=lambda kv: -kv[1]):
            split[f"{label}: {state}"] = n / total
    return split


def write_rows(mine: argparse.Namespace, args: argparse.Namespace,
               rounds: list[dict[str, float]], argv: list[str] | None, measured: str,
               split: dict[str, float]) -> None:
    engine = f"ONNX Runtime {'int8' if mine.quantize == 'int8' else 'fp32'}"
    threads = f"{args.torch_threads} threads" if args.torch_threads else "default threads"
    base = {"date": datetime.date.today().isoformat(), "commit": measured,
            "machine": mine.machine, "note": mine.note}
    image_what = (f"images/s, {args.model} on CPU, {engine} service ({threads}, JPEG bytes over "
                  f"HTTP, {args.clients} clients) vs torch eager forward")
    cpu_what = (f"CPU ms per image, {args.model}, {engine} service ({threads}, JPEG bytes "
                f"over HTTP) vs torch eager forward")
    text_what = f"text query p50, {args.model} on CPU, {engine} service vs torch eager"
    out: list[dict[str, Any]] = []
    for r in rounds:
        out += [
            {**base, "what": image_what, "variant": "raw torch eager forward",
             "value": f"{r['torch']:.1f}", "unit": "images/s"},
            {**base, "what": image_what, "variant": "raw ONNX Runtime session forward",
             "value": f"{r['session']:.1f}", "unit": "images/s"},
            {**base, "what": image_what, "variant": "glimpse", "value": f"{r['onnx']:.1f}",
             "unit": "images/s"},
            {**base, "what": cpu_what, "variant": "raw torch eager forward",
             "value": f"{r['torch_cpu_ms']:.0f}", "unit": "ms"},
            {**base, "what": cpu_what, "variant": "raw ONNX Runtime session forward",
             "value": f"{r['session_cpu_ms']:.0f}", "unit": "ms"},
            {**base, "what": cpu_what, "variant": "glimpse", "value": f"{r['onnx_cpu_ms']:.0f}",
             "unit": "ms"},
            {**base, "what": text_what, "variant": "raw torch eager forward",
             "value": f"{r['torch_text_ms']:.1f}", "unit": "ms"},
            {**base, "what": text_what, "variant": "glimpse",
             "value": f"{r['onnx_text_ms']:.1f}", "unit": "ms"},
        ]
    profile_what = (f"share of wall time, {engine} service under py-spy ({args.model}, JPEG "
                    f"bytes over HTTP, {args.clients} clients)")
    out += [{**base, "what": profile_what, "variant": state, "value": f"{share:.3f}",
             "unit": "ratio"} for state, share in split.items()]
    save(mine, out, argv)


def save(mine: argparse.Namespace, rows: list[dict[str, Any]], argv: list[str] | None) -> None:
    """Append ``rows`` to --csv (bench/common.py's format), the first naming this command."""
    append_rows(mine.csv, rows,
                "bench/bench_onnx.py " + " ".join(argv if argv is not None else sys.argv[1:]))


# -- near-duplicate retrieval --------------------------------------------------------------------

RUNTIMES = {"torch": ("torch", "none"), "ONNX Runtime fp32": ("onnx", "none"),
            "ONNX Runtime int8": ("onnx", "int8")}


def near_duplicate_images(queries: int, seed: int = 0) -> tuple[list[Any], list[set[int]], int]:
    """bench_relevance.py's image set as photos: (base then query images, each query's copies
    among the base rows, the number of base rows)."""
    from bench import bench_relevance

    captured: list[Any] = []

    def keep(images: list[Any], model: str, pretrained: str) -> Any:
        captured.extend(images)
        return np.zeros((len(images), 1), dtype=np.float32)

    real = bench_relevance._embed_images
    bench_relevance._embed_images = keep  # the set is built once; each runtime embeds it
    try:
        data = bench_relevance.image_set(queries, seed)
    finally:
        bench_relevance._embed_images = real
    return captured, data.relevant, len(data.base)


def embed_photos(encoder: Any, images: list[Any], batch: int = 32) -> np.ndarray:
    """In a thread of its own, as the service runs the model (Raw's docstring says why)."""
    import torch

    def embed() -> np.ndarray:
        return np.concatenate([
            encoder.encode_pixels(torch.stack([encoder.preprocess(i) for i in images[s:s + batch]]))
            for s in range(0, len(images), batch)])

    with ThreadPoolExecutor(1) as thread:
        return thread.submit(embed).result()


def retrieval(vectors: np.ndarray, relevant: list[set[int]], n_base: int) -> dict[str, Any]:
    """Near-duplicate figures of one runtime's vectors (bench_relevance.py's evaluation)."""
    from bench import bench_relevance
    from glimpse.gateway.relevance import ALPHA

    data = bench_relevance.LabelledSet("images", "", vectors[:n_base], vectors[n_base:], relevant)
    cut = bench_relevance.evaluate(data, bench_relevance.adaptive(ALPHA))
    firsts = np.argmax(data.queries @ data.base.T, axis=1)
    found = {q for q, rows in enumerate(relevant) if rows and int(firsts[q]) in rows}
    return {"recall@1": len(found) / cut.copy_queries, "recall ceiling": cut.ceiling,
            "cutoff precision": cut.precision, "cutoff recall": cut.recall,
            "no good match rate": cut.no_match_rate, "found": found,
            "copies": cut.copy_queries, "empty": cut.empty_queries}


def near_duplicates(mine: argparse.Namespace, argv: list[str] | None) -> int:
    from glimpse.encoder.config import Settings
    from glimpse.encoder.onnx_runtime import load_serving_encoder

    measured = commit()
    images, relevant, n_base = near_duplicate_images(mine.queries)
    base = {"date": datetime.date.today().isoformat(), "commit": measured,
            "machine": mine.machine, "note": mine.note}
    out: list[dict[str, Any]] = []
    for model in mine.models.split(","):
        figures = {}
        for name, (runtime, quantize) in RUNTIMES.items():
            settings = Settings(model=model, pretrained="none", device="cpu", runtime=runtime,
                                onnx_quantize=quantize)
            encoder = load_serving_encoder(settings)
            if encoder.runtime != runtime:
                raise SystemExit(f"{name} does not serve {model}: {encoder.runtime_note}")
            started = time.perf_counter()
            figures[name] = retrieval(embed_photos(encoder, images), relevant, n_base)
            f = figures[name]
            print(f"{model:12} {name:18} recall@1 {f['recall@1']:.3f}  recall ceiling "
                  f"{f['recall ceiling']:.3f}  cutoff precision {f['cutoff precision']:.3f} "
                  f"recall {f['cutoff recall']:.3f}  no good match {f['no good match rate']:.3f}"
                  f"  ({time.perf_counter() - started:.0f}s)", flush=True)
        lost = figures["ONNX Runtime fp32"]["found"] - figures["ONNX Runtime int8"]["found"]
        print(f"{model}: copies fp32 ranks first that int8 does not: {len(lost)}", flush=True)
        what = (f"near-duplicate retrieval, {model} (random weights) on CPU, {n_base} photos, "
                f"{f['copies']} queries with copies, {f['empty']} without")
        for figure in ("recall@1", "recall ceiling", "cutoff precision", "cutoff recall",
                       "no good match rate"):
            out += [{**base, "what": f"{figure}: {what}", "variant": name,
                     "value": f"{figures[name][figure]:.3f}", "unit": "ratio"}
                    for name in RUNTIMES]
        out.append({**base, "what": f"copies fp32 ranks first that int8 does not: {what}",
                    "variant": "ONNX Runtime int8", "value": str(len(lost)), "unit": "queries"})
    if mine.csv:
        save(mine, out, argv)
    return 0


# -- session options -----------------------------------------------------------------------------


class Variant:
    """Sessions of one set of options on one tower's export, run on a batch of pixels."""

    def __init__(self, path: Path, sessions: int, threads: int, level: str = "all",
                 mode: str = "sequential", spin: bool = False, saved: Path | None = None) -> None:
        import onnxruntime as ort

        levels = {"basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
                  "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
                  "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
                  "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL}
        self.sessions = []
        started = time.perf_counter()
        for _ in range(sessions):
            options = ort.SessionOptions()
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = threads if mode == "parallel" else 1
            options.execution_mode = (ort.ExecutionMode.ORT_PARALLEL if mode == "parallel"
                                      else ort.ExecutionMode.ORT_SEQUENTIAL)
            options.graph_optimization_level = levels[level]
            options.add_session_config_entry("session.intra_op.allow_spinning", str(int(spin)))
            if saved is not None:
                options.optimized_model_filepath = str(saved)
            self.sessions.append(ort.InferenceSession(str(path), options,
                                                      providers=["CPUExecutionProvider"]))
        self.start_s = (time.perf_counter() - started) / sessions
        self.pool = ThreadPoolExecutor(sessions) if sessions > 1 else None

    def run(self, pixels: np.ndarray) -> np.ndarray:
        if self.pool is None:
            return self.sessions[0].run(None, {"input": pixels})[0]
        parts = np.array_split(pixels, len(self.sessions))
        outs = self.pool.map(lambda sp: sp[0].run(None, {"input": sp[1]})[0],
                             zip(self.sessions, parts, strict=True))
        return np.concatenate(list(outs))

    def rate(self, pixels: np.ndarray, total: int, batch: int) -> tuple[float, float]:
        """(images/s, CPU ms per image) over ``total`` images in batches of ``batch``."""
        self.run(pixels[:batch])  # warm-up
        cpu, start, done = time.process_time(), time.perf_counter(), 0
        while done < total:
            n = min(batch, total - done)
            self.run(pixels[np.arange(done, done + n) % len(pixels)])
            done += n
        wall = time.perf_counter() - start
        return total / wall, (time.process_time() - cpu) / total * 1000


class Served(NamedTuple):
    """The served image tower's cached export and pre-decoded pixels to run it on."""

    measured: str  # the commit, taken before loading
    threads: int
    path: Path  # image.onnx of the export the service loads (made on the first run)
    raw: Raw  # torch eager on the same threads, which decoded ``pixels``
    pixels: Any  # a torch tensor, batch-first


def served_image(mine: argparse.Namespace, args: argparse.Namespace) -> Served:
    """Load the model as the service does (ENCODER_RUNTIME=onnx) and decode --distinct JPEGs."""
    from glimpse.encoder.config import Settings
    from glimpse.encoder.onnx_runtime import OnnxClipEncoder, load_serving_encoder
    from glimpse.encoder.service import cpu_count

    measured = commit()
    threads = args.torch_threads or cpu_count()
    settings = Settings(model=args.model, pretrained=args.pretrained, device="cpu",
                        runtime="onnx", onnx_quantize=mine.quantize)
    encoder = load_serving_encoder(settings)
    if not isinstance(encoder, OnnxClipEncoder):
        raise SystemExit(f"ONNX Runtime does not serve {args.model}: {encoder.runtime_note}")
    raw = Raw(args, threads)
    return Served(measured, threads, Path(encoder.export_dir) / "image.onnx", raw,
                  raw.pixels(make_jpegs(args.distinct)))


def kernel_split(mine: argparse.Namespace, args: argparse.Namespace,
                 argv: list[str] | None) -> int:
    import json

    import onnxruntime as ort

    measured, threads, path, _, pixels_t = served_image(mine, args)
    pixels = pixels_t.numpy()
    variant = Variant(path, 1, threads)
    variant.run(pixels[:args.max_batch])  # warm-up, not profiled
    folder = Path(tempfile.mkdtemp())
    options = variant.sessions[0].get_session_options()
    options.enable_profiling = True
    options.profile_file_prefix = str(folder / "ort")
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    variant.sessions = [session]
    with ThreadPoolExecutor(1) as thread:  # as the service runs it
        rate, cpu_ms = thread.submit(variant.rate, pixels, args.images, args.max_batch).result()
    by_op: dict[str, float] = {}
    for event in json.loads(Path(session.end_profiling()).read_text()):
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            op = event["args"]["op_name"]
            by_op[op] = by_op.get(op, 0.0) + event["dur"]
    shutil.rmtree(folder, ignore_errors=True)
    total = sum(by_op.values())
    engine = f"ONNX Runtime {'int8' if mine.quantize == 'int8' else 'fp32'}"
    what = (f"share of kernel time, {args.model} image tower on CPU, {engine} as served, "
            f"pre-decoded pixels, batch {args.max_batch}, ONNX Runtime's profiler")
    print(f"# {what}: {rate:.1f} images/s, {cpu_ms:.0f} CPU ms/image (profiling on), load "
          f"{os.getloadavg()[0]:.2f}")
    base = {"date": datetime.date.today().isoformat(), "commit": measured,
            "machine": mine.machine, "note": mine.note, "what": what, "unit": "ratio"}
    out: list[dict[str, Any]] = []
    for op, dur in sorted(by_op.items(), key=lambda kv: -kv[1]):
        if dur / total >= 0.005:
            print(f"{op:24} {dur / total:6.1%}")
            out.append({**base, "variant": op, "value": f"{dur / total:.3f}"})
    if mine.csv:
        save(mine, out, argv)
    return 0


def fuse_transformer(path: Path, out: Path) -> None:
    """ONNX Runtime's transformer optimiser over ``path`` (its fusions: skip layer norm, bias
    GELU, attention where the graph allows), written to ``out``."""
    from onnxruntime.transformers.optimizer import optimize_model

    model = optimize_model(str(path), model_type="vit", num_heads=0, hidden_size=0, opt_level=1)
    print("# transformer fusions:", {k: v for k, v in
                                     model.get_fused_operator_statistics().items() if v})
    model.save_model_to_file(str(out))


def session_options(mine: argparse.Namespace, args: argparse.Namespace,
                    argv: list[str] | None) -> int:
    measured, threads, path, raw, pixels_t = served_image(mine, args)
    pixels = pixels_t.numpy()
    saved = Path(tempfile.mkdtemp()) / "image.optimized.onnx"
    Variant(path, 1, threads, saved=saved)  # writes the optimised model
    fused = saved.with_name("image.fused.onnx")
    fuse_transformer(path, fused)
    variants = {
        f"as served: optimisation all, {threads} intra-op threads, sequential, no spinning":
            lambda: Variant(path, 1, threads),
        "spinning on": lambda: Variant(path, 1, threads, spin=True),
        f"parallel execution mode ({threads} inter-op threads)":
            lambda: Variant(path, 1, threads, mode="parallel"),
        "optimisation extended": lambda: Variant(path, 1, threads, level="extended"),
        "optimisation basic": lambda: Variant(path, 1, threads, level="basic"),
        "saved optimised model, loaded without optimising": lambda: Variant(
            saved, 1, threads, level="none"),
        "1 intra-op thread": lambda: Variant(path, 1, 1),
        f"{threads} sessions x 1 thread, concurrent halves of each batch":
            lambda: Variant(path, threads, 1),
        "ONNX Runtime's transformer fusions (optimize_model, vit)":
            lambda: Variant(fused, 1, threads),
    }
    engine = f"ONNX Runtime {'int8' if mine.quantize == 'int8' else 'fp32'}"
    what = (f"{args.model} image tower on CPU, {engine} session options, pre-decoded pixels, "
            f"batch {args.max_batch}, in one process")
    print(f"# session options: {what}; {args.images} images/measurement, {args.rounds} rounds, "
          f"load {os.getloadavg()[0]:.2f}", flush=True)
    base = {"date": datetime.date.today().isoformat(), "commit": measured,
            "machine": mine.machine, "note": mine.note}
    out: list[dict[str, Any]] = []
    for round_no in range(args.rounds):
        cpu = time.process_time()
        torch_rate = raw.image_rate(pixels_t, args.images, args.max_batch)
        torch_cpu = (time.process_time() - cpu) / args.images * 1000
        results = {"raw torch eager forward": (torch_rate, torch_cpu, float("nan"))}
        cpu = time.process_time()
        bf16_rate = raw.image_rate(pixels_t, args.images, args.max_batch, bf16=True)
        results["raw torch eager forward, bf16 autocast"] = (
            bf16_rate, (time.process_time() - cpu) / args.images * 1000, float("nan"))
        for name, make in variants.items():
            variant = make()
            rate, cpu_ms = variant.rate(pixels, args.images, args.max_batch)
            results[name] = (rate, cpu_ms, variant.start_s)
            del variant
        load = os.getloadavg()[0]
        for name, (rate, cpu_ms, start_s) in results.items():
            print(f"round {round_no + 1} {name:70} {rate:6.1f} images/s {cpu_ms:5.0f} CPU ms/image"
                  + ("" if start_s != start_s else f"  start {start_s:.2f}s"), flush=True)
            note = f"load {load:.2f} after the round" + (f"; {mine.note}" if mine.note else "")
            out += [{**base, "what": f"images/s, {what}", "variant": name,
                     "value": f"{rate:.1f}", "unit": "images/s", "note": note},
                    {**base, "what": f"CPU ms per image, {what}", "variant": name,
                     "value": f"{cpu_ms:.0f}", "unit": "ms", "note": note}]
            if start_s == start_s:
                out.append({**base, "what": f"session start, {what}", "variant": name,
                            "value": f"{start_s:.2f}", "unit": "s", "note": note})
    shutil.rmtree(saved.parent, ignore_errors=True)
    if mine.csv:
        save(mine, out, argv)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
