"""Schemathesis (`st run`) against each service's committed OpenAPI document, on a stack of
real processes (tiny model): every answer must be a non-5xx that matches its documented schema.

Each service gets a bounded run (GLIMPSE_SCHEMATHESIS_S seconds, 40 by default) of Schemathesis's
coverage, fuzzing and stateful phases, with valid and invalid data. The stack is this module's own,
without an API key: the runs delete images and rebuild the index, which the shared stack's other
users must not see. The JSON report of each run lands in artifacts/reliability/schemathesis/.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from tests.support.procs import REPO

pytestmark = pytest.mark.slow

ST = Path(sys.executable).with_name("st")
OPENAPI_DIR = REPO / "docs" / "openapi"
# The service (a Stack attribute) and its committed document (ci/export_openapi.py writes them).
DOCUMENTS = {"gateway": "gateway.json", "encoder": "encoder_service.json",
             "index": "index_service.json"}
REPORTS = REPO / "artifacts" / "reliability" / "schemathesis"
SECONDS = int(os.environ.get("GLIMPSE_SCHEMATHESIS_S", "40"))


@pytest.fixture(scope="module")
def open_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from tests.support.stack import start_stack

    with start_stack(
        tmp_path_factory.mktemp("schemathesis-stack"), timeout=180.0, GATEWAY_FSYNC="false"
    ) as running:
        yield running


@pytest.mark.parametrize("service", list(DOCUMENTS))
def test_schemathesis_finds_no_5xx_and_no_schema_mismatch(
    service: str, open_stack: Any, figure: Callable[..., None]
) -> None:
    if not ST.exists():
        pytest.fail(f"{ST} is missing: pip install -e '.[dev]' installs schemathesis")
    REPORTS.mkdir(parents=True, exist_ok=True)
    report = REPORTS / f"{service}.json"
    report.unlink(missing_ok=True)
    command = [
        str(ST), "run", str(OPENAPI_DIR / DOCUMENTS[service]),
        "--url", getattr(open_stack, service).url,
        "--checks", "not_a_server_error,response_schema_conformance",
        "--max-time", str(SECONDS),
        # One request at a time: the three services share this machine's cores with the run.
        "--workers", "1",
        "--request-timeout", "30",
        "--no-color",
        "--report", "json", "--report-json-path", str(report),
    ]
    run = subprocess.run(
        command, capture_output=True, text=True, timeout=SECONDS + 120, cwd=REPO, check=False
    )
    summary = json.loads(report.read_text()) if report.exists() else {}
    cases = summary.get("test_cases", {})
    figure(cases=cases.get("generated"), failures=cases.get("unique_failures"),
           errored=cases.get("errored"), seed=summary.get("seed"))
    output = run.stdout[-12_000:] + run.stderr[-4_000:]
    assert run.returncode == 0, f"{service}: Schemathesis failed\n{output}\n{open_stack.logs()}"
    assert cases.get("generated", 0) > 0, output
    assert summary.get("failures") == [] and summary.get("errors") == [], output


# The user-facing input rules, through the real gateway process ---------------------------


def _post_text(stack: Any, body: Any) -> httpx.Response:
    return httpx.post(stack.gateway.url + "/search/text", json=body, timeout=30.0)


@pytest.mark.parametrize(
    ("body", "sentence"),
    [
        ({"k": 5}, "Invalid request: query: Field required."),
        ({"query": "a cat", "k": True}, "k: Input should be a valid integer"),
        ({"query": "a cat", "k": "5"}, "k: Input should be a valid integer"),
        ({"query": "a cat", "top_k": 5}, "top_k: Extra inputs are not permitted"),
        ({"query": "a cat", "k": 40, "offset": 980}, "k + offset is 1020"),
    ],
)
def test_bad_search_input_gets_a_422_naming_the_field(
    open_stack: Any, body: dict[str, Any], sentence: str
) -> None:
    r = _post_text(open_stack, body)
    assert r.status_code == 422, r.text
    assert r.json()["error_type"] == "validation_error"
    assert sentence in r.json()["error"], r.json()["error"]


def test_search_forms_still_take_numbers_as_text(open_stack: Any) -> None:
    assert _post_text(open_stack, {"query": "a cat", "k": 5, "offset": 0}).status_code == 200
    png = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 40, 40)).save(png, "PNG")
    r = httpx.post(
        open_stack.gateway.url + "/search/image",
        files={"file": ("red.png", png.getvalue(), "image/png")},
        data={"k": "5", "offset": "0"},
        timeout=30.0,
    )
    assert r.status_code == 200, r.text
    r = httpx.post(
        open_stack.gateway.url + "/search/image",
        files={"file": ("red.png", png.getvalue(), "image/png")},
        data={"k": "five"},
        timeout=30.0,
    )
    assert r.status_code == 422 and "k: Input should be a valid integer" in r.json()["error"]
