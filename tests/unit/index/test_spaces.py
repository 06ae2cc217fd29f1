"""Named spaces on the Faiss backend: another model's vectors over the same items, one space
active, durable across restarts, and every bad request a 4xx naming the problem."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from fastapi.testclient import TestClient

from tests.unit.index.helpers import as_stored, b64, clustered, items_body, wait_ready

DIM = 32  # the built-in space (helpers.settings)
NEW_DIM = 48


def _filled(client: TestClient, n: int = 200) -> tuple[list[int], np.ndarray, np.ndarray]:
    """n items in the built-in space, and their vectors of a 48-d space ``clip2``."""
    old = clustered(n, DIM, seed=1)
    new = clustered(n, NEW_DIM, seed=2)
    added = client.post("/v1/items", json=items_body(old)).json()["items"]
    ids = [a["id"] for a in added]
    assert client.post("/v1/spaces", json={"name": "clip2", "dim": NEW_DIM}).status_code == 201
    r = client.post("/v1/spaces/clip2/vectors",
                    json={"ids": ids, "vectors": [b64(v) for v in new]})
    assert r.status_code == 200, r.text
    assert r.json() == {"space": "clip2", "added": ids, "exists": [], "missing": []}
    return ids, old, new


def _top(client: TestClient, vector: np.ndarray, space: str | None = None, k: int = 3
         ) -> tuple[list[int], str]:
    body: dict[str, object] = {"vectors": [b64(vector)], "k": k}
    if space is not None:
        body["space"] = space
    r = client.post("/v1/search", json=body)
    assert r.status_code == 200, r.text
    return [h["id"] for h in r.json()["results"][0]], r.json()["space"]


def test_a_space_is_searched_by_name_and_activated(client: TestClient) -> None:
    ids, old, new = _filled(client)
    spaces = client.get("/v1/spaces").json()
    assert spaces["active"] == "default"
    assert [(s["name"], s["dim"], s["count"], s["built_in"]) for s in spaces["spaces"]] == [
        ("default", DIM, 200, True), ("clip2", NEW_DIM, 200, False)]
    # The same items answer from either space, each with its own vectors.
    assert _top(client, new[7], "clip2")[0][0] == ids[7]
    assert _top(client, old[7]) == ([*_top(client, old[7])[0]], "default")
    hit = client.post("/v1/search", json={"vectors": [b64(new[9])], "k": 1, "space": "clip2"})
    assert hit.json()["results"][0][0]["path"] == "img/9.jpg"
    # With words: the space's vector hits and the keyword hits, one job (service.py).
    both = client.post("/v1/search", json={"vectors": [b64(new[9])], "k": 4, "detail": 2,
                                           "space": "clip2", "words": "img 9"}).json()
    assert [h["id"] for h in both["results"][0]][:1] == [ids[9]]
    assert [len(h) for h in both["results"][0]] == [4, 4, 2, 2]
    paths = [h["path"] for h in both["keywords"]]  # "9" is a word prefix: 90 to 99 too
    if client.get("/v1/stats").json().get("backend") == "milvus":
        # Milvus 2.3 has no full-text index: it matches whole keywords only (keywords.py),
        # and these items have none, so no path word is found there.
        assert paths == []
    else:
        assert "img/9.jpg" in paths and all(p.startswith("img/9") for p in paths)
    exact = client.post("/v1/search", json={"vectors": [b64(new[9]), b64(new[2])], "k": 5,
                                            "space": "clip2", "exact": True}).json()["results"]
    assert [row[0]["id"] for row in exact] == [ids[9], ids[2]]
    stored = as_stored(new)  # what the space holds: scores are computed on these
    truth = np.argsort(-(stored @ stored[9]), kind="stable")[:5]
    assert [h["id"] for h in exact[0]] == [ids[i] for i in truth]
    # Activation: a search that names no space now takes 48-d queries.
    r = client.post("/v1/spaces/clip2/activate")
    assert r.status_code == 200 and r.json()["active"] == "clip2"
    assert _top(client, new[3]) == (_top(client, new[3], "clip2")[0], "clip2")
    wrong = client.post("/v1/search", json={"vectors": [b64(old[3])], "k": 1})
    assert wrong.status_code == 422 and "48" in wrong.json()["error"]
    # The old space still answers by name, exactly as before.
    assert _top(client, old[3], "default")[0][0] == ids[3]


def test_spaces_and_the_active_one_survive_a_restart(
    make_client: Callable[..., TestClient],
) -> None:
    client = make_client()
    ids, _, new = _filled(client)
    client.post("/v1/spaces/clip2/activate")
    before = _top(client, new[11], k=10)
    client.__exit__(None, None, None)
    again = make_client()
    wait_ready(again)
    spaces = again.get("/v1/spaces").json()
    assert spaces["active"] == "clip2"
    assert {s["name"]: s["count"] for s in spaces["spaces"]} == {"default": 200, "clip2": 200}
    assert _top(again, new[11], k=10) == before
    # Writes after the restart go on from the right sequence numbers.
    more = clustered(5, DIM, seed=9)
    added = [a["id"] for a in again.post("/v1/items", json=items_body(more, 500)).json()["items"]]
    extra = clustered(5, NEW_DIM, seed=10)
    r = again.post("/v1/spaces/clip2/vectors",
                   json={"ids": added, "vectors": [b64(v) for v in extra]})
    assert r.json()["added"] == added
    assert _top(again, extra[0])[0][0] == added[0]


def test_deleted_items_leave_every_space(client: TestClient) -> None:
    ids, _, new = _filled(client)
    assert client.delete(f"/v1/items/{ids[5]}").status_code == 204
    assert ids[5] not in _top(client, new[5], "clip2", k=50)[0]
    listing = {s["name"]: s["count"] for s in client.get("/v1/spaces").json()["spaces"]}
    assert listing == {"default": 199, "clip2": 199}
    # A vector for a deleted or unknown id is not stored; one sent again is kept as it was.
    r = client.post("/v1/spaces/clip2/vectors", json={
        "ids": [ids[5], 10**9, ids[6]], "vectors": [b64(new[0]), b64(new[0]), b64(new[0])]})
    assert r.json() == {"space": "clip2", "added": [], "exists": [ids[6]],
                        "missing": [ids[5], 10**9]}
    assert _top(client, new[6], "clip2")[0][0] == ids[6]


def test_drop_a_space(client: TestClient) -> None:
    _filled(client)
    assert client.delete("/v1/spaces/clip2").status_code == 204
    assert [s["name"] for s in client.get("/v1/spaces").json()["spaces"]] == ["default"]
    gone = client.post("/v1/search", json={"vectors": [b64(np.ones(NEW_DIM))], "space": "clip2"})
    assert gone.status_code == 404 and "clip2" in gone.json()["error"]
    worded = client.post("/v1/search", json={"vectors": [b64(np.ones(NEW_DIM))],
                                             "space": "clip2", "words": "img"})
    assert worded.status_code == 404 and "clip2" in worded.json()["error"]
    # The name can be used again, empty.
    assert client.post("/v1/spaces", json={"name": "clip2", "dim": 8}).json()["count"] == 0


def test_a_space_trains_its_own_structure(make_client: Callable[..., TestClient]) -> None:
    client = make_client(train_threshold=1000, autotune=False)
    n = 1200
    old = clustered(n, DIM, seed=3)
    ids = [a["id"] for a in client.post("/v1/items", json=items_body(old)).json()["items"]]
    client.post("/v1/spaces", json={"name": "wide", "dim": 64})
    new = clustered(n, 64, seed=4)
    for start in range(0, n, 400):
        client.post("/v1/spaces/wide/vectors", json={
            "ids": ids[start:start + 400], "vectors": [b64(v) for v in new[start:start + 400]]})
    service = client.app.state.service  # type: ignore[attr-defined]
    assert service.spaces["wide"].index.wait_training(120)
    kinds = {s["name"]: s["kind"] for s in client.get("/v1/spaces").json()["spaces"]}
    assert kinds["wide"] != "exact"
    assert _top(client, new[100], "wide")[0][0] == ids[100]


def test_bad_space_requests_are_4xx_naming_the_problem(client: TestClient) -> None:
    ids, _, new = _filled(client, n=10)

    def error(r: object, status: int, words: str) -> None:
        assert r.status_code == status, r.text  # type: ignore[attr-defined]
        body = r.json()  # type: ignore[attr-defined]
        assert {"error", "error_type"} <= set(body) and words in body["error"], body

    error(client.post("/v1/spaces", json={"name": "9bad", "dim": 8}), 422, "'9bad'")
    error(client.post("/v1/spaces", json={"name": "x", "dim": 0}), 422, "dim")
    error(client.post("/v1/spaces", json={"name": "x", "dim": 10**6}), 422, "dim is 1000000")
    error(client.post("/v1/spaces", json={"name": "clip2", "dim": 8}), 409, "exists already")
    error(client.post("/v1/spaces", json={"name": "default", "dim": 8}), 409, "built in")
    error(client.post("/v1/spaces/nope/vectors", json={"ids": [ids[0]], "vectors": [b64(new[0])]}),
          404, "No space named 'nope'")
    error(client.post("/v1/spaces/clip2/vectors", json={"ids": ids[:2], "vectors": [b64(new[0])]}),
          422, "pair up")
    error(client.post("/v1/spaces/clip2/vectors",
                      json={"ids": [ids[0]], "vectors": [b64(np.ones(DIM))]}), 422, "48")
    error(client.post("/v1/spaces/nope/activate"), 404, "nope")
    error(client.delete("/v1/spaces/default"), 409, "cannot be dropped")
    client.post("/v1/spaces/clip2/activate")
    error(client.delete("/v1/spaces/clip2"), 409, "is active")
    error(client.delete("/v1/spaces/nope"), 404, "nope")


def test_pending_pages_what_a_space_still_lacks(client: TestClient) -> None:
    old = clustered(30, DIM, seed=5)
    ids = [a["id"] for a in client.post("/v1/items", json=items_body(old)).json()["items"]]
    client.post("/v1/spaces", json={"name": "clip2", "dim": NEW_DIM})
    new = clustered(30, NEW_DIM, seed=6)
    client.post("/v1/spaces/clip2/vectors",
                json={"ids": ids[:10], "vectors": [b64(v) for v in new[:10]]})
    client.delete(f"/v1/items/{ids[20]}")
    left = sorted(ids[10:20] + ids[21:])  # in id order (Milvus's ids are hashes)
    first = client.get("/v1/spaces/clip2/pending", params={"limit": 8}).json()
    assert (first["space"], first["done"], first["total"]) == ("clip2", 10, 29)
    assert [i["id"] for i in first["items"]] == left[:8]
    n = ids.index(left[0])
    assert first["items"][0] == {"id": left[0], "key": f"key-{n}", "path": f"img/{n}.jpg"}
    rest = client.get("/v1/spaces/clip2/pending",
                      params={"after": first["items"][-1]["id"], "limit": 100}).json()
    assert [i["id"] for i in rest["items"]] == left[8:]
    assert client.get("/v1/spaces/default/pending").json()["items"] == []
    bad = client.get("/v1/spaces/clip2/pending", params={"limit": 0})
    assert bad.status_code == 422 and "limit" in bad.json()["error"]
    assert client.get("/v1/spaces/nope/pending").status_code == 404


def test_filters_apply_in_a_space(client: TestClient) -> None:
    ids, _, new = _filled(client, n=20)
    client.patch(f"/v1/items/{ids[4]}", json={"path": "trip/4.jpg"})

    def found(folder: str) -> list[int]:
        r = client.post("/v1/search", json={"vectors": [b64(new[4])], "k": 5, "space": "clip2",
                                            "filters": {"folder": [folder]}})
        assert r.status_code == 200, r.text
        return [h["id"] for h in r.json()["results"][0]]

    assert found("trip") == [ids[4]]
    assert ids[4] not in found("img") and len(found("img")) == 5


def test_an_items_vector_is_read_from_a_space(client: TestClient) -> None:
    ids, old, new = _filled(client, n=20)
    extra = client.post("/v1/items", json=items_body(clustered(1, DIM, seed=4), 900)
                        ).json()["items"][0]["id"]  # nothing in clip2 yet

    def read(item_id: int, **params: str) -> dict:
        r = client.get(f"/v1/items/{item_id}/vector", params=params)
        assert r.status_code == 200, r.text
        return r.json()

    got = read(ids[4], space="clip2")
    assert (got["space"], got["dim"]) == ("clip2", NEW_DIM)
    assert np.allclose(got["vector"], as_stored(new)[4], atol=1e-6)
    assert read(ids[4])["space"] == "default"  # the active space when none is named
    assert np.allclose(read(ids[4])["vector"], as_stored(old)[4], atol=1e-6)
    client.post("/v1/spaces/clip2/activate")
    assert read(ids[4])["vector"] == got["vector"]
    assert read(ids[4], space="default")["dim"] == DIM
    lacking = client.get(f"/v1/items/{extra}/vector")
    assert lacking.status_code == 404 and "no vector in space 'clip2'" in lacking.json()["error"]
    client.delete(f"/v1/items/{ids[4]}")
    gone = client.get(f"/v1/items/{ids[4]}/vector", params={"space": "clip2"})
    assert gone.status_code == 404 and "space" not in gone.json()["error"]
    nope = client.get(f"/v1/items/{ids[5]}/vector", params={"space": "nope"})
    assert nope.status_code == 404 and "No space named 'nope'" in nope.json()["error"]
