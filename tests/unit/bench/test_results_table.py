"""bench/results_table.py: every results file follows the format, and docs/results.md is current."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import results_table as rt

HEADER = "date,commit,machine,what,variant,value,high,runs,unit,command,note\n"


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_committed_results_parse_and_docs_results_md_is_current() -> None:
    paths = rt.result_files()
    assert {p.stem for p in paths} >= {"bench_encoder", "bench_index", "bench_ingest"}
    committed = (Path(rt.__file__).parent.parent / "docs" / "results.md").read_text()
    assert rt.render(paths) == committed, (
        "bench/results/ changed but docs/results.md did not: run "
        "`python bench/results_table.py > docs/results.md` and commit it"
    )


def test_runs_of_one_quantity_share_a_table_in_file_order(tmp_path: Path) -> None:
    path = _write(tmp_path, "bench_x.csv", HEADER
                  + "2026-12-04,e3b95d6,dev-2core,cost,before,88,,,us,bench/x.py,idle\n"
                  + "2026-12-04,a5a69c0,dev-2core,cost,glimpse,71,,,us,,idle\n"
                  + "2026-12-04,e3b95d6,dev-2core,cost,before,1.00,,,us,,idle\n"
                  + "2026-11-27,1b03c81,dev-2core,cost,old,264,430,9,us,,\n")
    text = rt.render([path])
    assert "Commands: `bench/x.py`" in text
    assert text.count("**cost** (us)") == 1
    assert "| before | dev-2core | 88, 1.00 | 2026-12-04 | e3b95d6 | idle |" in text
    assert "| old | dev-2core | 264–430 (9 runs) |" in text


def test_json_results_are_read_like_csv(tmp_path: Path) -> None:
    path = _write(tmp_path, "bench_y.json", '[{"date": "2026-12-07", "commit": "-", '
                  '"machine": "dev-2core", "what": "parse", "value": 19.5, "unit": "us"}]')
    (run,) = rt.read_file(path)
    assert (run.variant, run.value, run.runs) == ("glimpse", 19.5, 1)


@pytest.mark.parametrize(
    ("row", "problem"),
    [
        ("2026-12-04,e3b95d6,dev-2core,cost,,,,,us,,", "value is missing"),
        ("2026-12-04,e3b95d6,dev-2core,cost,,fast,,,us,,", "value 'fast' is not a number"),
        ("2026-12-04,e3b95d6,dev-2core,cost,,nan,,,us,,", "not a finite number"),
        ("04/12/2026,e3b95d6,dev-2core,cost,,1,,,us,,", "is not YYYY-MM-DD"),
        ("2026-12-04,main,dev-2core,cost,,1,,,us,,", "commit 'main' is not a hex hash"),
        ("2026-12-04,e3b95d6,dev-2core,cost,,5,4,,us,,", "high 4.0 is below value 5.0"),
        ("2026-12-04,e3b95d6,dev-2core,cost,,5,,0,us,,", "runs must be at least 1"),
        ("2026-12-04,e3b95d6,dev-2core,cost,,5,,,us,,,extra", "more values than the header"),
    ],
)
def test_a_bad_row_is_named(tmp_path: Path, row: str, problem: str) -> None:
    path = _write(tmp_path, "bench_z.csv", HEADER + row + "\n")
    with pytest.raises(rt.ResultsError, match="bench_z.csv row 2") as caught:
        rt.read_file(path)
    assert problem in str(caught.value)


def test_unknown_fields_and_empty_files_are_refused(tmp_path: Path) -> None:
    with pytest.raises(rt.ResultsError, match="unknown field"):
        rt.read_file(_write(tmp_path, "a.csv", "date,commit,machine,what,value,unit,speed\n"
                            "2026-12-04,-,m,w,1,us,2\n"))
    with pytest.raises(rt.ResultsError, match="holds no runs"):
        rt.read_file(_write(tmp_path, "b.csv", HEADER))


def test_main_checks_and_names_unknown_benchmarks(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _write(tmp_path, "bench_ok.csv", HEADER + "2026-12-04,-,m,w,,1,,,us,,\n")
    assert rt.main(["--dir", str(tmp_path), "--check"]) == 0
    assert capsys.readouterr().out == ""
    _write(tmp_path, "bench_bad.csv", HEADER + "2026-12-04,-,m,w,,x,,,us,,\n")
    assert rt.main(["--dir", str(tmp_path), "--check"]) == 1
    assert "bench_bad.csv row 2: value 'x' is not a number" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        rt.main(["--dir", str(tmp_path), "bench_missing"])
