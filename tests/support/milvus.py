"""A real Milvus server for tests: the `milvus` package's embedded standalone binary.

One server per test session (``milvus_server``, a session fixture registered in
tests/integration/conftest.py), in its own temp base dir, on free loopback ports. Each test
uses its own collection (``collection_name``), so tests do not see each other's items;
``milvus_index`` is an in-process index service on it, for the recall tests.
"""

from __future__ import annotations

import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from milvus import MilvusServer, MilvusServerConfig
from pymilvus import connections, utility

from glimpse.index.config import MilvusSettings, Settings
from glimpse.index.milvus_service import MilvusIndexService
from tests.support.procs import free_port

DIM = 384  # ``milvus_index``'s vectors, as wide as a MiniLM sentence embedding


class _Config(MilvusServerConfig):
    """The package's configuration plus a file for Milvus's embedded etcd. The package leaves
    etcd's peer port at etcd's default, 2380, so a second embedded Milvus on the host (another
    test session, a benchmark) could not start: its etcd failed to bind. Here both of etcd's
    ports are set. The peer port stays the same across a restart (etcd keeps its member's
    address); the client port is where the package's own scan starts, since the package checks
    it with a bind that a killed server's TIME_WAIT sockets can fail."""

    def __init__(self, etcd_client: int, etcd_peer: int) -> None:
        super().__init__()
        self.set("etcd_port", etcd_client)
        self.etcd_peer = etcd_peer

    def write_config(self) -> None:
        super().write_config()
        configs = Path(self.base_data_dir) / "configs"
        client, peer = int(self.get("etcd_port")), self.etcd_peer
        etcd = configs / "embedEtcd.yaml"
        etcd.write_text(
            "name: default\n"
            f"listen-client-urls: http://localhost:{client}\n"
            f"advertise-client-urls: http://localhost:{client}\n"
            f"listen-peer-urls: http://localhost:{peer}\n"
            f"initial-advertise-peer-urls: http://localhost:{peer}\n"
            f"initial-cluster: default=http://localhost:{peer}\n"
        )
        milvus = configs / "milvus.yaml"
        text, found = re.subn(r"(?m)^(  use:\n    embed: true.*)$",
                              lambda m: f"{m.group(1)}\n  config:\n    path: {etcd}",
                              milvus.read_text(), count=1)
        if not found:
            raise RuntimeError(f"no etcd.use.embed in {milvus}: the milvus package changed")
        milvus.write_text(text)


class EmbeddedMilvus:
    """Start, stop, kill and restart one embedded Milvus; its data survives a restart."""

    def __init__(self, base_dir: Path) -> None:
        self.base_dir = base_dir
        self.port = free_port()
        self.etcd_ports = (free_port(), free_port())
        self._server = self._new_server()

    def _new_server(self) -> MilvusServer:
        server = MilvusServer(_Config(*self.etcd_ports), wait_for_started=True)
        server.set_base_dir(str(self.base_dir))
        server.listen_port = self.port
        # The health/metrics port: the package scans up from 9091, which another session's
        # server may hold; a free one avoids the scan.
        server.webservice_port = free_port()
        return server

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, attempts: int = 3) -> EmbeddedMilvus:
        """Start and wait for its health check. A start that fails (a port taken between our
        probe and Milvus's bind: Milvus opens a dozen) is retried on fresh ports."""
        for attempt in range(attempts):
            try:
                self._server.start()
                return self
            except (RuntimeError, TimeoutError, OSError) as exc:
                self._server.stop()
                if attempt == attempts - 1:
                    raise RuntimeError(
                        f"embedded Milvus did not start:\n{self.log_tail()}") from exc
                self.port = free_port()
                self.etcd_ports = (free_port(), free_port())
                self._server = self._new_server()
        return self

    def log_tail(self, n: int = 3000) -> str:
        logs = sorted((self.base_dir / "logs").glob("*.log"))
        return "\n".join(p.read_text(errors="replace")[-n:] for p in logs)

    def stop(self) -> None:
        self._server.stop()

    def kill(self) -> None:
        """SIGKILL: no shutdown, what a crash or an OOM kill does."""
        proc = self._server.server_proc
        if proc is not None:
            proc.kill()
            proc.wait(10)
        self._server.stop()

    def restart(self, kill: bool = False) -> None:
        if kill:
            self.kill()
        else:
            self.stop()
        self._server = self._new_server()
        self.start()

    def drop(self, collection: str) -> None:
        alias = f"test-{uuid.uuid4().hex[:8]}"
        connections.connect(alias=alias, uri=self.uri, timeout=30)
        try:
            if utility.has_collection(collection, using=alias):
                utility.drop_collection(collection, using=alias)
        finally:
            connections.disconnect(alias)


@pytest.fixture(scope="session")
def milvus_server() -> Iterator[EmbeddedMilvus]:
    """One embedded Milvus for the whole session (it takes about 10 s to start)."""
    base = Path(tempfile.mkdtemp(prefix="glimpse-milvus-"))
    server = EmbeddedMilvus(base).start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def collection_name(milvus_server: EmbeddedMilvus) -> Iterator[str]:
    """A fresh collection name, dropped after the test."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    yield name
    try:
        milvus_server.drop(name)
    except Exception:  # noqa: BLE001 - a test that left Milvus down cannot drop; harmless
        pass


@pytest.fixture
def milvus_index(milvus_server: EmbeddedMilvus, collection_name: str, tmp_path: Path
                 ) -> Iterator[MilvusIndexService]:
    """An in-process index service of ``DIM``-wide vectors on the test's own collection."""
    service = MilvusIndexService(
        Settings(backend="milvus", dim=DIM, data_dir=tmp_path),
        MilvusSettings(uri=milvus_server.uri, collection=collection_name, timeout_s=30,
                       search_calls=0))
    service.open()
    try:
        yield service
    finally:
        service.close()


def embedding_like(n: int, seed: int = 2) -> np.ndarray:
    """Unit vectors near a 24-dimensional subspace, as sentence embeddings lie: unlike tight
    clusters, their neighbours straddle IVF lists, so the interim index misses some (recall@10
    0.79 on 8,000, against 0.90 for 7,500 real MiniLM vectors)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 24)).astype(np.float32) @ rng.normal(size=(24, DIM)).astype(
        np.float32) + 0.3 * rng.normal(size=(n, DIM)).astype(np.float32)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def recall_at_10(got: list[list[int]], truth: np.ndarray) -> float:
    """Mean share of each query's exact top 10 (a row of ``truth``) among its first 10 hits."""
    return float(np.mean([len(set(g[:10]) & set(t.tolist())) / 10
                          for g, t in zip(got, truth, strict=True)]))


def wait_sealed(service: MilvusIndexService, seconds: float, what: str) -> None:
    """Wait until the seal on idle closes the fresh window (Milvus serves the rows indexed)."""
    deadline = time.monotonic() + seconds
    while service.store.fresh_since is not None:
        assert time.monotonic() < deadline, f"the seal on idle never closed the window {what}"
        time.sleep(0.5)


def milvus_env(server: EmbeddedMilvus, collection: str, dim: int, **extra: str
               ) -> dict[str, str]:
    """INDEX_* variables of an index service on ``server``'s ``collection``."""
    env = {
        "INDEX_BACKEND": "milvus",
        "INDEX_MILVUS_URI": server.uri,
        "INDEX_MILVUS_COLLECTION": collection,
        "INDEX_DIM": str(dim),
        "INDEX_MILVUS_TIMEOUT_S": "5",
    }
    env.update(extra)
    return env
