"""Settings of the index service (environment variables with the ``INDEX_`` prefix)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from glimpse.index.factory import AUTO, parse_factory


class Settings(BaseSettings):
    """Every knob of the index service; each has a default that works for a local run."""

    model_config = SettingsConfigDict(env_prefix="INDEX_", env_nested_delimiter="__")

    backend: Literal["faiss", "milvus"] = Field(
        default="faiss",
        description="faiss: the embedded index (SQLite + Faiss in this process); milvus: Milvus "
        "holds vectors, keys, paths and meta, so several index replicas share one collection "
        "(its settings: MilvusSettings).",
    )
    data_dir: Path = Field(
        default=Path("data/index"), description="Where the SQLite store and snapshots live."
    )
    dim: int = Field(default=512, ge=1, le=65_536, description="Vector dimension.")
    factory: str | None = Field(
        default=None,
        description="Faiss factory string to train instead of the automatic IVF-PQ rule, "
        "e.g. 'IVF4096,PQ32x8' (docs/index.md lists the accepted forms); 'auto' = unset.",
    )
    nprobe: int | None = Field(
        default=None, ge=1, description="IVF lists visited per query; None = the documented rule."
    )
    rerank: int = Field(
        default=16,
        ge=0,
        description="Re-rank depth: IVF-PQ candidates fetched per wanted hit and re-scored with "
        "the stored vectors; 0 = PQ scores only. Left unset, 32 in the low-memory setting.",
    )
    train_threshold: int = Field(
        default=50_000, ge=1, description="Live items at which IVF-PQ is first trained."
    )
    snapshot_interval_s: float = Field(
        default=300.0, ge=0, description="Seconds between snapshots if there were writes; 0 = off."
    )
    snapshot_every_writes: int = Field(
        default=100_000, ge=0, description="Snapshot after this many writes; 0 = off."
    )
    device: Literal["cpu", "cuda"] = Field(
        default="cpu", description="Where IVF-PQ searches run; cuda needs faiss with GPU support."
    )
    vectors_in_memory: bool = Field(
        default=True,
        description="Keep the float16 vectors in RAM for re-ranking; false is the low-memory "
        "setting: re-rank reads them from SQLite, the automatic factory uses half the PQ code "
        "bytes (PQ16 at 512-d), starts read the ids from the snapshot's vectors file.",
    )
    autotune: bool = Field(
        default=True,
        description="After each training, tune nprobe and re-rank depth on a held-out sample "
        "(skipped when INDEX_NPROBE is set).",
    )
    max_bytes_per_vector: float = Field(
        default=128.0,
        gt=0,
        description="Most Faiss index bytes per vector (codes, ids, lists, graph; not the float16 "
        "re-rank vectors) of a structure the training may choose; HNSW needs ~dim + 280.",
    )
    @model_validator(mode="after")
    def _known_factory(self) -> Settings:
        # Parsed at start, so a string Faiss would crash on stops the service with a sentence.
        if self.factory == AUTO:
            self.factory = None
        if self.factory is not None:
            try:
                parse_factory(self.factory, self.dim)
            except ValueError as exc:
                raise ValueError(f"INDEX_FACTORY: {exc}") from None
        return self


class MilvusSettings(BaseSettings):
    """The Milvus backend's settings (``INDEX_MILVUS_*``), read only when INDEX_BACKEND=milvus."""

    model_config = SettingsConfigDict(env_prefix="INDEX_MILVUS_", env_nested_delimiter="__")

    uri: str = Field(default="http://127.0.0.1:19530", description="Milvus endpoint.")
    token: str = Field(
        default="", description="Milvus token ('user:password' or an API key); empty = none."
    )
    collection: str = Field(
        default="glimpse", pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,254}$",
        description="Milvus collection; created (with its index) on first start.",
    )
    index_type: Literal["HNSW", "IVF_PQ", "GPU_IVF_PQ"] = Field(
        default="HNSW",
        description="Milvus index built on a new collection's vectors. HNSW scores with the "
        "exact vectors (no re-rank); IVF_PQ and GPU_IVF_PQ are re-ranked (INDEX_RERANK), which "
        "costs Milvus ~3x the CPU per search (docs/index.md).",
    )
    index_params: dict[str, Any] = Field(
        default_factory=dict,
        description="JSON overriding the index parameters (nlist, m, nbits; HNSW: M, "
        "efConstruction); unset ones follow the Faiss backend's rule on a full segment.",
    )
    timeout_s: float = Field(
        default=10.0, gt=0, description="Deadline of each Milvus call; past it the answer is 503."
    )
    search_calls: int = Field(
        default=2, ge=0,
        description="Milvus search calls in flight per index replica; searches that arrive "
        "meanwhile go to Milvus together in the next call (Milvus's CPU per call is mostly "
        "fixed). 0 = no gathering: each search its own calls.",
    )
