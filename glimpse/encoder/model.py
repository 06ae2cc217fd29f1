"""The CLIP model: loading it (hub tag, local checkpoint or seeded random weights) and the
forward passes that turn token ids or pixel tensors into unit float32 vectors.

Everything here is blocking torch work; the service calls it from its single model thread
(see batching.py), never from the event loop.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from PIL import Image
from timm.utils import reparameterize_model

from glimpse.encoder.config import Settings
from glimpse.encoder.images import ImageBytes, ImageLimits
from glimpse.encoder.presets import PRESETS
from glimpse.encoder.text_graphs import TextGraphs, try_capture

if TYPE_CHECKING:
    from glimpse.encoder.gpu_decode import PreparedBatch

logger = logging.getLogger("glimpse.encoder.model")

TINY_MODEL = "glimpse-tiny"
# Seed of the random weights (ENCODER_PRETRAINED=none): they serve tests and demos, which only
# need the same weights on every start, never other ones.
RANDOM_WEIGHTS_SEED = 0
_CONFIG_DIR = Path(__file__).resolve().parent / "model_configs"
_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
_CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")
# Compared through the captured text graphs and the eager model before the graphs are used.
_GRAPH_PROBE_TEXTS = ("a photo of a dog", "a red bicycle against a brick wall", "", "sunset")


class ModelLoadError(RuntimeError):
    """The model or its weights cannot be had; the message says what to set instead."""


def register_model_configs() -> None:
    """Make the model configs shipped with this package (``glimpse-tiny``) known to open_clip."""
    if TINY_MODEL not in open_clip.list_models():
        open_clip.add_model_config(_CONFIG_DIR)


def resolve_device(requested: str) -> str:
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(
            "ENCODER_DEVICE=cuda but torch sees no CUDA device; set ENCODER_DEVICE=cpu (or auto), "
            "or run the GPU image with the NVIDIA runtime."
        )
    return requested


def resolve_precision(requested: str, device: str) -> str:
    if requested == "auto":
        return "fp16" if device == "cuda" else "fp32"
    return requested


def _looks_like_path(value: str) -> bool:
    return os.sep in value or value.startswith(".") or value.endswith(_CHECKPOINT_SUFFIXES)


def _load_error(settings: Settings, exc: BaseException | None) -> ModelLoadError:
    """A sentence that names the model, the weights, and what to set instead."""
    name, pretrained = settings.model, settings.pretrained
    if _looks_like_path(pretrained):
        why = (
            f"the checkpoint file {pretrained!r} does not exist"
            if not os.path.isfile(pretrained)
            else f"the checkpoint file {pretrained!r} could not be loaded ({exc})"
        )
        return ModelLoadError(
            f"Cannot load weights for model {name!r}: {why}. Set ENCODER_PRETRAINED to the path "
            f"of a readable open_clip checkpoint for {name!r}{_tags_hint(name)}, "
            "or to 'none' for random weights."
        )
    tags = open_clip.list_pretrained_tags_by_model(name)
    if pretrained not in tags:
        return ModelLoadError(
            f"Model {name!r} has no pretrained tag {pretrained!r} (known tags: "
            f"{', '.join(tags) or 'none'}). Set ENCODER_PRETRAINED to one of them, to the path "
            "of a local checkpoint, or to 'none' for random weights."
        )
    return ModelLoadError(
        f"Cannot get the weights {pretrained!r} of model {name!r} from the model hub ({exc}). "
        "Without network access, download the checkpoint elsewhere and set ENCODER_PRETRAINED "
        "to its local path, or set ENCODER_CACHE_DIR to a cache that already holds it, or set "
        "ENCODER_PRETRAINED=none for random weights (tests and smoke runs only)."
    )


def _tags_hint(name: str) -> str:
    tags = open_clip.list_pretrained_tags_by_model(name)
    return f", to a pretrained tag such as {tags[0]!r}" if tags else ""


@dataclass
class ClipEncoder:
    """A loaded open_clip model with its preprocessing and tokenizer, on one device."""

    name: str
    pretrained: str
    model: Any
    preprocess: Callable[[Image.Image], torch.Tensor]
    tokenizer: Callable[[Sequence[str]], torch.Tensor]
    device: str
    precision: str
    dim: int
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    # The text tower as CUDA graphs (text_graphs.py); None runs it eagerly.
    text_graphs: TextGraphs | None = None
    # Which runtime runs the forward passes (onnx_runtime.py), and why torch when ONNX Runtime
    # was asked for but cannot serve.
    runtime: str = "torch"
    runtime_note: str | None = None

    @property
    def dtype(self) -> torch.dtype:
        return _DTYPES[self.precision]

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        return self.tokenizer(list(texts))

    def encode_tokens(self, tokens: torch.Tensor) -> np.ndarray:
        with torch.inference_mode():
            features = self.text_graphs.run(tokens) if self.text_graphs is not None else None
            if features is None:
                features = self.model.encode_text(tokens.to(self.device, non_blocking=True))
            return _unit_rows(features)

    def encode_pixels(self, pixels: torch.Tensor) -> np.ndarray:
        """Unit vectors of preprocessed images (N, 3, S, S), on any device and dtype."""
        with torch.inference_mode():
            pixels = pixels.to(self.device, dtype=self.dtype, non_blocking=True)
            features = self.model.encode_image(pixels)
            return _unit_rows(features)

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        return self.encode_tokens(self.tokenize(texts))

    def can_decode_jpegs(self) -> bool:
        """Whether :meth:`prepare_jpegs` can turn JPEG bytes into model inputs on the device
        (CUDA, and preprocessing the device path reproduces)."""
        from glimpse.encoder.gpu_decode import supports_gpu_preprocessing

        return supports_gpu_preprocessing(self)

    def prepare_jpegs(self, jpegs: Sequence[ImageBytes], limits: ImageLimits) -> PreparedBatch:
        """Model inputs of ``jpegs`` decoded and preprocessed on the device, as one tensor."""
        from glimpse.encoder.gpu_decode import gpu_prepare_batch

        return gpu_prepare_batch(jpegs, self, limits)


def _unit_rows(features: torch.Tensor) -> np.ndarray:
    # Normalise in float32 on the device, then once more in numpy: fp16 features normalised in
    # fp16 would miss the 1 ± 1e-5 norm promise, and the index relies on unit vectors.
    out = F.normalize(features.float(), dim=-1).cpu().numpy()
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    return np.ascontiguousarray(out / np.maximum(norms, 1e-12), dtype=np.float32)


@functools.lru_cache(maxsize=4)
def _tokenizer(name: str) -> Callable[[Sequence[str]], torch.Tensor]:
    # Building the BPE tables takes over a second and the result never changes for a model
    # name, so apps built again in one process (tests, reloads) share it.
    return open_clip.get_tokenizer(name)


def load_encoder(settings: Settings) -> ClipEncoder:
    """Build the model as settings say; raise ModelLoadError with what to set instead."""
    register_model_configs()
    name = settings.model
    if name not in open_clip.list_models() and ":" not in name:
        raise ModelLoadError(
            f"Unknown open_clip model {name!r}. Set ENCODER_MODEL to a preset "
            f"({', '.join(PRESETS)}), to one of open_clip's models (e.g. 'ViT-B-32') or to "
            f"{TINY_MODEL!r} for the tiny test model."
        )
    device = resolve_device(settings.device)
    precision = resolve_precision(settings.precision, device)
    random_weights = settings.pretrained.strip().lower() in ("", "none")
    if not random_weights and _looks_like_path(settings.pretrained):
        if not os.path.isfile(settings.pretrained):
            raise _load_error(settings, None)
    # Random weights are drawn on the CPU from a fixed seed, so a restarted encoder (on any
    # device) gives the same vectors as before.
    fork_devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=fork_devices):
        torch.manual_seed(RANDOM_WEIGHTS_SEED)
        try:
            model, _, preprocess = open_clip.create_model_and_transforms(
                name,
                pretrained=None if random_weights else settings.pretrained,
                precision=precision,
                device="cpu",
                cache_dir=settings.cache_dir,
                # A Hugging Face text tower (the multilingual preset) would otherwise fetch its
                # own base weights that random weights then ignore.
                pretrained_text=not random_weights,
            )
        except ModelLoadError:
            raise
        except Exception as exc:  # open_clip raises RuntimeError, OSError, hub errors...
            if random_weights:
                raise ModelLoadError(f"Cannot build open_clip model {name!r}: {exc}") from exc
            raise _load_error(settings, exc) from exc
    # MobileCLIP's MobileOne blocks train as parallel branches and fuse into one convolution
    # for inference: the same vectors, fewer operations; a no-op for other models.
    reparameterize_model(model.eval(), inplace=True)
    model = model.to(device).eval()
    tokenizer = _tokenizer(name)
    visual = model.visual
    size = visual.image_size
    image_size = int(size[0] if isinstance(size, tuple | list) else size)
    mean = [float(v) for v in getattr(visual, "image_mean", None) or open_clip.OPENAI_DATASET_MEAN]
    std = [float(v) for v in getattr(visual, "image_std", None) or open_clip.OPENAI_DATASET_STD]
    with torch.inference_mode():
        dim = int(model.encode_text(tokenizer(["dimension probe"]).to(device)).shape[-1])
    logger.info(
        "loaded %s (%s) on %s in %s: dim %d, image size %d",
        name, settings.pretrained, device, precision, dim, image_size,
    )
    text_graphs = None
    if device == "cuda":
        text_graphs = try_capture(
            model.encode_text, tokenizer(list(_GRAPH_PROBE_TEXTS)), device, settings.max_batch
        )
    return ClipEncoder(
        name=name,
        pretrained=settings.pretrained,
        model=model,
        preprocess=preprocess,
        tokenizer=tokenizer,
        device=device,
        precision=precision,
        dim=dim,
        image_size=image_size,
        mean=(mean[0], mean[1], mean[2]),
        std=(std[0], std[1], std[2]),
        text_graphs=text_graphs,
    )
