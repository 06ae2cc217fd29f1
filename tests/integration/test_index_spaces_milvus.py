"""Named spaces on both backends: the tests of tests/unit/index/test_spaces.py, run with the
Faiss backend and with a real Milvus server (tests/support/milvus.py), where each space is a
collection of its own."""

from __future__ import annotations

import pytest

from tests.integration import test_index_milvus_contract as contract
from tests.unit.index import test_spaces as suite

pytestmark = pytest.mark.milvus

# The contract suite's fixtures: each test runs on Faiss and on Milvus.
backend = contract.backend
make_client = contract.make_client
client = contract.client

test_a_space_is_searched_by_name_and_activated = (
    suite.test_a_space_is_searched_by_name_and_activated)
test_spaces_and_the_active_one_survive_a_restart = (
    suite.test_spaces_and_the_active_one_survive_a_restart)
test_deleted_items_leave_every_space = suite.test_deleted_items_leave_every_space
test_drop_a_space = suite.test_drop_a_space
test_bad_space_requests_are_4xx_naming_the_problem = (
    suite.test_bad_space_requests_are_4xx_naming_the_problem)
test_pending_pages_what_a_space_still_lacks = suite.test_pending_pages_what_a_space_still_lacks
test_filters_apply_in_a_space = suite.test_filters_apply_in_a_space
test_an_items_vector_is_read_from_a_space = suite.test_an_items_vector_is_read_from_a_space
