"""RELIABILITY.md #7, #8, #10 and #11: small collections, duplicates, bad vectors, limits.

#7  k larger than the collection, an empty index: 200 with fewer hits, never id -1.
#8  the same file ingested twice, and from several clients at once: one row per sha256.
#10 wrong dimension, NaN, Inf, a zero vector: 422 naming the problem; nothing stored.
#11 limits on k, batch size, text length, files per request: 422 or 413, never 500.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from glimpse.contracts.index import MAX_K
from glimpse.index.api import MAX_BATCH, MAX_SEARCH_VECTORS
from tests.reliability._images import gradient, png_bytes
from tests.reliability._services import DIM, IndexAPI, unit_vectors, wait_until


def _hits_ok(results: list[list[dict[str, Any]]], expected: int) -> None:
    for hits in results:
        ids = [h["id"] for h in hits]
        assert len(hits) == expected, (len(hits), expected)
        assert all(isinstance(i, int) and i >= 0 for i in ids), ids
        assert len(set(ids)) == len(ids), ids


# #7 -----------------------------------------------------------------------------------------

def test_k_larger_than_collection_and_empty_index(start_index: Any, tmp_path: Path,
                                                  figure: Any) -> None:
    rng = np.random.default_rng(7)
    proc = start_index(tmp_path / "small")
    with IndexAPI(proc.url) as api:
        queries = unit_vectors(3, rng)
        for exact in (False, True):
            _hits_ok(api.search(queries, k=10, exact=exact), 0)
        api.add([f"k{i}" for i in range(5)], unit_vectors(5, rng))
        for exact in (False, True):
            _hits_ok(api.search(queries, k=1000, exact=exact), 5)
        first = api.search(queries[:1], k=1)[0][0]["id"]
        assert api.delete(first).status_code in (200, 204)
        for exact in (False, True):
            results = api.search(queries, k=1000, exact=exact)
            _hits_ok(results, 4)
            assert all(first not in [h["id"] for h in hits] for hits in results)
    figure(empty_index_hits=0, k1000_over_5_items_hits=5, after_delete_hits=4, negative_ids=0)


@pytest.mark.slow
def test_k_larger_than_trained_ivf_collection(start_index: Any, tmp_path: Path) -> None:
    """An IVF-PQ index over few vectors: lists are short, k exceeds what nprobe reaches."""
    rng = np.random.default_rng(8)
    proc = start_index(tmp_path / "ivf", INDEX_TRAIN_THRESHOLD="1000")
    with IndexAPI(proc.url) as api:
        n = 1200
        vectors = unit_vectors(n, rng)
        for s in range(0, n, 200):
            api.add([f"v{i}" for i in range(s, s + 200)], vectors[s : s + 200])
        # Past the threshold the index trains IVF-PQ in the background by itself.
        wait_until(lambda: api.stats()["kind"] != "flat" and not api.stats()["training"],
                   timeout=120, interval=0.5, what="IVF-PQ training")
        stats = api.stats()
        assert stats["kind"] != "flat", stats
        for nprobe in (None, 1):
            extra = {"nprobe": nprobe} if nprobe else {}
            for hits in api.search(unit_vectors(5, rng), k=1000, **extra):
                ids = [h["id"] for h in hits]
                assert 0 < len(ids) <= n
                assert min(ids) >= 0 and len(set(ids)) == len(ids)


def test_gateway_k_over_collection(writer: httpx.Client, reader: httpx.Client) -> None:
    writer.post("/ingest", files=[("files", ("k/one.png", png_bytes(gradient(seed=71)),
                                             "image/png"))])
    r = reader.post("/search/text", json={"query": "anything", "k": 1000})
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert results and all(h["id"] >= 0 for h in results)
    assert len(results) < 1000


# #8 -----------------------------------------------------------------------------------------

def test_same_file_twice_and_from_many_clients_at_once(stack: Any, writer: httpx.Client,
                                                       figure: Any) -> None:
    data = png_bytes(gradient((70, 50), seed=8008))
    sha = hashlib.sha256(data).hexdigest()
    first = writer.post("/ingest", files=[("files", ("dup/a.png", data, "image/png"))])
    again = writer.post("/ingest", files=[("files", ("dup/b.png", data, "image/png"))])
    same_request = writer.post("/ingest", files=[("files", ("dup/c.png", data, "image/png")),
                                                 ("files", ("dup/d.png", data, "image/png"))])
    ids = {first.json()["items"][0]["id"], again.json()["items"][0]["id"]}
    ids |= {it["id"] for it in same_request.json()["items"]}
    assert again.json()["items"][0]["status"] == "exists"

    # Fresh bytes from 8 clients at the same moment.
    data2 = png_bytes(gradient((50, 70), seed=8009))
    sha2 = hashlib.sha256(data2).hexdigest()
    answers: list[dict[str, Any]] = []
    barrier = threading.Barrier(8)

    def client(i: int) -> None:
        with stack.client(writer.headers["authorization"].split()[1]) as c:
            barrier.wait()
            r = c.post("/ingest", files=[("files", (f"race/{i}.png", data2, "image/png"))])
            answers.append(r.json()["items"][0] if r.status_code == 200 else {"http": r.text})

    threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    race_ids = {a.get("id") for a in answers}
    statuses = sorted(a.get("status", "error") for a in answers)
    # The index: one live row for each key (keys/missing says present; the count of rows
    # carrying the key is checked through the index's idempotent add answering one id).
    with IndexAPI(stack.index.url) as api:
        assert api.missing([sha, sha2]) == []
        probe = api.add_raw([{"vector": [1.0] + [0.0] * (DIM - 1), "key": k, "path": "x"}
                             for k in (sha, sha2)])
        probe_ids = {it["key"]: it["id"] for it in probe.json()["items"]}
        assert all(it["status"] == "exists" for it in probe.json()["items"])
    figure(ids_for_one_file=len(ids), ids_for_racing_file=len(race_ids),
           racing_statuses=statuses)
    assert len(ids) == 1 and probe_ids[sha] in ids, (ids, probe_ids)
    assert len(race_ids) == 1 and probe_ids[sha2] in race_ids, answers
    assert statuses.count("added") == 1, statuses


def test_same_key_from_many_clients_at_the_index(start_index: Any, tmp_path: Path) -> None:
    proc = start_index(tmp_path / "race")
    rng = np.random.default_rng(88)
    vec = unit_vectors(1, rng)[0].tolist()
    for round_ in range(5):
        got: list[Any] = []
        barrier = threading.Barrier(8)

        def one(barrier: threading.Barrier, got: list[Any], key: str) -> None:
            with httpx.Client(base_url=proc.url, timeout=30) as c:
                barrier.wait()
                r = c.post("/v1/items", json={"items": [{"vector": vec, "key": key, "path": "p"}]})
                got.append(r.json()["items"][0] if r.status_code == 200 else r.text)

        threads = [threading.Thread(target=one, args=(barrier, got, f"same-{round_}"))
                   for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len({g["id"] for g in got}) == 1, got
        assert sorted(g["status"] for g in got).count("added") == 1, got
    with IndexAPI(proc.url) as api:
        assert api.stats()["count"] == 5


# #10 ----------------------------------------------------------------------------------------

def _b64(values: np.ndarray) -> str:
    return base64.b64encode(np.asarray(values, "<f4").tobytes()).decode()


BAD_VECTORS: dict[str, tuple[Any, tuple[str, ...]]] = {
    "short": ([0.1] * (DIM - 1), ("dimension",)),
    "long": ([0.1] * (DIM + 1), ("dimension",)),
    "empty": ([], ("dimension", "empty", "at least")),
    "nan": ([float("nan")] + [0.1] * (DIM - 1), ("nan",)),
    "inf": ([float("inf")] + [0.1] * (DIM - 1), ("inf",)),
    "minus_inf": ([float("-inf")] + [0.1] * (DIM - 1), ("inf",)),
    "zero": ([0.0] * DIM, ("zero",)),
    "b64_short": (_b64(np.ones(DIM - 1)), ("dimension",)),
    "b64_nan": (_b64(np.r_[np.nan, np.ones(DIM - 1)]), ("nan",)),
    "b64_zero": (_b64(np.zeros(DIM)), ("zero",)),
    "b64_ragged": (base64.b64encode(b"\x00" * 7).decode(), ("float32", "bytes")),
    "b64_garbage": ("not base64 !!", ("base64",)),
    "huge_float": ([1e39] + [0.1] * (DIM - 1), ("inf", "finite", "range", "float32")),
}


def test_bad_vectors_are_refused_and_nothing_is_stored(start_index: Any, tmp_path: Path,
                                                       figure: Any) -> None:
    proc = start_index(tmp_path / "bad")
    rng = np.random.default_rng(10)
    good = unit_vectors(2, rng)
    refused = 0
    with IndexAPI(proc.url) as api:
        for name, (vector, words) in BAD_VECTORS.items():
            # Alone, and hidden in a batch after a good item: the batch is refused whole.
            batch = [{"vector": good[0].tolist(), "key": f"good-{name}", "path": "g"},
                     {"vector": vector, "key": f"bad-{name}", "path": "b"}]
            body = json.dumps({"items": batch}, allow_nan=True)
            r = api.http.post("/v1/items", content=body,
                              headers={"Content-Type": "application/json"})
            assert r.status_code == 422, (name, r.status_code, r.text[:300])
            message = r.json()["error"].lower()
            assert any(w in message for w in words), (name, message)
            search = api.http.post("/v1/search", content=json.dumps(
                {"vectors": [vector], "k": 3}, allow_nan=True),
                headers={"Content-Type": "application/json"})
            assert search.status_code == 422, (name, search.status_code, search.text[:300])
            refused += 1
            assert sorted(api.missing([f"good-{name}", f"bad-{name}"])) == sorted(
                [f"good-{name}", f"bad-{name}"]), name
        assert api.stats()["count"] == 0
    figure(bad_vectors=len(BAD_VECTORS), refused_422=refused, stored=0)


# #11 ----------------------------------------------------------------------------------------

def test_index_limits_never_500(start_index: Any, tmp_path: Path) -> None:
    proc = start_index(tmp_path / "limits")
    rng = np.random.default_rng(11)
    with IndexAPI(proc.url) as api:
        v = unit_vectors(max(MAX_BATCH, MAX_SEARCH_VECTORS) + 1, rng)
        cases = {
            "batch over max": lambda: api.add_raw(
                [{"vector": x.tolist(), "key": f"b{i}", "path": "p"}
                 for i, x in enumerate(v[:MAX_BATCH + 1])]),
            "k over max": lambda: api.search_raw(v[:1], k=MAX_K + 1),
            "k zero": lambda: api.search_raw(v[:1], k=0),
            "k negative": lambda: api.search_raw(v[:1], k=-5),
            "k huge": lambda: api.search_raw(v[:1], k=10**18),
            "k string": lambda: api.http.post(
                "/v1/search", json={"vectors": [v[0].tolist()], "k": "x"}),
            "too many query vectors": lambda: api.search_raw(v[:MAX_SEARCH_VECTORS + 1], k=1),
            "nprobe zero": lambda: api.search_raw(v[:1], k=1, nprobe=0),
            "nprobe huge": lambda: api.search_raw(v[:1], k=1, nprobe=10**9),
            "no vectors": lambda: api.search_raw([], k=1),
            "no items": lambda: api.http.post("/v1/items", json={"items": []}),
            "path too long": lambda: api.add_raw(
                [{"vector": v[0].tolist(), "key": "p", "path": "a" * 5000}]),
            "key too long": lambda: api.add_raw(
                [{"vector": v[0].tolist(), "key": "k" * 500, "path": "a"}]),
            "id not int": lambda: api.http.get("/v1/items/abc"),
            "id huge": lambda: api.http.get(f"/v1/items/{2**70}"),
            "id huge vector": lambda: api.http.get(f"/v1/items/{2**63}/vector"),
            "delete id huge": lambda: api.http.delete(f"/v1/items/{2**64}"),
            "id negative": lambda: api.http.get("/v1/items/-1"),
            "delete unknown": lambda: api.http.delete("/v1/items/999999"),
            "not json": lambda: api.http.post(
                "/v1/items", content=b"{nope", headers={"Content-Type": "application/json"}),
        }
        bad: dict[str, Any] = {}
        for name, call in cases.items():
            try:
                r = call()
            except httpx.TransportError as exc:  # e.g. the connection closed after a 500
                bad[name] = repr(exc)
                api.http.close()
                api.http = httpx.Client(base_url=proc.url, timeout=30)
                continue
            if r.status_code >= 500 or r.status_code < 400:
                bad[name] = (r.status_code, r.text[:200])
                # Starlette closes the connection after an unhandled error: start afresh.
                api.http.close()
                api.http = httpx.Client(base_url=proc.url, timeout=30)
        assert not bad, bad
        assert api.stats()["count"] == 0


def test_gateway_enforces_the_encoders_file_limit(stack: Any, writer: httpx.Client) -> None:
    """The shared stack's encoder runs with ENCODER_MAX_FILE_BYTES=4 MiB, the gateway with no
    file limit of its own: it reads the encoder's from /v1/info and refuses a bigger file before
    it reads the header or sends anything on."""
    limit = 4 * 1024 * 1024
    assert httpx.get(stack.encoder.url + "/v1/info", timeout=10).json()["max_file_bytes"] == limit
    over = b"\x89PNG" + b"\x00" * (limit - 3)  # one byte over, and far under the 20 MiB default
    answer = writer.post("/ingest", files=[("files", ("over.png", over, "image/png"))])
    assert answer.status_code == 200, answer.text
    item = answer.json()["items"][0]
    assert (item["status"], item["error_type"]) == ("rejected", "payload_too_large"), item
    assert f"more than the limit of {limit}" in item["error"]
    under = writer.post("/ingest", files=[("files", ("under.png", over[:-1], "image/png"))])
    assert under.json()["items"][0]["error_type"] != "payload_too_large"  # a bad PNG instead
    query = over + b"\x00" * (128 * 1024)  # past the file limit and the form's framing
    refused = writer.post("/search/image", files=[("file", ("q.png", query, "image/png"))])
    assert refused.status_code == 413, refused.text


def test_gateway_limits_never_500(writer: httpx.Client, figure: Any) -> None:
    png = png_bytes(gradient((8, 8)))
    many = [("files", (f"m/{i}.png", png_bytes(gradient((8, 8), seed=i)), "image/png"))
            for i in range(17)]  # the shared stack allows 16 per request
    big = b"\x89PNG" + b"\x00" * (4 * 1024 * 1024 + 10)  # over the 4 MiB file limit
    cases = {
        "k 0": writer.post("/search/text", json={"query": "a", "k": 0}),
        "k 1001": writer.post("/search/text", json={"query": "a", "k": 1001}),
        "k huge": writer.post("/search/text", json={"query": "a", "k": 10**30}),
        "k float": writer.post("/search/text", json={"query": "a", "k": 2.5}),
        "offset deep": writer.post("/search/text", json={"query": "a", "k": 10, "offset": 10**9}),
        "offset negative": writer.post("/search/text", json={"query": "a", "offset": -1}),
        "text empty": writer.post("/search/text", json={"query": ""}),
        "text 1001": writer.post("/search/text", json={"query": "a" * 1001}),
        "text 100k": writer.post("/search/text", json={"query": "a" * 100_000}),
        "terms 17": writer.post("/search", json={"terms": [{"text": "a"}] * 17}),
        "terms none": writer.post("/search", json={"terms": []}),
        "term both": writer.post("/search", json={"terms": [{"text": "a", "image_id": 1}]}),
        "term weight": writer.post("/search", json={"terms": [{"text": "a", "weight": 1e9}]}),
        "similar k": writer.get("/images/1/similar", params={"k": 5000}),
        "files 17": writer.post("/ingest", files=many),
        "file too big": writer.post("/ingest", files=[("files", ("big.png", big, "image/png"))]),
        "query too big": writer.post("/search/image",
                                     files=[("file", ("q.png", big, "image/png"))]),
        "no files": writer.post("/ingest", data={"x": "y"}),
        "image k 0": writer.post("/search/image", files=[("file", ("q.png", png, "image/png"))],
                                 data={"k": "0"}),
        "check not hex": writer.post("/ingest/check", json={"sha256": ["xyz"]}),
        "check huge list": writer.post("/ingest/check", json={"sha256": ["0" * 64] * 200_000}),
        "image id huge": writer.get(f"/images/{2**70}"),
        "image id negative": writer.get("/images/-3/meta"),
        "unknown id": writer.get("/images/987654321/meta"),
    }
    statuses = {n: r.status_code for n, r in cases.items()}
    bad = {n: (r.status_code, r.text[:200]) for n, r in cases.items()
           if not (400 <= r.status_code < 500)}
    # "file too big" may instead be one rejected item in a 200 answer.
    if "file too big" in bad and cases["file too big"].status_code == 200:
        item = cases["file too big"].json()["items"][0]
        if item["status"] == "rejected" and item["error_type"] == "payload_too_large":
            bad.pop("file too big")
    figure(limit_cases=len(cases), answered_5xx_or_2xx=len(bad), statuses=statuses)
    assert not bad, bad
    for r in cases.values():
        if r.status_code >= 400:
            body = r.json()
            assert body["error"] and body["error_type"], body
