"""The encoder service's host-side cost per image, without a GPU: CPU microseconds and images/s.

The service runs as deployed (``glimpse.encoder.main.serve``: uvicorn on uvloop, image
bodies read from the socket straight into one buffer) with its real code path (HTTP,
multipart split, the JPEG header check made when the device decodes, job bookkeeping, the
batcher, the model thread's batch assembly, base64 response encoding); ``--uvicorn
http=httptools`` measures it behind uvicorn's own protocol instead. Only the device's own work is
replaced by ``InstantDevice``, a benchmark stand-in that computes nothing:

  * the device JPEG decode + resize/crop/normalise (``ClipEncoder.prepare_jpegs``: the
    packing of the JPEG bytes, nvJPEG and the tensor kernels): it returns one one-element
    tensor per image;
  * the forward pass, its normalisation and the copy back (``encode_pixels``): it returns a
    copy of fixed unit vectors, one row per image.

It says it can decode JPEGs on its device (``can_decode_jpegs``), so the runtime takes its GPU
path: the header check, and JPEG bytes queued for the model thread. What the host does inside
``prepare_jpegs`` on a real GPU (packing the bytes, launching nvJPEG and the kernels) is not in
these figures; on a GPU, bench/gpu_bench.sh measures the whole. Against a checkout from
before the ``encoder_loader`` seam (``--repo``), the same stand-in is put in place by
assignment (see ``serve``).

A separate client process (this one) sends real camera-like 640x480 JPEGs
(``calibration_jpegs``) over HTTP/1.1 keep-alive connections, ``--clients`` requests of
``--files-per-request`` files in flight, multipart ``files`` parts, ``encoding=base64``, as the
gateway sends them. For each round it reads the service's CPU time (user + system, all its
threads, children included; not the client's) before and after, and reports images/s, CPU µs
per image, and the split by thread (event loop, model thread, the rest; read from /proc in
clock ticks of 10 ms, so use a few thousand images per round). Beside it, the same
stand-in called in-process on batches of the same size: its own raw cost per image.

    python bench/bench_host.py                       # defaults: 4096 images x 3 rounds
    python bench/bench_host.py --repo /tmp/enc-base  # the same against another checkout
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]

# -- the stand-in device (imported in the service process) ----------------------------------------


def make_instant_device(dim: int = 512, image_size: int = 224) -> Any:
    """A ClipEncoder whose device work is instant (see the module docstring)."""
    import numpy as np
    import torch

    from glimpse.encoder.model import ClipEncoder

    rng = np.random.default_rng(0)
    rows = rng.normal(size=(1024, dim)).astype(np.float32)
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)

    class InstantDevice(ClipEncoder):
        """Benchmark stand-in: the device's work (decode, preprocess, forward) takes no time.

        Its "pixels" are one-element tensors per image (torch's dispatch is paid where the
        runtime stacks or concatenates them, as it is for device tensors; no pixel data)."""

        def can_decode_jpegs(self) -> bool:
            return True

        def prepare_jpegs(self, jpegs: Any, limits: Any) -> Any:
            from glimpse.encoder.gpu_decode import PreparedBatch

            return PreparedBatch(torch.zeros((len(jpegs), 1, 1, 1)), list(range(len(jpegs))))

        def encode_pixels(self, pixels: torch.Tensor) -> np.ndarray:
            return rows[: pixels.shape[0]].copy()

        def encode_tokens(self, tokens: torch.Tensor) -> np.ndarray:
            return rows[: tokens.shape[0]].copy()

    def tokenizer(texts: Any) -> torch.Tensor:
        return torch.zeros((len(texts), 8), dtype=torch.long)

    return InstantDevice(
        name="bench-instant", pretrained="none", model=None, preprocess=lambda image: image,
        tokenizer=tokenizer, device="cpu", precision="fp32", dim=dim, image_size=image_size,
        mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
    )


def serve(port: int) -> None:
    """The service process: the app of the checkout this file is run from, with the stand-in."""
    sys.path.insert(0, os.getcwd())
    import torch
    import uvicorn

    from glimpse.encoder import main as encoder_main
    from glimpse.encoder.config import Settings

    device = make_instant_device()
    encoder_main.WARMUP = False  # the stand-in device needs no warm-up
    settings = Settings(device="cpu", gpu_decode="on")
    signal.signal(signal.SIGUSR1, _name_threads)
    if hasattr(encoder_main, "serve"):  # as deployed (python -m glimpse.encoder)
        encoder_main.serve(settings, host="127.0.0.1", port=port,
                           encoder_loader=lambda _settings: device, log_level="warning",
                           access_log=False, **_uvicorn_options())
        return
    try:
        app = encoder_main.create_app(settings, encoder_loader=lambda _settings: device)
    except TypeError:
        # A checkout from before the encoder_loader seam (1b03c81 and older): put the stand-in
        # where it loads the model, takes the device path and finds the device decoder.
        import glimpse.encoder.gpu_decode as gpu_decode
        import glimpse.encoder.service as service

        service.load_encoder = lambda _settings: device  # type: ignore[assignment]
        service.EncoderRuntime._want_gpu_decode = staticmethod(  # type: ignore[method-assign]
            lambda _settings, _encoder: True
        )
        gpu_decode.gpu_prepare = (  # type: ignore[assignment]
            lambda jpegs, _encoder, _limits: list(torch.zeros((len(jpegs), 1, 1, 1)))
        )
        app = encoder_main.create_app(settings)

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False,
                **_uvicorn_options())


def _uvicorn_options() -> dict[str, Any]:
    """uvicorn settings given with --uvicorn (e.g. http=httptools to measure without the
    direct body reads), as the service process's environment carries them."""
    return json.loads(os.environ.get("BENCH_HOST_UVICORN", "{}"))


def _name_threads(_signum: int, _frame: Any) -> None:
    # Which OS thread is which, for the parent's per-thread CPU split.
    import threading

    names = {t.native_id: t.name for t in threading.enumerate()}
    Path(os.environ["BENCH_HOST_THREADS"]).write_text(json.dumps(names))


# -- the client (this process) ---------------------------------------------------------------------


def multipart_body(jpegs: list[bytes], boundary: str) -> bytes:
    parts = []
    for i, data in enumerate(jpegs):
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="files"; '
            f'filename="{i}.jpg"\r\nContent-Type: image/jpeg\r\n\r\n'.encode() + data + b"\r\n"
        )
    return b"".join(parts) + f"--{boundary}--\r\n".encode()


def requests_to_send(jpegs: list[bytes], per_request: int, distinct: int) -> list[bytes]:
    """``distinct`` whole HTTP requests, each ``per_request`` different JPEGs."""
    out = []
    for r in range(distinct):
        files = [jpegs[(r * per_request + i) % len(jpegs)] for i in range(per_request)]
        boundary = f"glimpsebench{r:04d}{'x' * 16}"
        body = multipart_body(files, boundary)
        head = (
            f"POST /v1/embed/image?encoding=base64 HTTP/1.1\r\nHost: encoder\r\n"
            f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        out.append(head + body)
    return out


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    return status, await reader.readexactly(length)


async def send_all(port: int, requests: list[bytes], total: int, clients: int,
                   per_request: int) -> float:
    """Send ``total // per_request`` requests over ``clients`` connections; images/s."""
    count = total // per_request
    taken = 0

    async def one_client(conn: int) -> None:
        nonlocal taken
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 22)
        try:
            while taken < count:
                request = requests[taken % len(requests)]
                taken += 1
                writer.write(request)
                status, body = await _read_response(reader)
                if status != 200:
                    raise RuntimeError(f"HTTP {status}: {body[:300]!r}")
                answer = json.loads(body)
                if len(answer["embeddings"]) != per_request or any(answer["errors"]):
                    raise RuntimeError(f"unexpected answer: {body[:300]!r}")
        finally:
            writer.close()

    begin = time.perf_counter()
    await asyncio.gather(*(one_client(c) for c in range(clients)))
    return count * per_request / (time.perf_counter() - begin)


def thread_times(pid: int) -> dict[int, float]:
    """CPU seconds (user + system) of each thread of ``pid``, from /proc."""
    ticks = os.sysconf("SC_CLK_TCK")
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            fields = Path(f"/proc/{pid}/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        out[int(tid)] = (int(fields[11]) + int(fields[12])) / ticks
    return out


def process_cpu(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of ``pid`` and its children."""
    import psutil

    proc = psutil.Process(pid)
    user = system = 0.0
    for p in [proc, *proc.children(recursive=True)]:
        t = p.cpu_times()
        user, system = user + t.user, system + t.system
    return user, system


def raw_stand_in_cost(per_batch: int, batches: int) -> float:
    """CPU µs per image of the stand-in itself, called in-process as the model thread calls
    it: the device decode and the forward on one batch."""
    device = make_instant_device()
    jpegs = [b""] * per_batch
    started = time.thread_time()
    for _ in range(batches):
        prepared = device.prepare_jpegs(jpegs, None)
        device.encode_pixels(prepared.pixels)
    return (time.thread_time() - started) / (per_batch * batches) * 1e6


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--repo", type=Path, default=REPO, help="checkout whose service is measured")
    p.add_argument("--images", type=int, default=4096, help="images per round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--clients", type=int, default=16, help="requests in flight")
    p.add_argument("--files-per-request", type=int, default=32)
    p.add_argument("--distinct", type=int, default=256, help="distinct JPEGs")
    p.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                   help="extra environment of the service (e.g. ENCODER_DECODE_WORKERS=2)")
    p.add_argument("--uvicorn", action="append", default=[], metavar="NAME=VALUE",
                   help="a uvicorn setting of the service (e.g. http=httptools: uvicorn's own "
                   "protocol instead of the direct body reads of glimpse.encoder.main.serve)")
    p.add_argument("--py-spy", type=Path, metavar="OUT",
                   help="sample the service with py-spy during round 1 (raw stacks to OUT)")
    p.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.serve:
        serve(args.serve)
        return 0
    sys.path.insert(0, str(REPO))
    from glimpse.encoder.service import calibration_jpegs

    jpegs = calibration_jpegs(args.distinct)
    requests = requests_to_send(jpegs, args.files_per_request,
                                max(1, args.distinct // args.files_per_request))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    names_file = Path(f"/tmp/bench_host_threads_{os.getpid()}.json")
    env = {**os.environ, "BENCH_HOST_THREADS": str(names_file), "PYTHONUNBUFFERED": "1",
           # What the service picks on CUDA (choose_threads); the stand-in reports "cpu".
           "ENCODER_DECODE_WORKERS": str(max(2, min(16, os.cpu_count() or 1)))}
    env.update(dict(item.split("=", 1) for item in args.env))
    env["BENCH_HOST_UVICORN"] = json.dumps(dict(item.split("=", 1) for item in args.uvicorn))
    proc = subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), "--serve", str(port)],
        cwd=args.repo, env=env,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the service did not start") from None
                time.sleep(0.2)
        commit = subprocess.run(["git", "-C", str(args.repo), "rev-parse", "--short", "HEAD"],
                                capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(args.repo), "status", "--porcelain",
                                "glimpse.encoder", "contracts"],
                               capture_output=True, text=True).stdout.strip()
        print(f"# bench_host: {args.repo} at {commit}{' + uncommitted changes' if dirty else ''}; "
              f"cpus {os.cpu_count()}, load {os.getloadavg()[0]:.1f}; {args.images} images x "
              f"{args.rounds} rounds, {args.clients} clients x {args.files_per_request} files, "
              f"{len(jpegs)} distinct 640x480 JPEGs, mean "
              f"{sum(map(len, jpegs)) / len(jpegs) / 1024:.0f} KiB; extra env {args.env}"
              f"{f', uvicorn {args.uvicorn}' if args.uvicorn else ''}",
              flush=True)
        # Warm-up, as many images as a round: the pool's threads start, first-call costs are
        # paid, the allocator settles. With a warm-up of 2 requests per client (1,024 images)
        # round 1 measured 93-107 µs against 78-95 for rounds 2 and 3 (six runs at 2fc82d1).
        asyncio.run(send_all(port, requests, max(args.images, args.clients
                                                 * args.files_per_request * 2),
                             args.clients, args.files_per_request))
        proc.send_signal(signal.SIGUSR1)
        time.sleep(0.5)
        names = {int(k): v for k, v in json.loads(names_file.read_text()).items()}
        for round_no in range(1, args.rounds + 1):
            raw_us = raw_stand_in_cost(args.files_per_request, 200)
            spy = None
            if args.py_spy and round_no == 1:
                spy = subprocess.Popen(
                    [str(Path(sys.executable).with_name("py-spy")), "record", "-p",
                     str(proc.pid), "-r", "200", "--threads", "--nonblocking", "--format", "raw",
                     "-o", str(args.py_spy)], stdout=subprocess.DEVNULL)
                time.sleep(1)
            cpu0, threads0 = process_cpu(proc.pid), thread_times(proc.pid)
            rate = asyncio.run(send_all(port, requests, args.images, args.clients,
                                        args.files_per_request))
            cpu1, threads1 = process_cpu(proc.pid), thread_times(proc.pid)
            if spy is not None:
                spy.send_signal(signal.SIGINT)
                spy.wait(30)
            done = args.images // args.files_per_request * args.files_per_request
            split: dict[str, float] = {}
            for tid, t in threads1.items():
                name = "loop" if tid == proc.pid else names.get(tid, "other")
                name = "model" if name == "glimpse-model" else name
                name = "pool" if name.startswith("glimpse-decode") else name
                name = name if name in ("loop", "model", "pool") else "other"
                split[name] = split.get(name, 0.0) + (t - threads0.get(tid, 0.0)) / done * 1e6
            print(f"round {round_no}: service {rate:7.0f} images/s, "
                  f"{(sum(cpu1) - sum(cpu0)) / done * 1e6:5.0f} µs CPU/image (system "
                  f"{(cpu1[1] - cpu0[1]) / done * 1e6:.0f}; by thread: loop "
                  f"{split.get('loop', 0):.0f}, model {split.get('model', 0):.0f}, pool "
                  f"{split.get('pool', 0):.0f}, other {split.get('other', 0):.0f})"
                  f" | stand-in in-process {raw_us:5.1f} µs/image | load "
                  f"{os.getloadavg()[0]:.1f}", flush=True)
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
        names_file.unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
