"""IndexService settings that shape the index: the low-memory setting's defaults."""

from __future__ import annotations

from pathlib import Path

from glimpse.index.config import Settings
from glimpse.index.service import LOW_MEMORY_RERANK, IndexService


def _opened(tmp_path: Path, **overrides: object) -> IndexService:
    service = IndexService(Settings(data_dir=tmp_path, dim=64, snapshot_interval_s=0,
                                    snapshot_every_writes=0, **overrides))  # type: ignore[arg-type]
    service.open()
    return service


def test_low_memory_uses_pq16_codes_and_a_deeper_rerank_unless_set(tmp_path: Path) -> None:
    cases = [({}, 16, "IVF4096_HNSW32,PQ32x8"),
             ({"vectors_in_memory": False}, LOW_MEMORY_RERANK, "IVF4096_HNSW32,PQ16x8"),
             ({"vectors_in_memory": False, "rerank": 8}, 8, "IVF4096_HNSW32,PQ16x8")]
    for n, (overrides, rerank, factory) in enumerate(cases):
        service = _opened(tmp_path / str(n), **overrides)
        try:
            assert service.index is not None
            assert service.index.defaults.rerank == rerank
            service.index.dim = 512  # the rule at the real dimension (nothing is indexed)
            assert service.index.wanted_factory(1_000_000) == factory
        finally:
            service.close()
