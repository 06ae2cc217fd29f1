"""Filtered search on the Faiss backend (glimpse/index/filters.py): the SQL over the store
agrees with the reference predicate on random metas; searches return only matching items and
the exact filtered top k (exact path) or nearly (the IVF path with the selector, measured at
50 %, 5 %, 1 %, 0.5 % and 0.05 %); bad filters are 422s naming the field."""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

import glimpse.index.filters as filters
from glimpse.contracts.filters import SearchFilters, date_start
from glimpse.index.filters import (
    distance_km,
    facets_of_rows,
    matches,
    matching_ids,
    milvus_expr,
    milvus_is_wider,
    near_box,
)
from glimpse.index.index import VectorIndex
from glimpse.index.store import NewItem, Store
from tests.unit.index.helpers import as_stored, b64, clustered

DIM = 32
FOLDERS = ["A", "A/B", "A/B/C", "AB", "D", "D/A", ""]
CAMERAS = [["google", "pixel", "7"], ["canon", "eos", "r5"], ["apple", "iphone", "12"]]
WORDS = ["beach", "zanzibar", "sand & sea", "100%_sure", "x"]


def random_meta(rng: random.Random) -> dict[str, Any]:
    meta: dict[str, Any] = {"folder": rng.choice(FOLDERS), "width": rng.choice([640, 1920, 4000])}
    if rng.random() < 0.9:
        meta["taken_ts"] = date_start(f"{rng.randint(2015, 2024)}-{rng.randint(1, 12):02d}") + \
            rng.randint(0, 27 * 86400)
    if rng.random() < 0.7:
        meta["camera"] = rng.choice(CAMERAS)
    if rng.random() < 0.5:
        meta["keywords"] = rng.sample(WORDS, rng.randint(1, 3))
    if rng.random() < 0.6:
        meta["lat"], meta["lon"] = rng.uniform(-80, 80), rng.uniform(-180, 180)
    if rng.random() < 0.95:
        meta["file_type"] = rng.choice(["jpeg", "png", "webp"])
    return meta


def path_of(n: int, meta: dict[str, Any]) -> str:
    return f"{meta['folder']}/{n}.jpg" if meta.get("folder") else f"{n}.jpg"


def random_filter(rng: random.Random) -> SearchFilters:
    body: dict[str, Any] = {}
    if rng.random() < 0.3:
        body["taken_after"] = f"{rng.randint(2015, 2024)}"
    if rng.random() < 0.3:
        body["taken_before"] = f"{rng.randint(2025, 2026)}-0{rng.randint(1, 9)}"
    if rng.random() < 0.3:
        body["folder"] = rng.sample(["A", "A/B", "D", "AB", "A/B/C"], rng.randint(1, 2))
    if rng.random() < 0.3:
        body["camera"] = rng.choice(["Pixel", "canon", "EOS R5", "nokia", "pixel 12"])
    if rng.random() < 0.3:
        body["keyword"] = rng.sample(WORDS, rng.randint(1, 2))
    if rng.random() < 0.2:
        body["has_location"] = rng.random() < 0.5
    if rng.random() < 0.2:
        body["near"] = {"lat": rng.uniform(-70, 70), "lon": rng.uniform(-180, 180),
                        "radius_km": rng.choice([500.0, 3000.0, 19_000.0])}
    if rng.random() < 0.2:
        south = rng.uniform(-80, 40)
        body["bbox"] = {"south": south, "north": south + 40, "west": rng.uniform(-180, 180),
                        "east": rng.uniform(-180, 180)}
    if rng.random() < 0.2:
        body["type"] = rng.sample(["jpeg", "png", "gif"], 2)
    if rng.random() < 0.2:
        body["min_width"] = 1920
    return SearchFilters.model_validate(body)


@pytest.fixture(scope="module")
def metas() -> list[dict[str, Any]]:
    rng = random.Random(26)
    return [random_meta(rng) for _ in range(3000)]


def test_the_columns_follow_the_store_and_agree_with_the_reference(
        tmp_path: Path, metas: list[dict[str, Any]]) -> None:
    """Random filters over random metas, before and after adds, deletes and updates of path
    and meta (which keep their rows' sequence numbers)."""
    store = Store(tmp_path / "items.db", DIM)
    vectors = clustered(len(metas), DIM).astype(np.float16)
    half = len(metas) // 2
    rows = {}  # id -> (path, meta) of the live items
    for part in (range(half), range(half, len(metas))):
        _, ids, _ = store.add([NewItem(f"k{n}", path_of(n, metas[n]), metas[n], vectors[n])
                               for n in part])
        rows.update({int(i): (path_of(n, metas[n]), metas[n]) for i, n in zip(ids, part,
                                                                                strict=True)})
        rng = random.Random(len(rows))
        for item_id in rng.sample(sorted(rows), 50):
            store.delete(item_id)
            del rows[item_id]
        for item_id in rng.sample(sorted(rows), 50):
            path, meta = f"moved/{rng.choice(FOLDERS)}/{item_id}.jpg", random_meta(rng)
            assert store.update(item_id, path, meta)
            rows[item_id] = (path, meta)
        nonempty = 0
        for _ in range(150):
            f = random_filter(rng)
            expected = [i for i, (p, m) in sorted(rows.items()) if matches(f, p, m)]
            assert matching_ids(store, f).tolist() == expected, f
            nonempty += bool(expected)
        assert nonempty > 50  # the filters were not all empty
    store.close()


def test_near_box_holds_its_circle() -> None:
    rng = random.Random(2)
    for _ in range(2000):
        f = SearchFilters.model_validate({"near": {
            "lat": rng.uniform(-89, 89), "lon": rng.uniform(-180, 180),
            "radius_km": rng.choice([1.0, 100.0, 2000.0, 9000.0])}})
        assert f.near is not None
        box = near_box(f)
        assert box is not None
        # A point on the circle's edge, in a random direction, is inside the box.
        bearing = rng.uniform(0, 2 * np.pi)
        d = f.near.radius_km / filters.EARTH_RADIUS_KM * 0.999
        p1, l1 = np.radians(f.near.lat), np.radians(f.near.lon)
        p2 = np.arcsin(np.sin(p1) * np.cos(d) + np.cos(p1) * np.sin(d) * np.cos(bearing))
        l2 = l1 + np.arctan2(np.sin(bearing) * np.sin(d) * np.cos(p1),
                             np.cos(d) - np.sin(p1) * np.sin(p2))
        lat, lon = float(np.degrees(p2)), (float(np.degrees(l2)) + 540) % 360 - 180
        assert distance_km(f.near.lat, f.near.lon, lat, lon) <= f.near.radius_km
        assert matches(f, "a.jpg", {"lat": lat, "lon": lon}), (f.near, lat, lon, box)
        south, west, north, east = box
        assert south <= lat <= north
        assert (west <= lon <= east) if west <= east else (lon >= west or lon <= east)


def test_milvus_expressions_escape_their_values() -> None:
    f = SearchFilters.model_validate({"folder": ['Say "hi"\\50%_off'], "camera": "a\\b Pro"})
    expr = milvus_expr(f)
    assert 'path like "Say \\"hi\\"\\\\50%"' in expr  # cut before the wildcard
    assert 'json_contains_all(meta["camera"], ["a\\\\b", "pro"])' in expr
    assert milvus_expr(SearchFilters()) == ""
    assert milvus_is_wider(f) and not milvus_is_wider(SearchFilters(folder=["plain"]))


# -- through the index service --------------------------------------------------------------


def _add(client: TestClient, vectors: np.ndarray, metas: list[dict[str, Any]]) -> list[int]:
    ids: list[int] = []
    for start in range(0, len(vectors), 2000):
        body = {"items": [
            {"vector": b64(v), "path": path_of(start + i, m),
             "key": f"key-{start + i}", "meta": m}
            for i, (v, m) in enumerate(zip(vectors[start:start + 2000],
                                           metas[start:start + 2000], strict=True))]}
        answer = client.post("/v1/items", json=body)
        assert answer.status_code == 200, answer.text
        ids += [item["id"] for item in answer.json()["items"]]
    return ids


def _truth(stored: np.ndarray, queries: np.ndarray, allowed: np.ndarray, k: int
           ) -> list[set[int]]:
    """Exact filtered top k (indices into ``stored``) per query."""
    scores = queries @ stored[allowed].T
    top = np.argsort(-scores, axis=1)[:, :k]
    return [set(allowed[row].tolist()) for row in top]


def _search(client: TestClient, queries: np.ndarray, k: int, body: dict[str, Any]
            ) -> list[list[dict[str, Any]]]:
    answer = client.post("/v1/search", json={"vectors": [b64(q) for q in queries], "k": k,
                                             **body})
    assert answer.status_code == 200, answer.text
    return list(answer.json()["results"])


def test_filtered_search_returns_the_exact_filtered_top_k(
        client: TestClient, metas: list[dict[str, Any]]) -> None:
    vectors = clustered(len(metas), DIM, seed=3)
    ids = _add(client, vectors, metas)
    stored = as_stored(vectors)
    queries = clustered(20, DIM, seed=4)
    rng = random.Random(5)
    for _ in range(25):
        f = random_filter(rng)
        allowed = np.asarray([i for i, m in enumerate(metas) if matches(f, path_of(i, m), m)],
                             dtype=np.int64)
        body = {"filters": f.model_dump(exclude_none=True)}
        results = _search(client, queries, 10, body)
        if len(allowed) == 0:
            assert all(row == [] for row in results)
            continue
        truth = _truth(stored, queries, allowed, 10)
        for row, want in zip(results, truth, strict=True):
            assert len(row) == min(10, len(allowed))  # k come back whenever k match
            assert all(matches(f, hit["path"], hit["meta"]) for hit in row)
            got = {ids.index(hit["id"]) for hit in row}
            assert len(got & want) >= len(want) - 1  # a float16 tie may swap the last one
    # The excluded ids stay out of a filtered search too.
    f = SearchFilters.model_validate({"folder": ["A/B"]})
    first = _search(client, queries[:1], 5, {"filters": {"folder": ["A/B"]}})[0]
    again = _search(client, queries[:1], 5, {"filters": {"folder": ["A/B"]},
                                             "exclude_ids": [first[0]["id"]]})[0]
    assert first[0]["id"] not in {h["id"] for h in again} and len(again) == 5
    assert all(matches(f, h["path"], h["meta"]) for h in again)


@pytest.mark.parametrize(
    ("body", "field"),
    [({"colour": "red"}, "colour"), ({"taken_after": "June"}, "taken_after"),
     ({"near": {"lat": 1.0, "lon": 2.0}}, "radius_km"),
     ({"near": {"lat": 1.0, "lon": 2.0, "radius_km": 0}}, "radius_km"),
     ({"near": {"lat": 1.0, "lon": 2.0, "radius_km": 20_001}}, "radius_km"),
     ({"folder": ["A/../B"]}, "folder"), ({"min_width": 0}, "min_width")],
)
def test_a_bad_filter_is_a_422_naming_its_field(client: TestClient, body: dict[str, Any],
                                                field: str) -> None:
    answer = client.post("/v1/search", json={"vectors": [[1.0] * DIM], "filters": body})
    assert answer.status_code == 422
    assert field in answer.json()["error"]


def test_ivf_with_the_selector_keeps_recall_at_every_selectivity(
        client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    """The IVF path forced at every share (the exact path is exact by construction): recall@10
    against the exact filtered top 10 stays >= 0.95 from 50 % down to 0.05 %."""
    n = 20_000
    vectors = clustered(n, DIM, clusters=200, seed=6)
    rng = np.random.default_rng(7)
    epoch = date_start("2000")
    days = 1000 * 86400
    # Dates spread evenly over 1000 days: "taken before day d" keeps a random share d / 1000.
    taken = epoch + np.floor(rng.random(n) * days)
    ids = _add(client, vectors, [{"taken_ts": float(t)} for t in taken])
    rebuilt = client.post("/v1/index/rebuild", json={"factory": "IVF64,PQ8x4", "wait": True})
    assert rebuilt.status_code == 200, rebuilt.text
    stored = as_stored(vectors)
    # Queries near the collection's own points, as the tuner's are (an unfiltered search of
    # these measured recall@10 0.97 at the tuned nprobe).
    near = np.random.default_rng(8)
    queries = vectors[near.choice(n, 100, replace=False)] + near.normal(
        scale=0.3 / np.sqrt(DIM), size=(100, DIM)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    monkeypatch.setattr(filters, "CODES_PER_ROW", 10**9)
    monkeypatch.setattr(filters, "EXACT_ROWS", 0)
    for share in (0.5, 0.05, 0.01, 0.005, 0.0005):
        before = epoch + round(share * days)
        allowed = np.flatnonzero(taken < before)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(before))
        truth = _truth(stored, queries, allowed, 10)
        started = time.perf_counter()
        results = _search(client, queries, 10, {"filters": {"taken_before": stamp}})
        ms = (time.perf_counter() - started) * 1000
        hits = sum(len({ids.index(h["id"]) for h in row} & want)
                   for row, want in zip(results, truth, strict=True))
        recall = hits / sum(len(w) for w in truth)
        print(f"share {share:.2%} ({len(allowed)} items): recall@10 {recall:.3f}, "
              f"{ms:.1f} ms for {len(queries)} queries")
        assert recall >= 0.95, (share, recall)


def test_a_kept_selection_follows_adds_deletes_and_moves(client: TestClient) -> None:
    """The same filter sent again after each change (its selection is kept between searches)
    sees the item added, moved out and back, and deleted."""
    vectors = clustered(40, DIM, seed=12)
    ids = _add(client, vectors[:30], [{"folder": "A" if n % 3 else "D"} for n in range(30)])
    query = vectors[35:36]
    body = {"filters": {"folder": ["A"]}}

    def found() -> set[int]:
        return {h["id"] for h in _search(client, query, 30, body)[0]}

    before = found()
    assert before == {i for n, i in enumerate(ids) if n % 3}
    added = client.post("/v1/items", json={"items": [
        {"vector": b64(vectors[35]), "path": "A/new.jpg", "key": "new", "meta": {}}]})
    assert added.status_code == 200, added.text
    new = added.json()["items"][0]["id"]
    assert found() == before | {new}
    assert client.patch(f"/v1/items/{new}", json={"path": "D/moved.jpg"}).status_code == 200
    assert found() == before
    assert client.patch(f"/v1/items/{new}", json={"path": "A/back.jpg"}).status_code == 200
    assert found() == before | {new}
    assert client.delete(f"/v1/items/{new}").status_code == 204
    assert found() == before
    # An excluded id stays out while the kept selection still holds it.
    first = min(before)
    assert {h["id"] for h in _search(client, query, 30, {**body, "exclude_ids": [first]})[0]} \
        == before - {first}
    assert found() == before


def test_a_kept_selection_follows_the_index_catching_up(tmp_path: Path) -> None:
    """A selection made while the store holds rows the index has not applied yet is not kept
    past the index's add (the filter's own key has not changed in between)."""
    store = Store(tmp_path / "items.db", DIM)
    index = VectorIndex(DIM, store, threading.Lock())
    vectors = clustered(20, DIM, seed=13).astype(np.float16)
    _, first, stored = store.add([NewItem(f"k{n}", f"A/{n}.jpg", {}, vectors[n])
                                  for n in range(10)])
    index.add(first, stored, 10)
    _, late, late_vectors = store.add([NewItem(f"k{n}", f"A/{n}.jpg", {}, vectors[n])
                                       for n in range(10, 20)])
    f = SearchFilters.model_validate({"folder": ["A"]})
    query = vectors[15:16].astype(np.float32)
    assert set(filters.search(store, index, query, 20, f)[1][0].tolist()) == set(first.tolist())
    index.add(late, late_vectors, 20)
    got = filters.search(store, index, query, 20, f)[1][0]
    assert set(got.tolist()) == set(first.tolist()) | set(late.tolist())
    store.close()


def test_facets_count_the_live_items(client: TestClient, metas: list[dict[str, Any]]) -> None:
    """GET /v1/facets from the columns equals the row-by-row count (the Milvus backend's)."""
    ids = _add(client, clustered(len(metas), DIM, seed=9), metas)
    assert client.delete(f"/v1/items/{ids[0]}").status_code == 204
    got = client.get("/v1/facets")
    assert got.status_code == 200, got.text
    body = got.json()
    rows = [(path_of(n, m), m) for n, m in enumerate(metas) if n]
    assert body == facets_of_rows(rows)
    assert body["total"] == len(metas) - 1
    in_a = sum(1 for p, _ in rows if p.startswith("A/"))
    assert {"value": "A", "count": in_a} in body["folders"]  # A/B and A/B/C counted in A
    assert [y["value"] for y in body["years"]] == [str(y) for y in range(2024, 2014, -1)]
    assert sum(m["count"] for m in body["months"]) == sum(1 for _, m in rows if "taken_ts" in m)
    assert {c["value"] for c in body["cameras"]} == {" ".join(c) for c in CAMERAS}


def test_the_low_memory_setting_reads_the_matching_rows_from_the_store(
        make_client: Any, metas: list[dict[str, Any]]) -> None:
    client = make_client(vectors_in_memory=False)
    vectors = clustered(600, DIM, seed=10)
    ids = _add(client, vectors, metas[:600])
    stored = as_stored(vectors)
    f = SearchFilters.model_validate({"camera": "pixel"})
    allowed = np.asarray([n for n, m in enumerate(metas[:600]) if matches(f, path_of(n, m), m)])
    queries = clustered(5, DIM, seed=11)
    for row, want in zip(_search(client, queries, 10, {"filters": {"camera": "pixel"}}),
                         _truth(stored, queries, allowed, 10), strict=True):
        assert {ids.index(h["id"]) for h in row} == want
