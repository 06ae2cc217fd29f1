"""bench/bench_faiss.py: the data readers, ground truth, and every subcommand on tiny sizes."""

from __future__ import annotations

import csv
from pathlib import Path

import httpx
import numpy as np
import pytest

from bench import bench_faiss as bench
from glimpse.contracts.vectors import encode_vector

# --- texmex and .npy readers ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("suffix", "dtype"), [(".fvecs", np.float32), (".ivecs", np.int32), (".bvecs", np.uint8)]
)
def test_vecs_files_round_trip(tmp_path: Path, suffix: str, dtype: type) -> None:
    rows = (np.arange(5 * 3) * 7 % 251).reshape(5, 3).astype(dtype)
    path = tmp_path / f"x{suffix}"
    bench.write_vecs(path, rows)
    assert path.stat().st_size == 5 * (4 + 3 * np.dtype(dtype).itemsize)
    assert np.array_equal(bench.read_vecs(path), rows)
    assert np.array_equal(bench.read_vecs(path, count=2), rows[:2])


def test_fvecs_reader_matches_the_texmex_layout_byte_for_byte(tmp_path: Path) -> None:
    # Written by hand: int32 dimension, then the float32 values, per row.
    path = tmp_path / "hand.fvecs"
    path.write_bytes(
        np.array([2], "<i4").tobytes()
        + np.array([1.5, -2.0], "<f4").tobytes()
        + np.array([2], "<i4").tobytes()
        + np.array([0.25, 8.0], "<f4").tobytes()
    )
    assert bench.read_vecs(path).tolist() == [[1.5, -2.0], [0.25, 8.0]]


def test_vecs_reader_refuses_broken_files(tmp_path: Path) -> None:
    torn = tmp_path / "torn.fvecs"
    bench.write_vecs(torn, np.ones((3, 4), np.float32))
    torn.write_bytes(torn.read_bytes()[:-3])
    with pytest.raises(ValueError, match="whole number"):
        bench.read_vecs(torn)
    mixed = tmp_path / "mixed.ivecs"
    mixed.write_bytes(np.array([2, 1, 2, 3, 1, 2], "<i4").tobytes())  # row 2 claims d=3
    with pytest.raises(ValueError, match="varying dimension"):
        bench.read_vecs(mixed)
    with pytest.raises(ValueError, match="unknown vector file type"):
        bench.read_vecs(tmp_path / "x.txt")


def write_texmex(folder: Path, base: np.ndarray, queries: np.ndarray) -> np.ndarray:
    folder.mkdir()
    bench.write_vecs(folder / "tiny_base.fvecs", base)
    bench.write_vecs(folder / "tiny_query.fvecs", queries)
    bench.write_vecs(folder / "tiny_learn.fvecs", base[:50])
    # Deliberately not the true neighbours: the reader must take the file's word for it.
    truth = np.tile(np.arange(100, dtype=np.int32), (len(queries), 1))
    bench.write_vecs(folder / "tiny_groundtruth.ivecs", truth)
    return truth


def test_texmex_folder_loads_base_queries_learn_and_ground_truth(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    base = rng.random((200, 8), np.float32)
    truth = write_texmex(tmp_path / "tiny", base, rng.random((7, 8), np.float32))
    data = bench.load_texmex(tmp_path / "tiny", None, None, None)
    assert data.base.shape == (200, 8) and data.queries.shape == (7, 8)
    assert data.learn is not None and data.learn.shape == (50, 8)
    assert data.metric == "l2"
    assert data.truth is not None and np.array_equal(data.truth, truth)
    # A part of the base makes the file's ground truth wrong: it is recomputed instead.
    part = bench.load_texmex(tmp_path / "tiny", 100, 5, None)
    assert part.base.shape == (100, 8) and part.queries.shape == (5, 8) and part.truth is None
    assert any("recomputed" in note for note in part.notes)


def test_npy_file_with_held_out_queries_and_metric_from_the_norms(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((300, 16)).astype(np.float32)
    np.save(tmp_path / "raw.npy", x)
    data = bench.load_npy(tmp_path / "raw.npy", None, None, None, 20, None, 0)
    assert data.base.shape == (280, 16) and data.queries.shape == (20, 16)
    assert data.metric == "l2"
    # The held-out queries are rows of the file that are not in the base.
    base_rows = {row.tobytes() for row in data.base}
    assert all(q.tobytes() not in base_rows for q in data.queries)
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    np.save(tmp_path / "unit.npy", unit)
    np.save(tmp_path / "q.npy", unit[:5])
    np.save(tmp_path / "gt.npy", np.arange(50).reshape(5, 10))
    data = bench.load_npy(
        tmp_path / "unit.npy", tmp_path / "q.npy", tmp_path / "gt.npy", None, 100, None, 0
    )
    assert data.metric == "ip" and data.base.shape == (300, 16) and len(data.queries) == 5
    assert data.truth is not None and data.truth[4, 9] == 49


def test_ground_truth_is_exact_and_cached(tmp_path: Path) -> None:
    data = bench.synthetic_clip(500, 10, 32, seed=2)
    truth = bench.ground_truth(data, tmp_path)
    scores = data.queries @ data.base.T
    assert np.array_equal(truth[:, 0], scores.argmax(axis=1))
    assert truth.shape == (10, bench.TRUTH_K)
    (cached,) = tmp_path.glob("gt_*.npy")
    again = bench.synthetic_clip(500, 10, 32, seed=2)
    assert np.array_equal(bench.ground_truth(again, tmp_path), truth)
    assert len(list(tmp_path.glob("gt_*.npy"))) == 1 and cached.is_file()


def test_synthetic_sets_have_the_promised_shape_and_metric() -> None:
    clip = bench.synthetic_clip(400, 10, 64, seed=0)
    assert clip.base.shape == (400, 64) and clip.metric == "ip"
    assert np.allclose(np.linalg.norm(clip.base, axis=1), 1, atol=1e-5)
    sift = bench.synthetic_sift(400, 10, 128, seed=0)
    assert sift.metric == "l2" and sift.base.min() >= 0
    assert np.array_equal(sift.base, np.rint(sift.base))


def glimpse_transport(vectors: dict[int, np.ndarray]) -> httpx.MockTransport:
    """The two index-service routes the exporter uses, answering as api.py does."""

    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/stats":
            return httpx.Response(200, json={"count": len(vectors), "dim": 4})
        item_id = int(request.url.path.split("/")[3])
        if item_id not in vectors:
            return httpx.Response(404, json={"error": "no such item", "error_type": "not_found"})
        assert request.url.params["encoding"] == "base64"
        body = {"id": item_id, "dim": 4, "vector": encode_vector(vectors[item_id])}
        return httpx.Response(200, json=body)

    return httpx.MockTransport(handle)


def test_vectors_are_exported_from_a_glimpse_index_skipping_deleted_ids() -> None:
    vectors = {i: np.full(4, i, np.float32) for i in (1, 2, 5)}  # 3 and 4 were deleted
    with httpx.Client(base_url="http://index", transport=glimpse_transport(vectors)) as client:
        ids, x = bench.fetch_glimpse("http://index", client=client)
        assert ids.tolist() == [1, 2, 5]
        assert x.tolist() == [[1.0] * 4, [2.0] * 4, [5.0] * 4]
        ids, _ = bench.fetch_glimpse("http://index", client=client, limit=2)
        assert ids.tolist() == [1, 2]


def test_vectors_are_exported_from_the_real_index_service(tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from glimpse.index.config import Settings
    from glimpse.index.main import create_app
    from tests.unit.index.helpers import wait_ready

    rng = np.random.default_rng(3)
    x = rng.standard_normal((6, 8)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    items = [
        {"vector": encode_vector(v), "path": f"img/{i}.jpg", "key": f"k{i}"}
        for i, v in enumerate(x)
    ]
    settings = Settings(data_dir=tmp_path / "index", dim=8, snapshot_interval_s=0)
    with TestClient(create_app(settings)) as client:
        wait_ready(client)
        added = client.post("/v1/items", json={"items": items}).json()["items"]
        ids = [item["id"] for item in added]
        assert client.delete(f"/v1/items/{ids[2]}").status_code == 204
        got_ids, got = bench.fetch_glimpse("http://testserver", client=client)
    assert got_ids.tolist() == ids[:2] + ids[3:]
    # The service stores float16: the export is the stored vector, within its rounding.
    assert np.allclose(got, np.delete(x, 2, axis=0), atol=1e-3)


# --- small helpers -------------------------------------------------------------------------


def test_pareto_keeps_only_points_nothing_beats_on_both_axes() -> None:
    rows = [
        {"recall@10": 0.5, "qps": 1000.0},
        {"recall@10": 0.4, "qps": 500.0},  # beaten by the first on both
        {"recall@10": 0.9, "qps": 100.0},
        {"recall@10": 0.8, "qps": 50.0},  # beaten by the third
    ]
    assert [r["recall@10"] for r in bench.pareto(rows)] == [0.5, 0.9]


def test_nlist_rule_is_a_power_of_two_near_four_root_n() -> None:
    assert bench.auto_nlist(1_000_000) == 4096
    assert bench.auto_nlist(100_000) == 1024
    assert bench.auto_nlist(600) == 16  # never fewer than 16 lists, never < 39 vectors a list
    assert bench.default_m(512) == 32 and bench.default_m(96) == 32 and bench.default_m(40) == 8


# --- every subcommand, --quick on tiny sizes -----------------------------------------------

TINY = ["--quick", "--n", "1200", "--nq", "30", "--d", "32"]


def run_quick(tmp_path: Path, *argv: str) -> tuple[bench.Experiment, list[Path]]:
    exp, written = bench.run([*argv, *TINY, "--out", str(tmp_path)])
    for path in written:
        assert path.stat().st_size > 0
        if path.suffix == ".png":
            assert path.read_bytes()[:4] == b"\x89PNG"
            assert path.stat().st_size < 150_000
    return exp, written


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


def test_flat_measures_exact_search_with_perfect_recall(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    exp, written = run_quick(tmp_path, "flat")
    assert [p.name for p in written] == ["flat_clip32.csv", "flat_clip32_sweep.png"]
    rows = read_rows(written[0])
    assert [int(r["batch"]) for r in rows] == [1, 16, 30]
    assert all(float(r["recall@10"]) == 1.0 and float(r["ms_per_query"]) > 0 for r in rows)
    out = capsys.readouterr().out
    assert "recall@10" in out and "synthetic CLIP-like" in out


def test_pq_sweeps_sub_quantizers_and_bits(tmp_path: Path) -> None:
    exp, written = run_quick(tmp_path, "pq", "--m", "4,8", "--nbits", "4,6")
    rows = read_rows(written[0])
    assert {(r["M"], r["nbits"]) for r in rows} == {("4", "4"), ("4", "6"), ("8", "4"), ("8", "6")}
    by_name = {r["index"]: r for r in rows}
    assert by_name["PQ8x6"]["code_bytes"] == "6"
    # More bits and more sub-quantizers encode more finely.
    assert float(by_name["PQ8x6"]["recall@10"]) > float(by_name["PQ4x4"]["recall@10"])


def test_ivfpq_sweeps_lists_and_probes_and_skips_what_the_data_cannot_fill(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    exp, written = run_quick(
        tmp_path,
        "ivfpq",
        "--nlist",
        "16,1024",
        "--nprobe",
        "1,16",
        "--pq-m",
        "8",
        "--pq-nbits",
        "6",
    )
    rows = read_rows(written[0])
    measured = [r for r in rows if not r.get("skipped")]
    assert [(r["nlist"], r["nprobe"]) for r in measured] == [("16", "1"), ("16", "16")]
    # Visiting every list finds at least what one list finds.
    assert float(measured[1]["recall@10"]) >= float(measured[0]["recall@10"])
    assert "skipped IVF1024" in capsys.readouterr().out


def test_compare_sweeps_factories_and_plots_the_frontier(tmp_path: Path) -> None:
    exp, written = run_quick(
        tmp_path,
        "compare",
        "Flat",
        "IVF16,PQ8x4fs",
        "IVF16,PQ8x4fs,RFlat",
        "NotAnIndex",
        "--nprobe",
        "1,4",
        "--k-factor",
        "1,8",
    )
    assert [p.name for p in written][-1] == "compare_clip32_frontier.png"
    rows = read_rows(written[0])
    assert any(r["index"] == "NotAnIndex" and r["skipped"] for r in rows)
    refined = {
        (r["nprobe"], r["k_factor"]): float(r["recall@10"])
        for r in rows
        if r["index"] == "IVF16,PQ8x4fs,RFlat"
    }
    plain = {r["nprobe"]: float(r["recall@10"]) for r in rows if r["index"] == "IVF16,PQ8x4fs"}
    assert set(refined) == {("1", "1.0"), ("1", "8.0"), ("4", "1.0"), ("4", "8.0")}
    # Re-ranking 8 candidates per hit with the exact vectors beats the 4-bit codes alone.
    assert refined[("4", "8.0")] > plain["4"]
    flat = next(r for r in rows if r["index"] == "Flat")
    assert float(flat["recall@10"]) == 1.0 and float(flat["bytes_per_vector"]) >= 4 * 32


def test_tune_finds_a_setting_that_reaches_the_target(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    exp, written = run_quick(
        tmp_path, "tune", "--factory", "IVF16,PQ8x4fs,RFlat", "--target", "0.9"
    )
    assert exp.summary is not None and " reached: " in exp.summary
    rows = read_rows(written[0])
    (chosen,) = [r for r in rows if r["chosen"] == "True"]
    assert float(chosen["recall_at_k"]) >= 0.9
    printed = capsys.readouterr().out
    assert "tune IVF16,PQ8x4fs,RFlat" in printed
    # The index service on the same data, next to the best raw setting at its recall.
    for line in ("service: chose ", "| service (its choice) |",
                 "| raw Faiss, best at ≥ the same recall |", "exact: service `\"exact\": true`",
                 "service / best raw one-query cost"):
        assert line in printed and line in exp.summary


def test_gpu_says_skipped_and_succeeds_without_a_gpu(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if bench.gpu_count() > 0:
        pytest.skip("a GPU is visible: the comparison itself would run")
    assert bench.main(["gpu", *TINY, "--out", str(tmp_path)]) == 0
    assert "gpu: skipped: this faiss build has no GPU support" in capsys.readouterr().out
    assert not list(tmp_path.iterdir())


def test_bad_data_source_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="not 'synthetic'"):
        bench.run(["flat", "--data", str(tmp_path / "nothing.bin"), "--out", str(tmp_path)])
