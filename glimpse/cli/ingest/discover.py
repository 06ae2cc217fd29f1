"""Which files an ingest run sends: walking the folders, hashing and sniffing each file, and
leaving out what this run or an earlier report already settled (the gateway's own answer,
``/ingest/check``, is asked in :mod:`.upload`)."""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from glimpse.cli.ingest.report import IngestSummary, Tally

IMAGE_EXTENSIONS = {
    ".jpg": "jpeg", ".jpeg": "jpeg", ".jpe": "jpeg", ".jfif": "jpeg",
    ".png": "png", ".webp": "webp", ".bmp": "bmp", ".gif": "gif",
    ".tif": "tiff", ".tiff": "tiff",
    ".heic": "heic", ".heif": "heic",
}
CONTENT_TYPES = {
    "jpeg": "image/jpeg", "png": "image/png", "webp": "image/webp", "bmp": "image/bmp",
    "gif": "image/gif", "tiff": "image/tiff", "heic": "image/heic",
}
_HEIF_BRANDS = {b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1"}


def heic_supported() -> bool:
    """HEIC is kept only where a decoder is installed (pillow-heif)."""
    try:
        import pillow_heif  # noqa: F401
    except ImportError:
        return False
    return True


def sendable_kinds() -> set[str]:
    """The image formats this machine sends: all but HEIC when no decoder is installed."""
    return set(CONTENT_TYPES) - (set() if heic_supported() else {"heic"})


def sniff_image(head: bytes) -> str | None:
    """The image format the first bytes of a file announce, or None."""
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "gif"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if head.startswith(b"BM") and len(head) >= 14:
        return "bmp"
    if head.startswith((b"II*\x00", b"MM\x00*")):
        return "tiff"
    if head[4:8] == b"ftyp" and head[8:12] in _HEIF_BRANDS:
        return "heic"
    return None


@dataclass(frozen=True)
class Candidate:
    path: Path  # where to read it
    relative: str  # what the gateway is told, relative to its folder, with "/"
    size: int


@dataclass
class Hashed:
    candidate: Candidate
    sha256: str
    kind: str


def _within(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def walk_images(
    root: Path, extensions: Iterable[str], summary: IngestSummary
) -> Iterator[Candidate]:
    """Files under ``root`` with an image extension, in a stable order.

    Symlinks are followed only when their target stays inside ``root``; each directory is
    entered once (by device and inode), so a loop ends. Real directories are walked before
    symlinked ones, so a file reachable both ways is named by its real path.
    """
    exts = set(extensions)
    root_real = os.path.realpath(root)
    visited: set[tuple[int, int]] = set()
    real_dirs: list[tuple[Path, str]] = [(root, "")]
    linked_dirs: list[tuple[Path, str]] = []
    while real_dirs or linked_dirs:
        directory, prefix = real_dirs.pop() if real_dirs else linked_dirs.pop()
        try:
            st = directory.stat()
        except OSError:
            continue
        if (st.st_dev, st.st_ino) in visited:
            summary.links_skipped += 1
            continue
        visited.add((st.st_dev, st.st_ino))
        try:
            with os.scandir(directory) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError:
            continue
        subdirs: list[tuple[Path, str]] = []
        for entry in entries:
            path = directory / entry.name
            rel = f"{prefix}{entry.name}"
            try:
                is_link = entry.is_symlink()
                if is_link:
                    target = os.path.realpath(path)
                    if not _within(target, root_real) or not os.path.exists(target):
                        summary.links_skipped += 1
                        continue
                    st_entry = os.stat(path)
                else:
                    st_entry = entry.stat(follow_symlinks=False)
            except OSError:
                summary.links_skipped += 1
                continue
            if stat.S_ISDIR(st_entry.st_mode):
                (linked_dirs if is_link else subdirs).append((path, rel + "/"))
            elif stat.S_ISREG(st_entry.st_mode):
                summary.files += 1
                if os.path.splitext(entry.name)[1].lower() in exts:
                    summary.images += 1
                    yield Candidate(path, rel, st_entry.st_size)
                else:
                    summary.skipped += 1
        # Reversed so that popping from the stack walks the directories in name order.
        real_dirs.extend(reversed(subdirs))


def hash_file(candidate: Candidate, kinds: set[str], tally: Tally) -> Hashed | None:
    """The file's sha256 and format; None (and the file reported) when it cannot be sent."""
    digest = hashlib.sha256()
    try:
        with open(candidate.path, "rb") as fh:
            head = fh.read(64)
            digest.update(head)
            # hashlib releases the GIL on large updates, so a thread pool hashes in parallel.
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
            size = fh.tell()
    except OSError as exc:
        tally.fail(candidate.path, candidate.relative, "failed", "unreadable",
                   f"could not read the file: {exc}")
        return None
    tally.count(0, bytes_hashed=size)
    kind = sniff_image(head)
    if kind is None:
        tally.fail(
            candidate.path, candidate.relative, "rejected", "not_an_image",
            "the content is not an image (its first bytes match no supported format)",
            digest.hexdigest(),
        )
        return None
    if kind not in kinds:
        tally.fail(
            candidate.path, candidate.relative, "rejected", "unsupported_media_type",
            f"{kind} images need a decoder that is not installed", digest.hexdigest(),
        )
        return None
    return Hashed(candidate, digest.hexdigest(), kind)


class NewFiles:
    """Leaves out the files this run already saw (same bytes) and those an earlier report says
    the gateway rejected; what is left is for the gateway to judge."""

    def __init__(self, tally: Tally, earlier_rejections: dict[str, tuple[str, str]]) -> None:
        self.tally = tally
        self.earlier = earlier_rejections
        self.seen: set[str] = set()

    def __call__(self, hashed: Iterable[Hashed]) -> list[Hashed]:
        fresh = []
        for h in hashed:
            if h.sha256 in self.seen:
                self.tally.count(duplicates=1)
                continue
            self.seen.add(h.sha256)
            if h.sha256 in self.earlier:
                error_type, reason = self.earlier[h.sha256]
                self.tally.fail(h.candidate.path, h.candidate.relative, "rejected", error_type,
                                reason, h.sha256)
            else:
                fresh.append(h)
        return fresh
