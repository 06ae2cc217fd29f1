"""Bodies of the encoder service's API (port 8001)."""

from __future__ import annotations

from pydantic import BaseModel, Field

from glimpse.contracts.vectors import VectorEncoding, VectorLike


class EmbedTextRequest(BaseModel):
    texts: list[str] = Field(min_length=1, description="Texts to embed; the service caps count.")
    encoding: VectorEncoding = Field(default="float", description="'float' lists or 'base64'.")


class EmbedTextResponse(BaseModel):
    model: str
    dim: int
    embeddings: list[VectorLike]


class EmbedError(BaseModel):
    error: str
    error_type: str


class ImageSize(BaseModel):
    width: int = Field(ge=1)
    height: int = Field(ge=1)


class EmbedImageResponse(BaseModel):
    """One slot per uploaded file: an embedding, or null and an error in the same slot.

    When no file at all could be embedded the answer is not 200 but the error of the first
    file (4xx, the error body), with every slot's error in ``details.errors``.
    """

    model: str
    dim: int
    embeddings: list[VectorLike | None]
    errors: list[EmbedError | None]
    sizes: list[ImageSize | None] = Field(
        default_factory=list,
        description="Each file's width and height in pixels as displayed (its EXIF orientation "
        "applied), null where its slot has no embedding.",
    )


class EncoderInfo(BaseModel):
    model: str
    pretrained: str = Field(description="Tag, checkpoint path, or 'none' (seeded random).")
    dim: int
    device: str
    precision: str
    runtime: str = Field(
        default="torch", description="What runs the model: 'onnx' (ONNX Runtime) or 'torch'."
    )
    runtime_note: str | None = Field(
        default=None,
        description="Why torch serves where ENCODER_RUNTIME asked for ONNX Runtime (e.g. the "
        "export failed); null otherwise.",
    )
    image_size: int
    max_batch: int
    max_wait_ms: float
    max_files: int | None = Field(default=None, description="Most files per image request.")
    max_texts: int | None = Field(default=None, description="Most texts per text request.")
    max_text_chars: int | None = Field(default=None, description="Longest accepted text.")
    max_file_bytes: int | None = Field(default=None, description="Largest accepted file.")
    max_pixels: int | None = Field(
        default=None, description="Largest accepted image (width x height)."
    )
    gpu_decode: bool = Field(default=False, description="JPEGs are decoded on the GPU.")
    decode_rates: dict[str, float] | None = Field(
        default=None,
        description="Images/s of the CPU decode pool ('cpu_pool') and of the GPU decoder "
        "('device'), measured at warm-up on CUDA (ENCODER_GPU_DECODE=auto keeps the faster); "
        "null otherwise.",
    )
    models: list[LoadedModel] = Field(
        default_factory=list,
        description="Every model served (the configured one first); a request's 'model' "
        "query parameter names one.",
    )
    text_graph_batches: list[int] | None = Field(
        default=None,
        description="Batch sizes the text tower replays as CUDA graphs (always "
        "on CUDA); a larger batch runs eagerly. Null when all text runs eagerly.",
    )


class LoadModelRequest(BaseModel):
    """A model for the encoder to serve beside its configured one (the gateway's migration)."""

    model: str = Field(min_length=1, max_length=200,
                       description="A preset or an open_clip model name.")
    pretrained: str | None = Field(
        default=None, max_length=1000,
        description="Weights (tag, checkpoint path or 'none'); unset: the preset's.",
    )


class LoadedModel(BaseModel):
    model: str
    pretrained: str
    dim: int
    image_size: int
    default: bool = Field(description="The configured model, used when a request names none.")
