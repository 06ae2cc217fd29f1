"""bench/bench_index.py and bench/bench_search.py end to end at a toy size: they start the
real services, every request they time succeeds, and they print the rows the README quotes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from bench import bench_index, bench_search, common


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_bench_index_runs_every_row(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "index.json"
    assert bench_index.main(["-n", "4000", "--dim", "32", "--queries-n", "60",
                             "--http-requests", "40", "--nprobes", "4,8", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    for line in ("train + add to IVF", "structure: IVF", "| service (its choice) |",
                 "| raw Faiss, best at ≥ the same recall |", "exact, flat index below",
                 "in-process, one at a time:", "HTTP 1 client:",
                 "ratio HTTP 8 clients / in-process one at a time:", "low-memory"):
        assert line in printed
    result = json.loads(out.read_text())
    assert result["tuned"]["query_recall10"] >= 0.9
    for run in result["http"].values():
        assert run["one"]["errors"] == 0 and run["eight"]["errors"] == 0
        assert run["eight"]["qps"] > 0 and 0 < run["one"]["client_cpu_ms"] < 50


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_bench_search_compares_both_paths(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "search.json"
    assert bench_search.main(["--requests", "24", "--images", "20", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "text   1 client(s): gateway adds" in printed
    assert "image  8 client(s): gateway adds" in printed
    rows = json.loads(out.read_text())["rows"]
    timed = [r for r in rows if "rps" in r]
    # Both paths, both kinds, 1 and 8 clients; every request answered (errors raise).
    assert {(r["kind"], r["clients"], r["path"]) for r in timed} == {
        (kind, clients, path) for kind in ("text", "image") for clients in (1, 8)
        for path in ("direct", "gateway")}
    assert all(r["rps"] > 0 and np.isfinite(r["p50_ms"]) for r in timed)


def test_keep_alive_client_reads_a_whole_answer(tmp_path: Path) -> None:
    # The benchmark's own client against a real index process: status and body intact.
    from tests.support.procs import ServiceProcess

    proc = ServiceProcess("glimpse.index.main",
                          {"INDEX_DATA_DIR": str(tmp_path / "i"), "INDEX_DIM": "4"},
                          tmp_path / "index.log")
    proc.start(60)
    try:
        client = common.KeepAliveClient(proc.url)
        try:
            for _ in range(3):  # one connection, several exchanges
                status, body = client.post("/v1/search", b'{"vectors": [[1, 0, 0, 0]]}')
                assert (status, json.loads(body)) == (200, {"results": [[]], "space": "default"})
            status, body = client.post("/v1/search", b'{"vectors": []}')
            assert status == 422 and json.loads(body)["error_type"] == "validation_error"
        finally:
            client.close()
    finally:
        proc.stop()
