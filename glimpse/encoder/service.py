"""The encoder at run time: model, model thread (batcher), decode pool and text cache, and the
two async operations the API offers (embed texts, embed image files).

Built in the app's lifespan and kept on ``app.state.runtime``; a second model served beside the
first (``add_model``) is another runtime sharing its decode pool.

One file, over 400 lines: the model thread's batches, the decode pool's jobs and the text cache
share the runtime's state and its one model thread; split, each part would reach into the others.
"""

from __future__ import annotations

import asyncio
import functools
import io
import itertools
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, NamedTuple

import numpy as np
import torch
from PIL import Image
from prometheus_client import CollectorRegistry, Counter, Histogram

from glimpse.contracts.errors import ErrorType, GlimpseError
from glimpse.encoder.batching import Batcher, BatchMetrics, BatchResult, Kind
from glimpse.encoder.config import Settings
from glimpse.encoder.images import (
    ImageBytes,
    ImageLimits,
    PixelRecipe,
    gpu_decodable_jpeg,
    plain_jpeg,
    prepare_pixels,
)
from glimpse.encoder.model import ClipEncoder, ModelLoadError, load_encoder
from glimpse.encoder.presets import resolve as resolve_preset
from glimpse.imaging import decoder_errors, load_upright, open_checked, orientation, to_rgb

logger = logging.getLogger("glimpse.encoder")

# Inputs waiting for the model before a request gets 429: a longer queue only makes clients
# wait longer before they hear that the encoder is full.
MAX_QUEUE = 4096
# Most time the first input of a batch waits for company while other requests are still being
# decoded: enough for concurrent decodes to join, little next to a forward pass.
MAX_WAIT_MS = 5.0
# Models served beside the configured one: a migration needs one; a second leaves room to
# migrate again before a restart.
MAX_EXTRA_MODELS = 2


# EXIF orientations that turn the picture a quarter: its width is shown as its height.
_QUARTER_TURNS = frozenset((5, 6, 7, 8))


class GpuJpeg(NamedTuple):
    """An image payload left as JPEG bytes for the device decoder (see gpu_decode.py)."""

    data: ImageBytes


class _ImageJob:
    """The files of one embed_images call on their way to the model: one result slot each,
    one asyncio future for the whole request.

    Files travel in runs (one batcher future per run, settled from the model thread); the
    future is resolved on the event loop once, when the last slot is settled or when the
    request fails (``fail``) or is cancelled.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, count: int, errors: Counter) -> None:
        self.loop = loop
        self.done: asyncio.Future[list[np.ndarray | GlimpseError]] = loop.create_future()
        self.results: list[np.ndarray | GlimpseError | None] = [None] * count
        # Each file's displayed (width, height), set where it is read: on the loop for a
        # plain JPEG, in the decode pool for the rest.
        self.sizes: list[tuple[int, int] | None] = [None] * count
        self._left = count
        self._errors = errors
        self._lock = threading.Lock()
        self._queued: list[Future[Any]] = []
        self.finished = False

    def _resolve(self, error: BaseException | None) -> None:
        if self.done.done():
            return
        if error is not None:
            self.done.set_exception(error)
        else:
            self.done.set_result(self.results)  # type: ignore[arg-type]  # every slot is set

    def settle(self, slots: Sequence[int], results: Sequence[np.ndarray | GlimpseError]) -> None:
        with self._lock:
            if self.finished:
                return
            for slot, result in zip(slots, results, strict=True):
                self.results[slot] = result
            self._left -= len(slots)
            if self._left:
                return
            self.finished = True
        self.loop.call_soon_threadsafe(self._resolve, None)

    def fail(self, error: BaseException) -> None:
        """The whole request fails with ``error`` (as an exception out of embed_images)."""
        if self.cancel():
            self.loop.call_soon_threadsafe(self._resolve, error)

    def cancel(self) -> bool:
        """Stop the job: its runs still queued for the model are cancelled. True if it was
        still running."""
        with self._lock:
            running = not self.finished
            self.finished = True
            queued = list(self._queued)
        for future in queued:
            future.cancel()
        return running

    def track(self, slots: Sequence[int], future: Future[list[Any]]) -> None:
        """``future`` (a batcher run) answers ``slots``."""
        with self._lock:
            self._queued.append(future)
            finished = self.finished
        if finished:  # failed or cancelled while this run was being prepared
            future.cancel()
        future.add_done_callback(functools.partial(self._on_run_done, slots))

    def _on_run_done(self, slots: Sequence[int], future: Future[list[Any]]) -> None:
        if future.cancelled():
            return
        error = future.exception()
        if error is not None:  # the forward pass failed (or shutdown): the request gets it
            self.fail(error)
            return
        results = future.result()
        for result in results:
            if isinstance(result, GlimpseError):  # a file only the device decoder read whole
                self._errors.labels(result.error_type).inc()
            elif isinstance(result, BaseException):  # not a verdict on the file: answer 500
                self.fail(result)
                return
        self.settle(slots, results)


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def calibration_jpegs(count: int, size: tuple[int, int] = (640, 480)) -> list[bytes]:
    """``count`` different camera-like JPEGs (smooth shading plus sensor-like noise, quality
    90: about as costly to decode as photos of that size), made without any data files."""
    rng = np.random.default_rng(0)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.stack([xx / w * 255, yy / h * 255, (xx + yy) / (w + h) * 255], axis=-1)
    out = []
    for i in range(count):
        noisy = np.roll(base, 37 * i, axis=1) + rng.normal(0, 12, (h, w, 3))
        buf = io.BytesIO()
        Image.fromarray(noisy.clip(0, 255).astype(np.uint8)).save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def choose_threads(settings: Settings, device: str) -> tuple[int, int]:
    """(torch intra-op threads, decode workers).

    On a CPU the forward pass and decoding share the cores. Measured with
    bench/bench_encoder.py on 2 cores (docs/encoder.md): torch on every core plus ONE decode
    thread beats splitting the cores; PIL's decoding mostly fits in the gaps between and
    inside the model's parallel regions. On a GPU the cores only decode.
    """
    cores = cpu_count()
    # OpenMP's own variable, as torch itself reads it, so one setting bounds torch and Faiss.
    omp = os.environ.get("OMP_NUM_THREADS", "")
    torch_threads = int(omp) if omp.isdigit() and int(omp) > 0 else cores
    if settings.decode_workers:
        workers = settings.decode_workers
    elif device == "cuda":
        workers = max(2, min(16, cores))
    else:
        workers = max(1, cores // 2)
    return torch_threads, workers


class EncoderRuntime:
    """Owns the model, its thread, the decode pool and the text cache."""

    def __init__(
        self,
        settings: Settings,
        encoder: ClipEncoder,
        registry: CollectorRegistry,
        pool: ThreadPoolExecutor | None = None,
    ):
        self.settings = settings
        self.encoder = encoder
        self.limits = ImageLimits(settings.max_file_bytes, settings.max_pixels)
        torch_threads, workers = choose_threads(settings, encoder.device)
        if encoder.device == "cpu":
            torch.set_num_threads(torch_threads)
        self.torch_threads = torch_threads
        self.decode_workers = workers
        # PIL decoding blocks; it runs in this pool so the event loop stays free and decoding
        # overlaps the model's forward pass.
        self._own_pool = pool is None  # a second model shares its first model's pool
        self.pool = pool or ThreadPoolExecutor(workers, thread_name_prefix="glimpse-decode")
        self.preprocess = PixelRecipe.of(encoder.preprocess) or encoder.preprocess
        self.gpu_decode = self._want_gpu_decode(settings, encoder)
        self._staging: torch.Tensor | None = None  # the model thread's last JPEG buffer
        # Images/s of each JPEG decoder as measured at warm-up (choose_decoder), when it ran.
        self.decode_rates: dict[str, float] | None = None
        self.batcher = Batcher(
            self._run_batch,
            max_batch=settings.max_batch,
            max_wait_s=MAX_WAIT_MS / 1000.0,
            max_queue=MAX_QUEUE,
            metrics=BatchMetrics(registry),
        )
        self._text_cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self.cache_hits = Counter(
            "glimpse_encoder_text_cache_hits_total", "Texts answered from the cache.",
            registry=registry,
        )
        self.cache_misses = Counter(
            "glimpse_encoder_text_cache_misses_total", "Texts that needed a forward pass.",
            registry=registry,
        )
        self.image_errors = Counter(
            "glimpse_encoder_image_errors_total", "Image files refused, by error type.",
            ["error_type"], registry=registry,
        )
        self.decode_seconds = Histogram(
            "glimpse_encoder_decode_seconds", "Decode and preprocess time of one image file.",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0),
            registry=registry,
        )
        self.warmed_up = False
        # Models served beside this one, by name (add_model); requests name one with ?model=.
        self.extra: dict[str, EncoderRuntime] = {}
        self._adding = asyncio.Lock()

    @classmethod
    def load(
        cls,
        settings: Settings,
        registry: CollectorRegistry,
        loader: Callable[[Settings], ClipEncoder] = load_encoder,
    ) -> EncoderRuntime:
        """Load the model (blocking: call it off the event loop) and start the model thread."""
        runtime = cls(settings, loader(settings), registry)
        runtime.batcher.start()
        return runtime

    @staticmethod
    def _want_gpu_decode(settings: Settings, encoder: ClipEncoder) -> bool:
        return settings.gpu_decode != "off" and encoder.can_decode_jpegs()

    def close(self) -> None:
        for extra in self.extra.values():
            extra.close()
        self.batcher.stop()
        if self._own_pool:
            self.pool.shutdown(wait=True, cancel_futures=True)

    # -- more than one model ------------------------------------------------------------------

    def served(self, name: str | None) -> EncoderRuntime:
        """The runtime of model ``name`` (None: the configured one); 422 if it is not loaded."""
        if name is None or name == self.encoder.name:
            return self
        extra = self.extra.get(name)
        if extra is None:
            loaded = [self.encoder.name, *self.extra]
            raise GlimpseError(
                ErrorType.validation_error,
                f"Model {name!r} is not loaded here (loaded: {', '.join(loaded)}); load it "
                "with POST /v1/models.",
                {"model": name, "loaded": loaded},
            )
        return extra

    async def add_model(
        self, model: str, pretrained: str | None, loader: Callable[[Settings], ClipEncoder]
    ) -> EncoderRuntime:
        """Serve ``model`` (a preset or an open_clip name) beside the configured one, on its
        own model thread and this decode pool; loading one already served returns it."""
        name, weights = resolve_preset(model, pretrained)
        if weights is None:
            raise GlimpseError(
                ErrorType.validation_error,
                f"Model {model!r} is not a preset, so it needs 'pretrained' (an open_clip tag, "
                "a checkpoint path, or 'none').",
            )
        async with self._adding:  # two requests for one model load it once
            known = self if name == self.encoder.name else self.extra.get(name)
            if known is not None:
                if known.encoder.pretrained != weights:
                    raise GlimpseError(
                        ErrorType.conflict,
                        f"Model {name!r} is served already with weights "
                        f"{known.encoder.pretrained!r}, not {weights!r}.",
                    )
                return known
            if len(self.extra) >= MAX_EXTRA_MODELS:
                raise GlimpseError(
                    ErrorType.conflict,
                    f"This encoder serves {MAX_EXTRA_MODELS + 1} models already "
                    f"({', '.join([self.encoder.name, *self.extra])}); restart it to load "
                    "another.",
                )
            settings = self.settings.model_copy(update={"model": name, "pretrained": weights})
            try:
                encoder = await asyncio.to_thread(loader, settings)
            except ModelLoadError as exc:
                raise GlimpseError(
                    ErrorType.validation_error, str(exc), {"model": model}
                ) from None
            # Its metrics on a registry of its own: the app's names are the first model's.
            extra = EncoderRuntime(settings, encoder, CollectorRegistry(), pool=self.pool)
            extra.gpu_decode = self.gpu_decode and extra.gpu_decode
            extra.batcher.start()
            try:
                await extra.embed_texts(["a photo of a warm-up"])
            except BaseException:
                extra.close()
                raise
            extra._text_cache.clear()
            extra.warmed_up = True
            self.extra[name] = extra
            logger.info("serving a second model: %s (%s), dim %d", name, weights,
                        encoder.dim)
            return extra

    def models(self) -> list[dict[str, Any]]:
        """Every model served, the configured one first."""
        return [
            {"model": r.encoder.name, "pretrained": r.encoder.pretrained, "dim": r.encoder.dim,
             "image_size": r.encoder.image_size, "default": r is self}
            for r in (self, *self.extra.values())
        ]

    # -- the model thread ---------------------------------------------------------------------

    def _run_batch(self, kind: Kind, payloads: list[Any]) -> BatchResult:
        if kind == "text":
            return list(self.encoder.encode_texts(payloads))
        # Per batch, not per image: one device decode call for the JPEGs, one stack for the
        # tensors the pool made, one forward pass, one vector row per slot.
        results: list[np.ndarray | BaseException | None] = [None] * len(payloads)
        jpeg_slots = [i for i, p in enumerate(payloads) if type(p) is GpuJpeg]
        tensor_slots = [i for i, p in enumerate(payloads) if isinstance(p, torch.Tensor)]
        pieces: list[torch.Tensor] = []
        order: list[int] = []  # the slot of each row of the stacked input
        if jpeg_slots:
            prepared = self.encoder.prepare_jpegs(
                [payloads[i].data for i in jpeg_slots], self.limits
            )
            # Kept until the next batch has been prepared (PreparedBatch.staging says why).
            self._staging = prepared.staging
            for index, error in prepared.errors.items():
                results[jpeg_slots[index]] = error
            if prepared.pixels is not None:
                pieces.append(prepared.pixels)
                order += [jpeg_slots[row] for row in prepared.rows]
        if tensor_slots:
            stacked = torch.stack([payloads[i] for i in tensor_slots])
            pieces.append(stacked.to(self.encoder.device, non_blocking=True))
            order += tensor_slots
        if len(jpeg_slots) + len(tensor_slots) != len(payloads):
            raise TypeError("an image payload is neither a GpuJpeg nor a tensor")
        if pieces:
            pixels = pieces[0] if len(pieces) == 1 else torch.cat(pieces)
            vectors = self.encoder.encode_pixels(pixels)
            for row, slot in enumerate(order):
                results[slot] = vectors[row]
        return results  # type: ignore[return-value]  # every slot is set

    # -- async operations ---------------------------------------------------------------------

    async def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Unit vectors (len(texts), dim); repeated and cached texts skip the model."""
        cache_size = self.settings.text_cache_size
        found: dict[str, np.ndarray] = {}
        for text in texts:
            if text in found:
                continue
            cached = self._text_cache.get(text)
            if cached is not None:
                self._text_cache.move_to_end(text)
                found[text] = cached
        missing = list(dict.fromkeys(t for t in texts if t not in found))
        self.cache_hits.inc(len(texts) - len(missing))
        self.cache_misses.inc(len(missing))
        if missing:
            futures = self.batcher.submit("text", missing)
            vectors = await asyncio.gather(*(asyncio.wrap_future(f) for f in futures))
            for text, vector in zip(missing, vectors, strict=True):
                vector.setflags(write=False)
                found[text] = vector
                if cache_size:
                    self._text_cache[text] = vector
                    self._text_cache.move_to_end(text)
            while len(self._text_cache) > cache_size:
                self._text_cache.popitem(last=False)
        return np.stack([found[t] for t in texts]).astype(np.float32, copy=False)

    def _prepare_image(self, data: ImageBytes) -> tuple[torch.Tensor | GpuJpeg, tuple[int, int]]:
        """The model's input of one file and the file's displayed (width, height); runs in the
        decode pool. The CPU path is prepare_pixels, keeping the size on the way."""
        with self.decode_seconds.time():
            if self.gpu_decode:
                header = gpu_decodable_jpeg(data, self.limits)
                if header is not None:  # upright: the size as stored is the size shown
                    return GpuJpeg(data), (header.width, header.height)
            img = open_checked(data, self.limits)
            width, height = img.size  # read now: a JPEG's reduced decoding changes img.size
            side = self.encoder.image_size
            small = load_upright(img, (side, side))
            if orientation(img) in _QUARTER_TURNS:
                width, height = height, width
            with decoder_errors(img):
                rgb = to_rgb(small)
            return self.preprocess(rgb), (width, height)

    def _prepare_chunk(
        self, job: _ImageJob, files: Sequence[ImageBytes], slots: Sequence[int]
    ) -> None:
        """In the decode pool: prepare each file of ``slots`` and queue it for the model as
        soon as it is ready (so the model overlaps the decoding of the rest)."""
        for slot in slots:
            if job.finished:  # the request failed or went away: nothing more to queue
                self.batcher.announce(-1)
                continue
            try:
                payload, job.sizes[slot] = self._prepare_image(files[slot])
            except Exception as exc:  # noqa: BLE001 - one file's failure is that file's answer
                self.batcher.announce(-1)
                error = exc if isinstance(exc, GlimpseError) else _undecodable(exc)
                self.image_errors.labels(error.error_type).inc()
                job.settle([slot], [error])
                continue
            except BaseException as exc:
                self.batcher.announce(-1)
                job.fail(exc)
                continue
            try:
                future = self.batcher.submit_run("image", [payload], announced=True)
            except GlimpseError as exc:  # overloaded or shutting down: the request gets it
                job.fail(exc)
                continue
            job.track([slot], future)

    async def embed_images(
        self, files: Sequence[ImageBytes], sizes: list[tuple[int, int] | None] | None = None
    ) -> list[np.ndarray | GlimpseError]:
        """One unit vector or one error per file, in order; decoding overlaps the model. With
        ``sizes``, it is filled with each file's displayed (width, height) (as its EXIF
        orientation turns it), None for a file that could not be read.

        The event loop's share is one job per request. When the device decodes, the loop reads
        each JPEG's header itself (jpeg_header.py: cheaper than handing the file to a thread,
        bench/bench_host.py) and queues the plain ones as runs of up to max_batch files; the
        model thread answers each run at once. Other files go to the decode pool in at most
        ``decode_workers`` chunks. (Per file, an executor call, a task, a future and two
        thread-safe wake-ups cost more than everything else the service did per image,
        measured with an instant stand-in for the device: docs/encoder.md.)
        """
        if not files:
            return []
        job = _ImageJob(asyncio.get_running_loop(), len(files), self.image_errors)
        if self.gpu_decode:
            plain: list[int] = []
            to_pool: list[int] = []
            for i, data in enumerate(files):
                header = plain_jpeg(data, self.limits)
                if header is None:
                    to_pool.append(i)
                else:  # upright: the size as stored is the size shown
                    plain.append(i)
                    job.sizes[i] = (header.width, header.height)
        else:
            plain, to_pool = [], list(range(len(files)))
        self.batcher.announce(len(to_pool))
        parts = min(len(to_pool), self.decode_workers)
        bounds = [len(to_pool) * i // parts for i in range(parts + 1)] if parts else [0]
        submitted = 0
        try:
            step = self.batcher.max_batch
            for lo in range(0, len(plain), step):
                run = plain[lo:lo + step]
                job.track(run, self.batcher.submit_run(
                    "image", [GpuJpeg(files[i]) for i in run]
                ))
            for lo, hi in itertools.pairwise(bounds):
                self.pool.submit(self._prepare_chunk, job, files, to_pool[lo:hi])
                submitted = hi
            results = await job.done
        except BaseException:
            job.cancel()  # queued runs are skipped; chunks not yet started stop early
            self.batcher.announce(-(len(to_pool) - submitted))
            raise
        if sizes is not None:
            sizes[:] = [
                None if isinstance(r, GlimpseError) else size
                for r, size in zip(results, job.sizes, strict=True)
            ]
        return results

    def time_decoders(self, count: int = 64) -> tuple[float, float]:
        """Images/s of the two ways to turn ``count`` camera-like 640x480 JPEGs into model
        inputs: the CPU pool (all its threads) and the device decoder (in one thread, as the
        model thread runs it); each the better of two passes, the first also warming it up."""
        from glimpse.encoder.gpu_decode import gpu_prepare

        blobs = calibration_jpegs(count)
        size = self.encoder.image_size

        def cpu_pass() -> None:
            list(self.pool.map(lambda b: prepare_pixels(b, self.limits, size, self.preprocess),
                               blobs))

        def device_pass() -> None:
            gpu_prepare(blobs, self.encoder, self.limits)
            if self.encoder.device == "cuda":
                torch.cuda.synchronize()

        rates = []
        for one_pass in (cpu_pass, device_pass):
            best = float("inf")
            for _ in range(2):
                started = time.perf_counter()
                one_pass()
                best = min(best, time.perf_counter() - started)
            rates.append(count / best)
        return rates[0], rates[1]

    def choose_decoder(self) -> None:
        """On CUDA, time both JPEG decoders (reported in /v1/info); with ``gpu_decode=auto``
        keep the device decoder only if it is measured faster than the CPU pool here. Which one
        wins depends on the host, so it is measured (on an H200 with 16 cores: device
        7,700-8,900 images/s, CPU pool 1,050-1,280; docs/encoder.md)."""
        if not self.gpu_decode:
            return
        try:
            cpu_rate, device_rate = self.time_decoders()
        except Exception:  # noqa: BLE001 - a decoder that fails here must not keep us unready
            logger.exception("timing the JPEG decoders failed; decoding on the CPU pool")
            self.gpu_decode = False
            return
        self.decode_rates = {"cpu_pool": round(cpu_rate, 1), "device": round(device_rate, 1)}
        if self.settings.gpu_decode == "auto":  # "on" keeps the device decoder (timed all the same)
            self.gpu_decode = device_rate > cpu_rate
        logger.info(
            "JPEG decoding: CPU pool (%d threads) %.0f images/s, device %.0f images/s: using %s",
            self.decode_workers, cpu_rate, device_rate, "the device" if self.gpu_decode else
            "the CPU pool",
        )

    async def warm_up(self) -> None:
        """One text and one image through the whole path, so the first request is not slow;
        on CUDA, the JPEG decoder is chosen by measuring both (``choose_decoder``)."""
        await asyncio.get_running_loop().run_in_executor(None, self.choose_decoder)
        await self.embed_texts(["a photo of a warm-up"])
        self._text_cache.clear()
        buf = io.BytesIO()
        size = self.encoder.image_size
        Image.new("RGB", (2 * size, size), (128, 96, 64)).save(buf, format="JPEG")
        (result,) = await self.embed_images([buf.getvalue()])
        if isinstance(result, GlimpseError):
            raise RuntimeError(f"warm-up image failed: {result.message}")
        self.warmed_up = True

    def info(self) -> dict[str, Any]:
        enc = self.encoder
        return {
            "model": enc.name,
            "pretrained": enc.pretrained,
            "dim": enc.dim,
            "device": enc.device,
            "precision": enc.precision,
            "runtime": enc.runtime,
            "runtime_note": enc.runtime_note,
            "image_size": enc.image_size,
            "max_batch": self.settings.max_batch,
            "max_wait_ms": MAX_WAIT_MS,
        }


def _undecodable(exc: Exception) -> GlimpseError:
    """An error decode_image did not turn into a GlimpseError is still this file's alone."""
    logger.error("preparing an image raised %s", type(exc).__name__, exc_info=exc)
    return GlimpseError(
        ErrorType.invalid_image,
        f"The image could not be prepared: {type(exc).__name__}: {exc}",
    )


def not_ready() -> GlimpseError:
    return GlimpseError(
        ErrorType.not_ready, "The encoder is still loading or warming up its model."
    )
