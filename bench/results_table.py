"""Print the measured results under bench/results/ as Markdown tables (docs/results.md).

Each file under bench/results/ holds the runs of one benchmark: a CSV with a header row, or a
JSON list of objects, one row per run (bench/results/README.md has the format). The rows of
one quantity, variant and machine are shown in one line, their values in file order, so a
reader sees every run rather than the best.

    python bench/results_table.py                  # every benchmark
    python bench/results_table.py bench_ingest     # one file (its name without extension)
    python bench/results_table.py --check          # validate every file, print nothing
    python bench/results_table.py > docs/results.md
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

RESULTS_DIR = Path(__file__).resolve().parent / "results"
REQUIRED = ("date", "commit", "machine", "what", "value", "unit")
OPTIONAL = ("variant", "high", "runs", "command", "note")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_COMMIT = re.compile(r"^([0-9a-f]{7,40}|-)$")


class ResultsError(ValueError):
    """A results file that does not follow bench/results/README.md; the message names the row."""


@dataclass(frozen=True)
class Run:
    date: str
    commit: str
    machine: str
    what: str
    value: float
    unit: str
    variant: str = "glimpse"
    high: float | None = None
    runs: int = 1
    command: str = ""
    note: str = ""
    text: str = ""  # the value as recorded, so 1.00 is not shown as 1
    high_text: str = ""

    def shown(self) -> str:
        text = self.text or _number(self.value)
        if self.high is not None:
            text = f"{text}–{self.high_text or _number(self.high)}"
        return f"{text} ({self.runs} runs)" if self.runs > 1 else text


def _number(value: float) -> str:
    if value == int(value) and abs(value) < 1e15:
        return f"{int(value):,}"
    return f"{value:,.6g}"


def _float(raw: object, field: str, where: str) -> float:
    try:
        value = float(str(raw).replace(",", ""))
    except ValueError:
        raise ResultsError(f"{where}: {field} {raw!r} is not a number") from None
    if not math.isfinite(value):
        raise ResultsError(f"{where}: {field} {raw!r} is not a finite number")
    return value


def parse_row(row: dict[str, object], where: str) -> Run:
    """One run from a file's row, every field checked; ``where`` names the row in errors."""
    if None in row:
        raise ResultsError(f"{where}: more values than the header names")
    unknown = sorted(set(row) - set(REQUIRED) - set(OPTIONAL))
    if unknown:
        raise ResultsError(f"{where}: unknown field(s) {', '.join(unknown)}")
    text = {key: "" if value is None else str(value).strip() for key, value in row.items()}
    for field in REQUIRED:
        if not text.get(field):
            raise ResultsError(f"{where}: {field} is missing")
    if not _DATE.match(text["date"]):
        raise ResultsError(f"{where}: date {text['date']!r} is not YYYY-MM-DD")
    if not _COMMIT.match(text["commit"]):
        raise ResultsError(f"{where}: commit {text['commit']!r} is not a hex hash or '-'")
    value = _float(text["value"], "value", where)
    high = _float(text["high"], "high", where) if text.get("high") else None
    if high is not None and high < value:
        raise ResultsError(f"{where}: high {high} is below value {value}")
    runs = int(_float(text["runs"], "runs", where)) if text.get("runs") else 1
    if runs < 1:
        raise ResultsError(f"{where}: runs must be at least 1")
    return Run(
        date=text["date"], commit=text["commit"], machine=text["machine"], what=text["what"],
        value=value, unit=text["unit"], variant=text.get("variant") or "glimpse", high=high,
        runs=runs, command=text.get("command", ""), note=text.get("note", ""),
        text=text["value"], high_text=text.get("high", ""),
    )


def read_file(path: Path) -> list[Run]:
    """Every run of one results file (CSV with a header, or a JSON list of objects)."""
    if path.suffix == ".csv":
        with path.open(newline="", encoding="utf-8") as handle:
            rows: list[dict[str, object]] = list(csv.DictReader(handle))
        first_line = 2  # line 1 is the header
    elif path.suffix == ".json":
        loaded = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(loaded, list) or not all(isinstance(row, dict) for row in loaded):
            raise ResultsError(f"{path.name}: must be a JSON list of objects")
        rows, first_line = loaded, 1
    else:
        raise ResultsError(f"{path.name}: only .csv and .json files hold results")
    if not rows:
        raise ResultsError(f"{path.name}: holds no runs")
    return [parse_row(row, f"{path.name} row {first_line + i}") for i, row in enumerate(rows)]


def result_files(directory: Path = RESULTS_DIR) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.suffix in (".csv", ".json"))


def table(runs: Sequence[Run]) -> list[str]:
    """Markdown lines: per quantity, one line per (variant, machine, note), runs in file order."""
    groups: dict[tuple[str, str], dict[tuple[str, str, str], list[Run]]] = {}
    for run in runs:
        lines_of = groups.setdefault((run.what, run.unit), {})
        lines_of.setdefault((run.variant, run.machine, run.note), []).append(run)
    lines: list[str] = []
    for (what, unit), lines_of in groups.items():
        lines += [
            "",
            f"**{_cell(what)}** ({_cell(unit)})",
            "",
            "| variant | machine | every run | date | commit | note |",
            "|---|---|---|---|---|---|",
        ]
        for (variant, machine, note), group in lines_of.items():
            commits = _joined(run.commit for run in group)
            each_commit = "," in commits  # then every value names the code it measured
            values = ", ".join(
                f"{run.shown()} ({run.commit})" if each_commit else run.shown() for run in group
            )
            cells = [
                variant, machine, values, _joined(run.date for run in group),
                "by run" if each_commit else commits, note,
            ]
            lines.append("| " + " | ".join(_cell(cell) for cell in cells) + " |")
    return lines


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _joined(values: Iterable[str]) -> str:
    return ", ".join(dict.fromkeys(values))


def render(paths: Sequence[Path]) -> str:
    out = [
        "# Measured results",
        "",
        "Generated by `python bench/results_table.py > docs/results.md` from the files under",
        "[bench/results/](../bench/results/) (their format: "
        "[bench/results/README.md](../bench/results/README.md)); do not edit by hand.",
        "Each line is one variant of a quantity on one machine, its runs in order; a range",
        "`a–b (n runs)` is an older log that kept only the range of its runs.",
    ]
    for path in paths:
        runs = read_file(path)
        out += ["", f"## {path.stem}"]
        commands = list(dict.fromkeys(run.command for run in runs if run.command))
        if commands:
            out += ["", "Commands: " + "; ".join(f"`{command}`" for command in commands)]
        out += table(runs)
    return "\n".join(out) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("benchmarks", nargs="*", help="file names without extension")
    parser.add_argument("--check", action="store_true", help="validate only")
    parser.add_argument("--dir", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    paths = result_files(args.dir)
    if args.benchmarks:
        known = {path.stem: path for path in paths}
        missing = [name for name in args.benchmarks if name not in known]
        if missing:
            parser.error(f"no results for {', '.join(missing)} (have: {', '.join(known)})")
        paths = [known[name] for name in args.benchmarks]
    try:
        text = render(paths)
    except (ResultsError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        print(f"results_table: {exc}", file=sys.stderr)
        return 1
    if not args.check:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
