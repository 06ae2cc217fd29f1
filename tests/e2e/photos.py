"""The sample photos the browser tests ingest: the ones scikit-image and scikit-learn ship.

Real photos (not noise) so the results page and its screenshot look like a real collection, plus
crops of the colour ones so the collection is larger than one page of results and the grid has to
load more as it scrolls.
"""

from __future__ import annotations

import importlib.util
import io
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

# Files inside skimage.data's folder (no download needed), most photographic first.
SKIMAGE_FILES = (
    "astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png",
    "hubble_deep_field.jpg", "camera.png", "coins.png", "moon.png", "grass.png", "gravel.png",
    "brick.png", "ihc.png", "retina.jpg", "color.png", "horse.png", "page.png", "text.png",
    "clock_motion.png", "logo.png", "cell.png",
)
SKLEARN_FILES = ("china.jpg", "flower.jpg")
CROPPED = (
    "skimage/astronaut.png", "skimage/chelsea.png", "skimage/coffee.png", "skimage/rocket.jpg",
    "skimage/motorcycle_left.png", "skimage/hubble_deep_field.jpg", "sklearn/china.jpg",
    "sklearn/flower.jpg", "skimage/ihc.png", "skimage/retina.jpg",
)
# (left, top, right, bottom) as fractions of the photo.
CROP_BOXES = ((0.0, 0.0, 0.6, 0.6), (0.4, 0.4, 1.0, 1.0), (0.2, 0.0, 0.8, 0.7))


@dataclass(frozen=True)
class Photo:
    path: str  # the relative path it is ingested under
    data: bytes
    content_type: str

    @property
    def filename(self) -> str:
        return self.path.rsplit("/", 1)[-1]


def _content_type(name: str) -> str:
    return "image/png" if name.endswith(".png") else "image/jpeg"


def _crop(photo: Photo, box: tuple[float, float, float, float]) -> bytes:
    with Image.open(io.BytesIO(photo.data)) as img:
        rgb = img.convert("RGB")
    w, h = rgb.size
    region = rgb.crop((int(box[0] * w), int(box[1] * h), int(box[2] * w), int(box[3] * h)))
    region.thumbnail((480, 480))
    out = io.BytesIO()
    region.save(out, "JPEG", quality=85)
    return out.getvalue()


def _package_dir(name: str) -> Path:
    """Where a package is installed, without importing it (importing sklearn takes seconds)."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"{name} is not installed; the browser tests need its sample photos")
    return Path(next(iter(spec.submodule_search_locations)))


def sample_photos() -> list[Photo]:
    """The photos in a fixed order (53 of them: 23 originals, 30 crops)."""
    skimage_dir = _package_dir("skimage") / "data"
    sklearn_dir = _package_dir("sklearn") / "datasets" / "images"
    photos = [
        Photo(f"skimage/{name}", (skimage_dir / name).read_bytes(), _content_type(name))
        for name in SKIMAGE_FILES
    ]
    photos += [
        Photo(f"sklearn/{name}", (sklearn_dir / name).read_bytes(), _content_type(name))
        for name in SKLEARN_FILES
    ]
    by_path = {p.path: p for p in photos}
    for path in CROPPED:
        stem = path.rsplit("/", 1)[-1].rsplit(".", 1)[0]
        for i, box in enumerate(CROP_BOXES, start=1):
            photos.append(
                Photo(f"crops/{stem}-{i}.jpg", _crop(by_path[path], box), "image/jpeg")
            )
    return photos
