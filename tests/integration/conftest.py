"""Fixtures of the integration tests: the session's real Milvus server (tests/support/milvus.py)."""

from __future__ import annotations

from tests.support.milvus import collection_name, milvus_index, milvus_server

__all__ = ["collection_name", "milvus_index", "milvus_server"]
