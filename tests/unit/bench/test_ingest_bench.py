"""bench/bench_ingest.py's pieces that run without services: the generated JPEGs, the
script's own ceiling against an instant fake gateway, the --instant run's stand-in encoder
and its CPU accounting."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import numpy as np
from PIL import Image

from bench.bench_ingest import Cost, client_rate, generate, measured


def test_generated_jpegs_are_distinct_and_of_the_asked_size(tmp_path: Path) -> None:
    paths = generate(tmp_path, 6, (64, 48))
    assert len({hashlib.sha256(p.read_bytes()).hexdigest() for p in paths}) == 6
    for path in paths:
        with Image.open(path) as img:
            assert (img.format, img.size, img.mode) == ("JPEG", (64, 48), "RGB")
    # The same seed gives the same files: runs are comparable.
    again = generate(tmp_path / "again", 6, (64, 48))
    assert [p.read_bytes() for p in again] == [p.read_bytes() for p in paths]


def test_client_rate_counts_every_file(tmp_path: Path) -> None:
    generate(tmp_path, 5, (32, 24))
    rate = client_rate(tmp_path, batch_size=2, concurrency=2)
    assert rate.images == 5 and rate.per_s > 0


def test_the_instant_encoder_answers_one_unit_vector_per_file() -> None:
    from starlette.testclient import TestClient

    from bench.instant_encoder import DIM, app
    from glimpse.contracts.vectors import decode_vectors

    with TestClient(app) as client:
        files = [("files", (f"{i}.jpg", b"\xff\xd8\xff" + bytes([i]) * 100, "image/jpeg"))
                 for i in range(3)]
        body = client.post("/v1/embed/image", files=files, data={"encoding": "base64"}).json()
        assert body["dim"] == DIM and body["errors"] == [None] * 3
        vectors = decode_vectors(body["embeddings"], DIM, what="embeddings")
        assert vectors.shape == (3, DIM)
        assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0)
        floats = client.post("/v1/embed/image", files=files[:1]).json()["embeddings"]
        assert len(floats) == 1 and len(floats[0]) == DIM
        texts = client.post("/v1/embed/text", json={"texts": ["a", "b"]}).json()
        assert len(texts["embeddings"]) == 2
        assert client.get("/readyz").status_code == 200
        assert client.get("/v1/info").json()["dim"] == DIM


def test_measured_gives_each_process_its_cpu_time() -> None:
    cost = Cost(1000, 0.0, {})
    with measured({"this": None, "also this": os.getpid()}, cost):
        # Twice the bound: the kernel counts CPU time in clock ticks (10 ms), so a spin of just
        # the bound was once read as 0.03999.
        deadline = time.process_time() + 0.1
        while time.process_time() < deadline:
            pass
    assert cost.seconds >= 0.05
    assert cost.cpu_s["this"] >= 0.05 and cost.cpu_s["also this"] >= 0.05
    assert cost.us_per("this") == cost.cpu_s["this"] / 1000 * 1e6
    # The spinning was this main thread's; the kernel's part is a part (its size depends on
    # what else the process's threads do meanwhile). Both are counted in the kernel's 10 ms
    # ticks, and the thread is read after the process, so its part can show a tick or two
    # more than the whole (a loaded run saw more than one).
    assert cost.loop_s["this"] >= 0.04 and cost.loop_s["this"] <= cost.cpu_s["this"] + 0.03
    # Up to float rounding: the whole is a difference of (user + system) sums, which can come
    # out 1e-14 under a system part that is the whole (a CI run saw 0.05 against 0.0499...98).
    assert 0 <= cost.system_s["this"] <= cost.cpu_s["this"] + 1e-9
