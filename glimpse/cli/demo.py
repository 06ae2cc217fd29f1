#!/usr/bin/env python3
"""`make demo`: load the sample photos that scikit-image and scikit-learn ship into a running
Glimpse (`make dev` or `docker compose up`), through the same ingest() the bulk script uses.

    glimpse demo [--url http://localhost:8000] [--api-key KEY] [--out DIR]

No network is needed: the photos come with the installed libraries. They are written as JPEG
(colour photos) and PNG (grey, binary and transparent ones) to a temporary folder, or to
--out, then ingested; a second run finds them all already there.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import warnings
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from glimpse.cli.ingest import DEFAULT_URL, ingest, probe

# skimage.data functions whose images ship inside the package (others download on first use).
SKIMAGE_SAMPLES = [
    "astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry",
    "retina", "colorwheel", "logo", "camera", "moon", "page", "text", "coins", "clock",
    "horse", "brick", "grass", "gravel", "cell",
]


def _save(array: np.ndarray, folder: Path, name: str) -> Path:
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    img = Image.fromarray(array)
    # Colour photos as JPEG like a camera writes them; the rest as PNG so nothing is lost.
    if img.mode == "RGB":
        path = folder / f"{name}.jpg"
        img.save(path, quality=92)
    else:
        path = folder / f"{name}.png"
        img.save(path)
    return path


def write_samples(folder: Path) -> list[Path]:
    """The bundled sample photos, as image files under ``folder``; the paths written."""
    written: list[Path] = []
    sk_dir = folder / "scikit-image"
    sk_dir.mkdir(parents=True, exist_ok=True)
    import skimage.data

    for name in SKIMAGE_SAMPLES:
        loader = getattr(skimage.data, name, None)
        if loader is None:
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                written.append(_save(np.asarray(loader()), sk_dir, name))
        except Exception as exc:  # a sample that needs a download: skip it, say so
            print(f"skipping skimage.data.{name}: {exc}", file=sys.stderr)
    left, right = skimage.data.stereo_motorcycle()[:2]
    written.append(_save(left, sk_dir, "motorcycle_left"))
    written.append(_save(right, sk_dir, "motorcycle_right"))

    from sklearn.datasets import load_sample_images

    sl_dir = folder / "scikit-learn"
    sl_dir.mkdir(parents=True, exist_ok=True)
    bunch = load_sample_images()
    for filename, array in zip(bunch.filenames, bunch.images, strict=True):
        written.append(_save(array, sl_dir, Path(filename).stem))
    return written


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="glimpse demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--url", default=DEFAULT_URL,
                   help="the gateway (default: %(default)s)")
    p.add_argument("--api-key", default=os.environ.get("GLIMPSE_API_KEY"),
                   help="the gateway's write key (default: $GLIMPSE_API_KEY)")
    p.add_argument("--out", type=Path, default=None,
                   help="keep the sample files in this folder (default: a temporary one)")
    args = p.parse_args(argv)
    # Before writing the samples; ingest() would say the same, only later.
    with httpx.Client(base_url=args.url.rstrip("/")) as client:
        problem = probe(client, args.url)
    if problem is not None:
        print(problem, file=sys.stderr)
        return 2

    with tempfile.TemporaryDirectory(prefix="glimpse-demo-") as tmp:
        folder = args.out or Path(tmp)
        written = write_samples(folder)
        print(f"wrote {len(written)} sample photos to {folder}", file=sys.stderr)
        summary = ingest([folder], args.url, args.api_key, progress=True)
    print(summary.describe(), file=sys.stderr)
    for failure in summary.failures:
        print(f"  {failure.relative}: {failure.reason}", file=sys.stderr)
    if summary.exit_code == 0:
        print(f"open {args.url} and search, e.g. 'a cat' or 'a rocket'", file=sys.stderr)
    return summary.exit_code


if __name__ == "__main__":
    sys.exit(main())
