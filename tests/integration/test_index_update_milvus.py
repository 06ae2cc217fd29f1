"""PATCH /v1/items/{id} on both backends: the tests of tests/unit/index/test_update.py, run
with the Faiss backend and with a real Milvus server (tests/support/milvus.py)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.integration import test_index_milvus_contract as contract
from tests.unit.index import test_update as suite

pytestmark = pytest.mark.milvus

# The contract suite's fixtures: each test runs on Faiss and on Milvus.
backend = contract.backend
make_client = contract.make_client
client = contract.client

test_a_new_path_is_what_search_and_get_answer = suite.test_a_new_path_is_what_search_and_get_answer
test_meta_is_replaced_whole_and_path_kept_when_left_out = (
    suite.test_meta_is_replaced_whole_and_path_kept_when_left_out)
test_bad_bodies_are_422_naming_the_problem = suite.test_bad_bodies_are_422_naming_the_problem
test_unknown_deleted_and_impossible_ids = suite.test_unknown_deleted_and_impossible_ids


def test_an_update_is_kept_across_a_restart(make_client: Callable[..., TestClient],
                                            tmp_path: Path) -> None:
    """Milvus holds the row: a new service on the same collection answers the new path."""
    data = tmp_path / "index"
    client = make_client(data_dir=data)
    x, ids = suite._add(client)
    assert client.patch(f"/v1/items/{ids[3]}", json={"path": "moved/3.jpg"}).status_code == 200
    client.__exit__(None, None, None)
    again = make_client(data_dir=data)
    assert again.get(f"/v1/items/{ids[3]}").json()["path"] == "moved/3.jpg"
    hit = suite._top(again, x[3])
    assert hit["id"] == ids[3] and hit["path"] == "moved/3.jpg" and hit["meta"] == {"n": 3}
