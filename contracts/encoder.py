"""Bodies of the encoder service's API (port 8001)."""

from __future__ import annotations

from pydantic import BaseModel, Field

from contracts.vectors import VectorEncoding, VectorLike


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


class EmbedImageResponse(BaseModel):
    """One slot per uploaded file: an embedding, or null and an error in the same slot."""

    model: str
    dim: int
    embeddings: list[VectorLike | None]
    errors: list[EmbedError | None]


class EncoderInfo(BaseModel):
    model: str
    pretrained: str
    dim: int
    device: str
    precision: str
    image_size: int
    max_batch: int
    max_wait_ms: float
