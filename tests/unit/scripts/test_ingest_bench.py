"""scripts/bench_ingest.py's pieces that run without services: the generated JPEGs and the
script's own ceiling against an instant fake gateway."""

from __future__ import annotations

import hashlib
from pathlib import Path

from PIL import Image

from scripts.bench_ingest import client_rate, generate


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
