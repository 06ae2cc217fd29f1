"""glimpse/cli/demo.py writes the bundled sample photos as real image files the ingest keeps."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from glimpse.cli.demo import write_samples
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
