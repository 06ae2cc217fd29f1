"""Contract drift: each service's OpenAPI document must match the committed file."""

from __future__ import annotations

import pytest

from ci.export_openapi import OUT_DIR, SERVICES, openapi_document, render


@pytest.mark.parametrize("service", SERVICES)
def test_openapi_matches_committed_document(service: str) -> None:
    committed = (OUT_DIR / f"{service}.json").read_text()
    assert render(openapi_document(service)) == committed, (
        f"{service}'s API changed but docs/openapi/{service}.json did not: run `make openapi`, "
        "review the diff and commit it"
    )
