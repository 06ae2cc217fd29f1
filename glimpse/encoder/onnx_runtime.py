"""The encoder on ONNX Runtime (``ENCODER_RUNTIME``): the loaded open_clip model's two towers
exported to ONNX once, cached in the model cache folder, and served by ONNX Runtime sessions
behind the ClipEncoder interface.

The cache entry is a folder named by a hash of its key (model, weights, versions, export
options). It is written under a temporary name and renamed whole, so a process starting beside
another never sees half of it, and it is checked against its sidecar (the key and each file's
sha256) at every load, so a stale or damaged entry is rebuilt, never served. A new export
removes the entries of the same model, weights and quantisation made for other versions,
except those loaded within PRUNE_AFTER_S (a load touches the sidecar first), which another
process may be reading. Preprocessing is the torch model's own (the same PixelRecipe path), so
the same pixels go in.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib.metadata
import json
import logging
import os
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from glimpse.encoder.config import Settings
from glimpse.encoder.model import RANDOM_WEIGHTS_SEED, ClipEncoder, load_encoder
from glimpse.encoder.service import choose_threads

logger = logging.getLogger("glimpse.encoder.onnx")

OPSET = 17
# Bumped when the export itself changes (wrappers, names, axes), so older entries are rebuilt.
EXPORT_FORMAT = 1
TOWERS = ("image", "text")
_SIDECAR = "export.json"
# An entry loaded more recently than this is left alone by pruning: a process starting on an
# older version may be reading it (a load reads its files within a minute even on a busy CPU).
PRUNE_AFTER_S = 600.0


class ExportError(RuntimeError):
    """The model could not be exported to ONNX or the export could not be loaded."""


def resolve_runtime(requested: str, device: str) -> str:
    """``auto``: ONNX Runtime on a CPU, torch on CUDA (where torch's fp16 path is faster).

    On a CPU it serves fp32 unless ENCODER_ONNX_QUANTIZE=int8. int8 is faster and keeps the
    vectors (cosine at least 0.99) and the copies ranked first, but on bench_onnx.py
    --near-duplicates (bench/results/onnx_near_duplicates.csv) the relevance cutoff keeps
    fewer of the copies with int8 than with fp32 or torch, for both glimpse-tiny and ViT-B-32:
    it does not keep the near-duplicate figures, so it is an option, not the default.
    """
    if requested == "auto":
        return "onnx" if device == "cpu" else "torch"
    return requested


def weights_id(settings: Settings) -> str:
    """What the weights are: 'none' and the seed, the sha256 of a checkpoint file's bytes, or
    the hub tag."""
    pretrained = settings.pretrained.strip()
    if pretrained.lower() in ("", "none"):
        return f"none-seed{RANDOM_WEIGHTS_SEED}"
    if os.path.isfile(pretrained):
        return "sha256-" + _sha256(Path(pretrained))
    return f"tag-{pretrained}"


def cache_root(settings: Settings) -> Path:
    """The ``onnx`` folder of the model cache (ENCODER_CACHE_DIR, or open_clip's default)."""
    base = settings.cache_dir or os.path.join(os.path.expanduser("~"), ".cache", "clip")
    return Path(base) / "onnx"


def export_key(settings: Settings, quantize: str) -> dict[str, Any]:
    return {
        "format": EXPORT_FORMAT,
        "model": settings.model,
        "weights": weights_id(settings),
        "opset": OPSET,
        "quantize": quantize,
        "torch": torch.__version__,
        "open_clip": _version("open_clip_torch"),
        "onnx": _version("onnx"),
        "onnxruntime": _version("onnxruntime"),
    }


def entry_dir(settings: Settings, key: dict[str, Any]) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in settings.model)
    return cache_root(settings) / f"{safe}-{digest}"


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "absent"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


class _Tower(torch.nn.Module):
    """One tower of the open_clip model as a module of one input, for the exporter."""

    def __init__(self, model: Any, tower: str) -> None:
        super().__init__()
        self.model = model
        self.tower = tower

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.tower == "image":
            return self.model.encode_image(x)
        return self.model.encode_text(x)


def export_towers(encoder: ClipEncoder, folder: Path, quantize: str) -> None:
    """Write ``image.onnx`` and ``text.onnx`` of ``encoder`` (fp32, on the CPU) into
    ``folder``: opset 17, the batch axis dynamic; int8 dynamic quantisation with
    ``quantize='int8'``."""
    side = encoder.image_size
    examples = {
        "image": torch.zeros(2, 3, side, side),
        "text": encoder.tokenize(["a photo of a dog", "a red bicycle"]),
    }
    for tower in TOWERS:
        path = folder / f"{tower}.onnx"
        # With grad on, nn.MultiheadAttention takes its plain path: its no-grad fast path is
        # an operator the exporter does not know.
        # The exporter's warnings (advanced indexing, deprecations) are not faults here, and
        # the test suite turns warnings into errors.
        with torch.inference_mode(False), torch.enable_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                _Tower(encoder.model, tower).eval(),
                (examples[tower],),
                str(path),
                opset_version=OPSET,
                input_names=["input"],
                output_names=["features"],
                dynamic_axes={"input": {0: "batch"}, "features": {0: "batch"}},
                dynamo=False,
            )
        if quantize == "int8":
            from onnxruntime.quantization import QuantType, quantize_dynamic

            fp32 = folder / f"{tower}.fp32.onnx"
            path.rename(fp32)
            quantize_dynamic(fp32, path, weight_type=QuantType.QInt8)
            fp32.unlink()


# Compared through the export and the torch model before the export is kept.
_PROBE_TEXTS = ("a photo of a dog", "a red bicycle against a brick wall", "", "sunset")
_MIN_COSINE = {"none": 0.999, "int8": 0.99}


def check_export(encoder: ClipEncoder, folder: Path, quantize: str) -> None:
    """Raise ExportError unless the export in ``folder`` gives the torch model's vectors
    (cosine at least 0.999, 0.99 for int8) on probe images and texts."""
    side = encoder.image_size
    pixels = torch.from_numpy(
        np.random.default_rng(0).normal(0.0, 1.0, (3, 3, side, side)).astype(np.float32)
    )
    tokens = encoder.tokenize(_PROBE_TEXTS)
    image, text = (_session(folder / f"{tower}.onnx", 1) for tower in TOWERS)
    pairs = {
        "image": (encoder.encode_pixels(pixels), _run(image, pixels.numpy())),
        "text": (encoder.encode_tokens(tokens), _run(text, tokens.numpy())),
    }
    for tower, (want, got) in pairs.items():
        worst = float(np.min(np.sum(want * got, axis=1)))
        if not worst >= _MIN_COSINE[quantize]:
            raise ExportError(
                f"the {tower} tower's export disagrees with torch (cosine {worst:.4f})"
            )


def _valid(folder: Path, key: dict[str, Any]) -> str | None:
    """None when ``folder`` holds a whole export for ``key``, else what is wrong with it."""
    try:
        sidecar = json.loads((folder / _SIDECAR).read_text())
    except FileNotFoundError:
        return "no sidecar"
    except (OSError, ValueError) as exc:
        return f"unreadable sidecar ({exc})"
    if not isinstance(sidecar, dict) or sidecar.get("key") != key:
        return "made for another model, weights or versions"
    sums = sidecar.get("sha256")
    for tower in TOWERS:
        path = folder / f"{tower}.onnx"
        if not path.is_file():
            return f"{path.name} missing"
        if not isinstance(sums, dict) or _sha256(path) != sums.get(tower):
            return f"{path.name} does not match its sha256"
    return None


def _build(encoder: ClipEncoder, settings: Settings, key: dict[str, Any], final: Path) -> None:
    """Export into a temporary folder beside ``final`` and rename it into place; a damaged
    entry already there is moved aside first. If another process put a whole entry in place
    meanwhile, that one is kept."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        tmp.chmod(0o755)  # mkdtemp's 0700 would hide the entry from other users of the cache
        export_towers(encoder, tmp, key["quantize"])
        check_export(encoder, tmp, key["quantize"])
        sums = {tower: _sha256(tmp / f"{tower}.onnx") for tower in TOWERS}
        (tmp / _SIDECAR).write_text(json.dumps({"key": key, "sha256": sums}, indent=1))
        for _attempt in range(3):
            try:
                os.rename(tmp, final)
            except OSError:  # final exists: a whole entry from another process, or damage
                if _valid(final, key) is None:
                    return
                _remove(final)
                continue
            with contextlib.suppress(OSError):  # pruning is housekeeping, never a failed start
                prune(final, key)
            return
        raise ExportError(f"could not move the export into {final}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _remove(folder: Path) -> None:
    """Rename ``folder`` away first, so no reader ever sees it half deleted."""
    trash = Path(tempfile.mkdtemp(prefix=f".{folder.name}.old-", dir=folder.parent))
    with contextlib.suppress(OSError):
        os.rename(folder, trash / "entry")
    shutil.rmtree(trash, ignore_errors=True)


def prune(keep: Path, key: dict[str, Any]) -> list[Path]:
    """Remove the cache entries beside ``keep`` made for ``key``'s model, weights and
    quantisation but other versions, unless loaded in the last PRUNE_AFTER_S; the removed."""
    removed = []
    for folder in keep.parent.iterdir():
        if folder == keep or folder.name.startswith("."):
            continue
        sidecar = folder / _SIDECAR
        try:
            other = json.loads(sidecar.read_text())["key"]
            last_loaded = sidecar.stat().st_mtime
        except (OSError, ValueError, TypeError, KeyError):
            continue  # not a whole entry: a damaged one is rebuilt when its key is asked for
        if not isinstance(other, dict) or other == key or any(
                other.get(field) != key[field] for field in ("model", "weights", "quantize")):
            continue
        if time.time() - last_loaded < PRUNE_AFTER_S:
            continue
        _remove(folder)
        removed.append(folder)
        logger.info("removed %s, an ONNX export of %s for other versions", folder, key["model"])
    return removed


def _session(path: Path, threads: int) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Idle intra-op threads sleep instead of spinning: the decode threads share these cores.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def onnx_threads(settings: Settings) -> int:
    """As many as torch would use on the CPU (OMP_NUM_THREADS, else every core)."""
    return choose_threads(settings, "cpu")[0]


def load_sessions(encoder: ClipEncoder, settings: Settings) -> tuple[Any, Any, Path]:
    """The (image, text) sessions of ``encoder``'s export: from the cache when a whole entry
    for this key is there, else exported now (and cached). Raises ExportError."""
    key = export_key(settings, settings.onnx_quantize)
    final = entry_dir(settings, key)
    # Marks the entry as in use, so that a newer version's export does not prune it now.
    with contextlib.suppress(OSError):
        os.utime(final / _SIDECAR)
    problem = _valid(final, key) if final.exists() else "not cached"
    for attempt in range(2):
        if problem is not None:
            logger.info("exporting %s to ONNX into %s (%s)", settings.model, final, problem)
            try:
                _build(encoder, settings, key, final)
            except ExportError:
                raise
            except Exception as exc:  # the exporter raises anything an operator can
                raise ExportError(f"{type(exc).__name__}: {exc}") from exc
            problem = _valid(final, key)
            if problem is not None:
                raise ExportError(f"the new export in {final} is not whole: {problem}")
        threads = onnx_threads(settings)
        try:
            image, text = (_session(final / f"{tower}.onnx", threads) for tower in TOWERS)
        except Exception as exc:  # a file that hashes right but ORT refuses: rebuild once
            if attempt:
                raise ExportError(f"ONNX Runtime cannot load {final}: {exc}") from exc
            problem = f"ONNX Runtime cannot load it ({exc})"
            continue
        return image, text, final
    raise ExportError(f"ONNX Runtime cannot load {final}")  # pragma: no cover - loop returns


@dataclass(kw_only=True)
class OnnxClipEncoder(ClipEncoder):
    """A ClipEncoder whose forward passes run on ONNX Runtime sessions (fp32 or int8, CPU).

    The torch model stays for its tokenizer and preprocessing; its forward is not called.
    """

    image_session: Any
    text_session: Any
    export_dir: str
    threads: int

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32  # what the sessions take, int8 export or not

    def encode_tokens(self, tokens: torch.Tensor) -> np.ndarray:
        return _run(self.text_session, tokens.numpy())

    def encode_pixels(self, pixels: torch.Tensor) -> np.ndarray:
        return _run(self.image_session, pixels.detach().cpu().float().numpy())

    def can_decode_jpegs(self) -> bool:
        return False


def _run(session: Any, array: np.ndarray) -> np.ndarray:
    """Unit float32 rows of one tower's session on ``array`` (pixels or token ids)."""
    dtype = np.int64 if array.dtype.kind in "iu" else np.float32
    out = session.run(None, {"input": np.ascontiguousarray(array, dtype=dtype)})[0]
    out = np.asarray(out, dtype=np.float32)
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    return np.ascontiguousarray(out / np.maximum(norms, 1e-12), dtype=np.float32)


def on_runtime(encoder: ClipEncoder, settings: Settings) -> ClipEncoder:
    """``encoder`` served by the runtime settings ask for; torch (with the reason in
    ``runtime_note``) when the ONNX export fails."""
    if resolve_runtime(settings.runtime, encoder.device) != "onnx":
        return encoder
    if encoder.device != "cpu" or encoder.precision != "fp32":
        note = (f"ONNX Runtime serves fp32 on the CPU; this model runs in {encoder.precision} "
                f"on {encoder.device}")
        logger.warning("ENCODER_RUNTIME=onnx not used: %s; torch serves", note)
        return dataclasses.replace(encoder, runtime_note=note)
    try:
        image, text, folder = load_sessions(encoder, settings)
    except ExportError as exc:
        note = f"the ONNX export failed: {exc}"
        logger.warning("ONNX Runtime not used for %s: %s; torch serves", settings.model, note)
        return dataclasses.replace(encoder, runtime_note=note)
    logger.info("ONNX Runtime serves %s from %s", settings.model, folder)
    fields = {f.name: getattr(encoder, f.name) for f in dataclasses.fields(ClipEncoder)}
    # /v1/info's precision says int8 where the quantised export serves.
    precision = "int8" if settings.onnx_quantize == "int8" else encoder.precision
    fields.update(runtime="onnx", runtime_note=None, precision=precision)
    return OnnxClipEncoder(
        **fields, image_session=image, text_session=text, export_dir=str(folder),
        threads=onnx_threads(settings),
    )


def load_serving_encoder(settings: Settings) -> ClipEncoder:
    """The encoder the service runs: the model as settings say, on the runtime they say."""
    return on_runtime(load_encoder(settings), settings)
