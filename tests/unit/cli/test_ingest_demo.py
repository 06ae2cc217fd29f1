"""glimpse/cli/demo.py writes the bundled sample photos as real image files the ingest keeps,
and stops first, saying what to do, when no gateway answers."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from PIL import Image

from glimpse.cli.demo import main, write_samples
from glimpse.cli.ingest import IMAGE_EXTENSIONS, IngestSummary, sniff_image, walk_images


def test_samples_are_written_as_images_the_walk_keeps(tmp_path: Path) -> None:
    written = write_samples(tmp_path)
    assert len(written) >= 20
    names = {p.name for p in written}
    assert {"astronaut.jpg", "chelsea.jpg", "rocket.jpg", "china.jpg", "flower.jpg"} <= names
    assert "logo.png" in names  # RGBA stays PNG
    summary = IngestSummary()
    found = list(walk_images(tmp_path, IMAGE_EXTENSIONS, summary))
    assert len(found) == len(written)
    for path in written:
        assert sniff_image(path.read_bytes()[:64]) in {"jpeg", "png"}
        with Image.open(path) as img:
            img.verify()


def test_no_gateway_stops_before_writing_with_the_sentence_ingest_prints(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    assert main(["--url", url, "--out", str(tmp_path / "samples")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"no Glimpse gateway answers at {url} (")
    assert err.rstrip().endswith("start one with `make dev` or `docker compose up`, or pass --url")
    assert not (tmp_path / "samples").exists()
