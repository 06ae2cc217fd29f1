"""Old code against new, side by side: each side's own benchmark script, alternated.

Issue 21's "How to show it": the encoder service against the raw forward, the index service
against raw Faiss, and the gateway's search overhead, for the code before the reshape
(a worktree of 55ae10b: top-level packages, scripts/) and after it (a worktree of the new
HEAD: glimpse/, bench/). Both run with this interpreter; each side gets ``PYTHONPATH`` set to
its worktree and runs from it, so its services import its own code (checked and printed
before the runs, because the venv also has /work/main installed in editable mode).

Runs alternate old, new, old, new... so that load from other processes on a shared machine
hits both sides alike. Every run is kept: one row per quantity and run goes to the CSV under
bench/results/ (the format in bench/results/README.md), and each run's own JSON beside the logs.

    git worktree add /tmp/bench-old 55ae10b && git worktree add /tmp/bench-new HEAD
    python bench/compare_old_new.py encoder --pairs 4 -- --model glimpse-tiny
    python bench/compare_old_new.py search --pairs 4 -- --requests 200 --images 300
    python bench/real_sets.py --sets docstrings --limit 8000 --queries 500
    python bench/compare_old_new.py index --label docstrings-7500 --pairs 4 -- \\
        --base data/real/docstrings.npy --queries data/real/docstrings_queries.npy \\
        --raw on --in-process-only
    python bench/compare_old_new.py summary       # every run, medians, new / old
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import math
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
FIELDS = ["date", "commit", "machine", "what", "variant", "value", "high", "runs", "unit",
          "command", "note"]

# Each side's script and the module whose file proves which code a run imports.
SIDES: dict[str, dict[str, Any]] = {
    "old": {"dir": "scripts", "modules": {"encoder": "encoder_service.main",
                                          "index": "index_service.service",
                                          "search": "gateway.main"}},
    "new": {"dir": "bench", "modules": {"encoder": "glimpse.encoder.main",
                                        "index": "glimpse.index.service",
                                        "search": "glimpse.gateway.main"}},
}
SCRIPTS = {"encoder": "bench_encoder.py", "index": "bench_index.py", "search": "bench_search.py"}


def side_env(tree: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(tree), "HF_HUB_OFFLINE": "1"}


def imported_file(tree: Path, module: str) -> str:
    out = subprocess.run(
        [sys.executable, "-c", f"import {module} as m; print(m.__file__)"],
        cwd=tree, env=side_env(tree), capture_output=True, text=True, check=True,
    )
    return out.stdout.strip()


def commit_of(tree: Path) -> str:
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=tree,
                          capture_output=True, text=True, check=True).stdout.strip()


# -- what each benchmark's JSON gives ------------------------------------------------------------


def encoder_values(data: dict[str, Any]) -> list[tuple[str, float, str]]:
    model = data["args"]["model"]
    out = []
    for r in data["rounds"]:
        out += [
            (f"{model} CPU: raw forward images/s", r["raw_images_per_s"], "images/s"),
            (f"{model} CPU: service images/s (JPEG over HTTP)", r["service_images_per_s"],
             "images/s"),
            (f"{model} CPU: service / raw forward, images/s", r["image_ratio"], "ratio"),
            (f"{model} CPU: text query p50, service / raw", r["text_ratio_p50"], "ratio"),
        ]
    return out


def index_values(data: dict[str, Any]) -> list[tuple[str, float, str]]:
    versus = data.get("versus_raw") or {}
    service, raw = versus.get("service") or {}, versus.get("raw") or {}
    out = []
    if service.get("one_query_ms") and raw.get("one_query_ms"):
        out += [
            ("index service recall@10, held-out queries", service["recall"], "recall"),
            ("index service one-query CPU (in process)", service["one_query_ms"], "ms"),
            ("best raw Faiss at >= the same recall, one-query CPU", raw["one_query_ms"], "ms"),
            ("index service / best raw Faiss, one query",
             service["one_query_ms"] / raw["one_query_ms"], "ratio"),
        ]
    # The old script names its HTTP run "gather off (default)"; the new one "restart".
    runs = data.get("http") or {}
    http = runs.get("gather off (default)") or runs.get("restart")
    if http:
        out += [("index service over HTTP, 1 client, p50", http["one"]["p50_ms"], "ms"),
                ("index service over HTTP, 8 clients", http["eight"]["qps"], "queries/s")]
    return out


def search_values(data: dict[str, Any]) -> list[tuple[str, float, str]]:
    rows = data["rows"]
    out = []
    for kind in ("text", "image"):
        one = {r["path"]: r for r in rows
               if r.get("kind") == kind and r.get("clients") == 1 and "p50_ms" in r}
        if "gateway" in one and "direct" in one:
            out.append((f"gateway's added p50, {kind} search, 1 client",
                        one["gateway"]["p50_ms"] - one["direct"]["p50_ms"], "ms"))
        many = {r["path"]: r for r in rows
                if r.get("kind") == kind and r.get("clients", 1) > 1 and "rps" in r}
        if "gateway" in many and "direct" in many:
            out.append((f"throughput through the gateway / direct, {kind}, "
                        f"{many['gateway']['clients']} clients",
                        many["gateway"]["rps"] / many["direct"]["rps"], "ratio"))
            # The direct path's own cost differs between the sides (a cheaper encoder moves
            # the ratio), so the searches a second through the gateway are given too.
            out.append((f"searches/s through the gateway, {kind}, "
                        f"{many['gateway']['clients']} clients", many["gateway"]["rps"],
                        "requests/s"))
        cpu = {r["path"]: r["cpu_ms"] for r in rows if r.get("kind") == kind and "cpu_ms" in r}
        if "gateway" in cpu and "direct" in cpu:
            added = sum(cpu["gateway"].values()) - sum(cpu["direct"].values())
            out.append((f"gateway's added CPU per {kind} search (all processes)", added, "ms"))
            out.append((f"gateway process CPU per {kind} search", cpu["gateway"]["gateway"],
                        "ms"))
            for service in ("encoder", "index"):
                out.append((f"{service} CPU per {kind} call (direct path)",
                            cpu["direct"][service], "ms"))
    return out


VALUES = {"encoder": encoder_values, "index": index_values, "search": search_values}


def summarise(path: Path) -> list[str]:
    """A Markdown table of every run in ``path``: each quantity's old and new values in run
    order, their medians, and new / old of the medians."""
    runs: dict[str, dict[str, list[float]]] = {}
    units: dict[str, str] = {}
    with path.open() as f:
        for row in csv.DictReader(f):
            side = row["variant"].split()[0]
            runs.setdefault(row["what"], {}).setdefault(side, []).append(float(row["value"]))
            units[row["what"]] = row["unit"]
    lines = ["| quantity | unit | old, every run | new, every run | old median | new median "
             "| new / old |", "|---|---|---|---|---|---|---|"]
    for what, sides in runs.items():
        old, new = sides.get("old", []), sides.get("new", [])
        mo = statistics.median(old) if old else math.nan
        mn = statistics.median(new) if new else math.nan
        lines.append(f"| {what} | {units[what]} | {', '.join(f'{v:.3g}' for v in old)} | "
                     f"{', '.join(f'{v:.3g}' for v in new)} | {mo:.3g} | {mn:.3g} | "
                     f"{mn / mo if mo else math.nan:.2f} |")
    return lines


def stamp_of(bench: str, label: str, pair: int, side: str) -> str:
    """The file name of one run's log, JSON and metadata under --logs."""
    return f"{bench}{'-' + label if label else ''}-{pair}-{side}"


def rows_of(logs: Path, m: dict[str, Any]) -> list[dict[str, str]]:
    """The CSV rows of one finished run, from its meta ``m`` and its JSON under ``logs``."""
    stamp = stamp_of(m["bench"], m["label"], m["pair"], m["side"])
    data = json.loads((logs / f"{stamp}.json").read_text())
    command = m["command"]
    if m["label"]:
        command = command.replace(" -- ", f" --label {m['label']} -- ", 1)
    rows = []
    for what, value, unit in VALUES[m["bench"]](data):
        if m["label"] and m["label"] not in what:
            what = f"{m['label']}: {what}"
        rows.append({
            "date": m["date"], "commit": m["commit"], "machine": "dev-2core",
            "what": what, "variant": f"{m['side']} ({m['commit']})",
            "value": f"{value:.4g}", "unit": unit, "command": command,
            "note": f"{m['host']}; pair {m['pair']}; load {m['load']:.2f} at start; "
                    f"{m['wall']:.0f}s",
        })
    return rows


def write_csv(logs: Path, out: Path) -> None:
    """Every finished run under ``logs`` as rows of ``out``, in the order they were run."""
    metas = sorted((json.loads(p.read_text()) for p in logs.glob("*.meta.json")),
                   key=lambda m: m["started"])
    with out.open("w", newline="") as f:
        writer = csv.DictWriter(f, FIELDS)
        writer.writeheader()
        for m in metas:
            writer.writerows(rows_of(logs, m))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("bench", choices=[*sorted(SCRIPTS), "summary", "csv"],
                    help="summary: print the table of the runs in --out; csv: write --out anew "
                    "from the runs under --logs")
    ap.add_argument("--old", type=Path, default=Path("/tmp/bench-old"))
    ap.add_argument("--new", type=Path, default=Path("/tmp/bench-new"))
    ap.add_argument("--pairs", type=int, default=4)
    ap.add_argument("--timeout", type=float, default=600, help="seconds per run")
    ap.add_argument("--label", default="", help="added to every `what` (e.g. the data set)")
    ap.add_argument("--new-args", default="", help="more arguments for the new side's script "
                    "only, space-separated (--new-args=--no-keywords: a search the old code "
                    "could answer)")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "compare_old_new.csv")
    ap.add_argument("--logs", type=Path, default=REPO / "artifacts" / "compare_old_new")
    argv = sys.argv[1:] if argv is None else argv
    # Everything after "--" goes to each side's script as it is.
    cut = argv.index("--") if "--" in argv else len(argv)
    args = ap.parse_args(argv[:cut])
    script_args = argv[cut + 1:]
    if args.bench == "summary":
        print("\n".join(summarise(args.out)))
        return 0
    if args.bench == "csv":
        write_csv(args.logs, args.out)
        return 0
    args.logs.mkdir(parents=True, exist_ok=True)
    trees = {"old": args.old.resolve(), "new": args.new.resolve()}
    commits = {side: commit_of(tree) for side, tree in trees.items()}
    for side, tree in trees.items():
        found = imported_file(tree, SIDES[side]["modules"][args.bench])
        print(f"# {side} ({commits[side]}): {args.bench} imports {found}", flush=True)
        if not found.startswith(str(tree)):
            raise SystemExit(f"{side} imports {found}, not code under {tree}")
    for pair in range(args.pairs):
        for side in ("old", "new"):
            tree = trees[side]
            script = tree / SIDES[side]["dir"] / SCRIPTS[args.bench]
            stamp = stamp_of(args.bench, args.label, pair + 1, side)
            out_json = args.logs / f"{stamp}.json"
            extra = args.new_args.split() if side == "new" else []
            cmd = [sys.executable, str(script), *script_args, *extra, "--json", str(out_json)]
            meta = {"bench": args.bench, "label": args.label, "pair": pair + 1, "side": side,
                    "commit": commits[side], "date": datetime.date.today().isoformat(),
                    "started": time.time(), "load": os.getloadavg()[0], "host":
                    socket.gethostname(), "command": " ".join(
                        ["bench/compare_old_new.py", args.bench, "--", *script_args, *extra])}
            start = time.monotonic()
            with (args.logs / f"{stamp}.log").open("w") as log:
                proc = subprocess.run(cmd, cwd=tree, env=side_env(tree), stdout=log,
                                      stderr=subprocess.STDOUT, timeout=args.timeout)
            meta["wall"] = time.monotonic() - start
            if proc.returncode != 0 or not out_json.exists():
                print(f"pair {pair + 1} {side}: exit {proc.returncode}, see "
                      f"{args.logs / (stamp + '.log')}", flush=True)
                continue
            (args.logs / f"{stamp}.meta.json").write_text(json.dumps(meta))
            values = VALUES[args.bench](json.loads(out_json.read_text()))
            shown = "; ".join(f"{w} {v:.3f} {u}" for w, v, u in values)
            print(f"pair {pair + 1} {side}: {shown} ({meta['wall']:.0f}s, load "
                  f"{meta['load']:.1f})", flush=True)
            write_csv(args.logs, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
