#!/usr/bin/env python3
"""How well GET /duplicates groups copies (glimpse/gateway/duplicates.py), and which rule links.

The set: tiles of the scikit-image and scikit-learn sample photos plus the LFW faces skimage
ships, each stored as a JPEG (bench/bench_relevance.py's pool); flat ones (every channel's
standard deviation under FLAT: a page's margin, the sky, blank LFW patches) are copies of each
other already and left out. ``--originals`` of them get copies: one of the same size, either
"exact" (the same pixels saved as PNG) or a re-save as JPEG quality 95, and one or two more
(resize, crop of at most 10 %, JPEG recompression at quality 30-70, a small colour change, or
all); the recompressed and edited ones are "similar" only (a recompression, even at q95, moves
the pixels). Every other item is unrelated. Each item is searched exactly (NEIGHBOURS hits) and
fingerprinted from its stored bytes as the background pass does (duplicates.links, a JPEG's
grey scaled in the DCT; the exact check's candidates decoded whole in colour,
duplicates.confirm): the bench prints the fingerprint differences of exact copies, of q95
re-saves and of every other same-size pair, both decoded whole and as the pass decodes every item.

Pair precision and recall of the groups (two items in one group that are copies of one
original / all pairs of copies), in both modes (``exact``: the original and its exact copies
only), for these linking rules:

  ratio    the vectors alone: a hit nearer than the ratio times the item's NEIGHBOURS-th hit's
           distance, swept;
  pixels   the pixels alone: a candidate pair within the difference (duplicates.Pixels), swept;
  both     either (the gateway's ``similar``: DIFFERENCE or RATIO["similar"]), swept;
  flat     a cosine above a fixed threshold, swept (the best one differs per model);
  cutoff   the relevance cutoff (relevance.py) over the item's CANDIDATES hits.

Models: glimpse-tiny and ViT-B-32 (``--models``), both with random weights.

``--print-time`` measures instead the CPU seconds of one fingerprint of a 12 MP JPEG (sample
photos enlarged, with sensor-like noise, quality 90), as the pass makes it and decoded whole,
and how far the two fingerprints differ. ``--search N ...`` measures the CPU time per item of
a first pass's fingerprint work over N synthetic fingerprints (a sample of the items, BATCH at
a time): its fingerprint neighbours (duplicates.Pixels.near, over every fingerprint) and the
differences to them. Appends every run to bench/results/bench_duplicates.csv.

    .venv/bin/python bench/bench_duplicates.py [--originals 100] [--seed 0] [--cache DIR]
    .venv/bin/python bench/bench_duplicates.py --print-time
    OPENBLAS_NUM_THREADS=1 .venv/bin/python bench/bench_duplicates.py --search 20000 100000
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import random
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_relevance import _faces, _jpeg, _sample_photos, _tiles, _transform  # noqa: E402

from glimpse.gateway.duplicates import (  # noqa: E402
    BATCH,
    DIFFERENCE,
    DRAFT,
    DRAFT_BOUND,
    NEIGHBOURS,
    PIXEL_BOUND,
    RATIO,
    SIDE,
    Item,
    Pixels,
    confirm,
    exact_candidates,
    fingerprint_of,
    groups,
    links,
    same_pixels,
    select,
)
from glimpse.gateway.relevance import CANDIDATES, cutoff  # noqa: E402
from glimpse.imaging import DEFAULT_LIMITS  # noqa: E402

OUT = ROOT / "bench" / "results" / "bench_duplicates.csv"
MODELS = ("glimpse-tiny", "ViT-B-32")
FLAT = 12.0  # a tile whose pixels vary less than this (standard deviation) is left out


def _saved(img: Image.Image, fmt: str, **options: int) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **options)
    return buf.getvalue()


def _png(img: Image.Image) -> Image.Image:
    return Image.open(io.BytesIO(_saved(img, "PNG"))).convert("RGB")


def build(originals: int, seed: int
          ) -> tuple[list[Image.Image], list[bytes], list[int], list[int]]:
    """Images, the bytes each is stored as, and per image its original's row for each mode
    (-1: no copies)."""
    rng = random.Random(seed)
    # Flat tiles and patches (a page's margin, the sky, the LFW set's blank non-faces) are
    # copies of each other already: left out.
    def varied(img: Image.Image) -> bool:  # per channel: a flat blue is flat
        return float(np.asarray(img, dtype=np.float32).std(axis=(0, 1)).max()) > FLAT

    tiles = [t for p in _sample_photos() for t in _tiles(p) if varied(t)]
    stored = [_saved(t, "JPEG", quality=90) for t in tiles]
    pool = [_jpeg(t, 90) for t in tiles] + [f for f in _faces() if varied(f)]
    stored += [_saved(f, "PNG") for f in pool[len(tiles):]]
    images = list(pool)
    similar = [-1] * len(pool)
    exact = [-1] * len(pool)
    for row in rng.sample(range(len(pool)), originals):
        similar[row] = exact[row] = row
        # A lossless copy (the same pixels as PNG) is exact; a re-save at JPEG quality 95 is a
        # recompression like any other (its pixels move as much as a q70 one's can): similar.
        lossless = rng.random() < 0.5
        if lossless:
            copy, data = _png(pool[row]), _saved(pool[row], "PNG")
        else:
            copy, data = _jpeg(pool[row], 95), _saved(pool[row], "JPEG", quality=95)
        images.append(copy)
        stored.append(data)
        similar.append(row)
        exact.append(row if lossless else -1)
        for _ in range(rng.randint(1, 2)):
            changed = _transform(pool[row], rng)
            images.append(changed)
            stored.append(_saved(changed, "PNG"))  # the pixels as the edit made them
            similar.append(row)
            # A colour edit of a grey face can leave every pixel as it was, and two resizes to
            # one size give the same pixels: then they are exact copies of each other.
            twin = next((r for r in [row, *range(len(pool), len(images) - 1)]
                         if similar[r] == row and images[r].size == changed.size
                         and np.array_equal(np.asarray(images[r]), np.asarray(changed))), None)
            if twin is not None:
                exact[twin] = exact[twin] if exact[twin] >= 0 else twin
            exact.append(-1 if twin is None else exact[twin])
    return images, stored, exact, similar


def prints_of(stored: list[bytes], whole: bool = False) -> list[bytes]:
    """Each image's fingerprint the way the gateway makes it from the stored original."""
    return [fingerprint_of(data, DEFAULT_LIMITS.max_pixels, whole) for data in stored]


def pixel_differences(prints: list[bytes], items: dict[int, Item], exact: list[int],
                      resaves: set[tuple[int, int]], bound: float = PIXEL_BOUND
                      ) -> tuple[float, float, int, float]:
    """The largest mean absolute difference between an original and its exact copies, the
    smallest between two other items of the same size (the other copies included), how many
    of those are within ``bound``, and the smallest for an original and its q95 re-save."""
    grey = np.stack([np.frombuffer(p, np.uint8) for p in prints]).astype(np.int16)
    worst_same, best_other, within, best_resave = 0.0, float("inf"), 0, float("inf")
    for i in range(len(prints)):
        size = (items[i].width, items[i].height)
        others = [j for j in range(i + 1, len(prints)) if (items[j].width, items[j].height) == size]
        if not others:
            continue
        diff = np.abs(grey[others] - grey[i]).mean(axis=1)
        for j, d in zip(others, diff, strict=True):
            if exact[i] >= 0 and exact[i] == exact[j]:
                worst_same = max(worst_same, float(d))
            else:
                best_other = min(best_other, float(d))
                within += int(d <= bound)
                if (i, j) in resaves:
                    best_resave = min(best_resave, float(d))
    return worst_same, best_other, within, best_resave


def print_time(repeats: int = 7) -> list[dict[str, object]]:
    """Per 12 MP JPEG, the least CPU seconds of its fingerprint over ``repeats`` runs, as the
    pass makes it and decoded whole, and the two fingerprints' mean absolute difference."""
    rng = np.random.default_rng(0)
    rows: list[dict[str, object]] = []
    for number, photo in enumerate(_sample_photos()[:3]):
        big = np.asarray(photo.resize((4000, 3000), Image.Resampling.BICUBIC), np.float32)
        big += rng.normal(0.0, 6.0, (3000, 4000, 1)).astype(np.float32)
        data = _saved(Image.fromarray(np.clip(big, 0, 255).astype(np.uint8)), "JPEG",
                      quality=90)
        made = {}
        for variant, whole in (("as the pass makes it", False), ("decoded whole", True)):
            spent = []
            for _ in range(repeats):
                started = time.process_time()
                made[whole] = fingerprint_of(data, DEFAULT_LIMITS.max_pixels, whole)
                spent.append(time.process_time() - started)
            print(f"photo {number} ({len(data) // 1000} kB): {variant} {min(spent):.3f} s")
            rows.append({"what": f"duplicates fingerprint CPU time: 12 MP JPEG (sample photo "
                                 f"{number} enlarged, noise, q90, {len(data) // 1000} kB), "
                                 f"least of {repeats}",
                         "variant": variant, "value": f"{min(spent):.4f}", "unit": "s"})
        diff = np.abs(np.frombuffer(made[False], np.uint8).astype(np.int16)
                      - np.frombuffer(made[True], np.uint8)).mean()
        print(f"photo {number}: the two fingerprints differ by {diff:.3f} grey levels")
        rows.append({"what": f"duplicates fingerprint, as the pass makes it vs decoded whole: "
                             f"12 MP JPEG (sample photo {number})",
                     "variant": f"DRAFT {DRAFT}", "value": f"{diff:.3f}",
                     "unit": "grey levels"})
    return rows


def search_time(count: int, sample: int = 640) -> list[dict[str, object]]:
    """Per item, the CPU seconds of its fingerprint neighbours and of the differences to them,
    among ``count`` fingerprints (blocks of random grey, like pictures' coarse shapes)."""
    rng = np.random.default_rng(0)
    grey = np.kron(rng.integers(0, 256, (count, 8, 8), dtype=np.uint8),
                   np.ones((SIDE // 8, SIDE // 8), np.uint8))
    pixels = Pixels({i: grey[i].tobytes() for i in range(count)})
    batches = [list(range(start, start + BATCH)) for start in range(0, sample, BATCH)]
    started = time.process_time()
    near = [pixels.near(ids) for ids in batches]
    near_s = (time.process_time() - started) / sample
    started = time.process_time()
    for ids, rows in zip(batches, near, strict=True):
        for item_id, row in zip(ids, rows, strict=True):
            pixels.differences(item_id, row)
    differences_s = (time.process_time() - started) / sample
    print(f"{count} fingerprints: neighbours {near_s * 1e3:.2f} ms, differences "
          f"{differences_s * 1e3:.2f} ms per item; a first pass {count * near_s / 60:.1f} + "
          f"{count * differences_s / 60:.1f} min")
    what = (f"duplicates first pass, fingerprint work per item: {count} synthetic fingerprints, "
            f"{sample} items measured")
    return [{"what": what, "variant": "neighbours (Pixels.near)", "value": f"{near_s:.5f}",
             "unit": "s"},
            {"what": what, "variant": "differences to them", "value": f"{differences_s:.5f}",
             "unit": "s"}]


def _append(rows: list[dict[str, object]], command: str, note: str) -> None:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, cwd=ROOT).stdout.strip() or "-"
    full = [{"date": date.today().isoformat(), "commit": commit, "machine": "dev-2core",
             "what": "", "variant": "", "value": "", "unit": "", "command": "", "note": "",
             **row} for row in rows]
    full[0]["command"], full[0]["note"] = command, note
    new = not OUT.exists()
    with OUT.open("a", newline="") as fh:  # every run is kept
        writer = csv.DictWriter(fh, fieldnames=list(full[0]))
        if new:
            writer.writeheader()
        writer.writerows(full)


def embed(model: str, images: list[Image.Image]) -> np.ndarray:
    import torch

    from glimpse.encoder.config import Settings
    from glimpse.encoder.model import load_encoder

    torch.manual_seed(0)
    encoder = load_encoder(Settings(model=model, pretrained="none", device="cpu"))
    out = []
    with torch.inference_mode():
        for start in range(0, len(images), 64):
            pixels = torch.stack([encoder.preprocess(i) for i in images[start : start + 64]])
            out.append(encoder.encode_pixels(pixels))
    vectors = np.concatenate(out).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def pair_scores(predicted: list[tuple[list[int], float]], truth: list[int]) -> tuple[float, float]:
    by_original: dict[int, list[int]] = {}
    for row, original in enumerate(truth):
        if original >= 0:
            by_original.setdefault(original, []).append(row)
    true_pairs = {(a, b) for rows in by_original.values() for a in rows for b in rows if a < b}
    found = {(a, b) for ids, _ in predicted for a in ids for b in ids if a < b}
    hit = len(found & true_pairs)
    return (hit / len(found) if found else 1.0), (hit / len(true_pairs) if true_pairs else 1.0)


Rule = Callable[[str], list[tuple[int, int, float]]]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--originals", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache", type=Path, default=None,
                   help="keep each model's vectors here (.npy) and reuse them on the next run")
    p.add_argument("--models", nargs="+", default=list(MODELS))
    p.add_argument("--print-time", action="store_true",
                   help="only the CPU time of one fingerprint of a 12 MP JPEG")
    p.add_argument("--search", type=int, nargs="+", default=[], metavar="N",
                   help="only the fingerprint search's CPU time per item among N fingerprints")
    args = p.parse_args(argv)
    command = "python bench/bench_duplicates.py " + " ".join(argv or sys.argv[1:])
    if args.print_time:
        _append(print_time(), command, f"DRAFT {DRAFT}")
        return 0
    if args.search:
        threads = os.environ.get("OPENBLAS_NUM_THREADS", "all")
        _append([row for n in args.search for row in search_time(n)], command,
                 f"OPENBLAS_NUM_THREADS={threads} (the dev box's load starves BLAS threads)")
        return 0
    images, stored, exact, similar = build(args.originals, args.seed)
    items = {i: Item(i, f"{i}.jpg", img.width, img.height, None, None)
             for i, img in enumerate(images)}
    prints, whole = prints_of(stored), prints_of(stored, whole=True)
    pixels = Pixels(dict(enumerate(prints)))

    def copy(a: int, b: int) -> bool:
        """The exact mode's test past the vectors (duplicates.links and confirm): the same
        size, fingerprints within DRAFT_BOUND and the same pixels decoded whole."""
        return (items[a].width, items[a].height) == (items[b].width, items[b].height) and (
            pixels.same(a, b) and same_pixels(whole[a], whole[b]))

    rows: list[dict[str, object]] = []
    n = len(images)
    # Each original and its re-save at JPEG quality 95 (the copy stored as a JPEG).
    resaves = {(similar[i], i) for i in range(n) if similar[i] not in (-1, i)
               and stored[i][:2] == b"\xff\xd8"}
    for decoded, grey, bound in (("whole, RGB", whole, PIXEL_BOUND),
                                 (f"grey, as the pass does, DRAFT {DRAFT}", prints, DRAFT_BOUND)):
        worst, best, within, resave = pixel_differences(grey, items, exact, resaves, bound)
        print(f"pixel difference ({SIDE}x{SIDE}, decoded {decoded}): exact copies at most "
              f"{worst:.4f}, other same-size pairs at least {best:.4f} (q95 re-saves "
              f"{resave:.4f}), {within} within the bound {bound}")
        what = (f"duplicates pixel difference ({SIDE}x{SIDE} mean absolute, decoded "
                f"{decoded}): {n} items, {args.originals} originals with copies, seed "
                f"{args.seed}")
        rows += [{"what": what, "variant": "exact copies, largest", "value": f"{worst:.4f}",
                  "unit": "levels"},
                 {"what": what, "variant": "other same-size pairs, smallest",
                  "value": f"{best:.4f}", "unit": "levels"},
                 {"what": what, "variant": "q95 re-saves of the originals, smallest",
                  "value": f"{resave:.4f}", "unit": "levels"},
                 {"what": what, "variant": f"other same-size pairs within {bound}",
                  "value": str(within), "unit": "pairs"}]
    truth = {"exact": exact, "similar": similar}
    ids = list(range(n))
    for model in args.models:
        cached = (args.cache / f"{model}-{n}-{args.originals}-{args.seed}.npy" if args.cache
                  else None)
        if cached is not None and cached.exists():
            vectors = np.load(cached)
        else:
            vectors = embed(model, images)
            if cached is not None:
                cached.parent.mkdir(parents=True, exist_ok=True)
                np.save(cached, vectors)
        scores = vectors @ vectors.T
        order = np.argsort(-scores, axis=1)

        def hits(depth: int, order: np.ndarray = order, scores: np.ndarray = scores
                 ) -> list[list[tuple[int, float]]]:
            return [[(int(j), float(scores[i, j])) for j in order[i, :depth]] for i in ids]

        near, deep = hits(NEIGHBOURS + 1), hits(CANDIDATES + 1)

        def cutoff_links(mode: str, deep: list[list[tuple[int, float]]] = deep
                         ) -> list[tuple[int, int, float]]:
            out = []
            for i, row in enumerate(deep):
                others = [(j, s) for j, s in row if j != i]
                cut = cutoff([s for _, s in others], complete=len(others) < CANDIDATES)
                for j, s in others[: cut.relevant_count]:
                    if mode == "exact" and not copy(i, j):
                        continue
                    out.append((min(i, j), max(i, j), s))
            return out

        def flat_links(mode: str, t: float, scores: np.ndarray = scores
                       ) -> list[tuple[int, int, float]]:
            a, b = np.nonzero(np.triu(scores, 1) >= t)
            return [(int(x), int(y), float(scores[x, y])) for x, y in zip(a, b, strict=True)
                    if mode == "similar" or copy(int(x), int(y))]

        rules: list[tuple[str, str, Callable[[str], list[tuple[int, int, float]]]]] = []
        started = time.perf_counter()
        found = links(ids, near, items, dict(enumerate(vectors)), pixels)
        decoded = len(exact_candidates(found))  # the originals the pass decodes whole
        found = confirm(found, dict(enumerate(whole)).get)
        linking_s = time.perf_counter() - started
        print(f"{model}: {len(found)} candidate pairs kept, linked in {linking_s:.1f} s; "
              f"{decoded} of {n} originals decoded whole for the exact check")
        rows.append({"what": f"duplicates originals decoded whole for the exact check: {model} "
                             f"(random weights), {n} items, {args.originals} originals with "
                             f"copies, seed {args.seed}", "variant": f"DRAFT_BOUND {DRAFT_BOUND}",
                     "value": str(decoded), "unit": "items"})
        for r in (0.005, 0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3):
            # The vectors alone (no pixel difference is negative).
            rules.append(("ratio", f"ratio {r}", lambda mode, r=r, found=found: select(  # type: ignore[misc]
                found, mode, r, difference=-1.0)))
        for d in (0.12, 0.14, 0.16, 0.18, 0.2, 0.25):
            # The pixels alone (no ratio is negative), and with the vectors' similar ratio.
            rules.append(("pixels", f"difference {d}", lambda mode, d=d, found=found: select(  # type: ignore[misc]
                found, mode, None if mode == "exact" else -1.0, d)))
            rules.append(("both", f"difference {d} or ratio {RATIO['similar']}",
                          lambda mode, d=d, found=found: select(found, mode, None, d)))  # type: ignore[misc]
        for t in (0.9, 0.95, 0.98, 0.99, 0.995, 0.999):
            rules.append(("flat", f"flat cosine {t}", lambda mode, t=t: flat_links(mode, t)))  # type: ignore[misc]
        rules.append(("cutoff", "relevance cutoff per item", cutoff_links))
        for _, variant, rule in rules:
            for mode in ("exact", "similar"):
                precision, recall = pair_scores(groups(rule(mode)), truth[mode])
                print(f"{model:13s} {mode:8s} {variant:28s} P={precision:.3f} R={recall:.3f}")
                what = (f"duplicates {mode} pair {{}}: {model} (random weights), {n} items, "
                        f"{args.originals} originals with copies, seed {args.seed}")
                for name, value in (("precision", precision), ("recall", recall)):
                    rows.append({"what": what.format(name), "variant": variant,
                                 "value": f"{value:.3f}", "unit": "ratio"})
    _append(rows, command, f"chosen: RATIO {RATIO}, NEIGHBOURS {NEIGHBOURS}, PIXEL_BOUND "
                           f"{PIXEL_BOUND}, DIFFERENCE {DIFFERENCE}, DRAFT {DRAFT}, DRAFT_BOUND "
                           f"{DRAFT_BOUND}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
