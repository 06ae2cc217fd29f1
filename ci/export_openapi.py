"""Write each service's OpenAPI document to docs/openapi/<service>.json.

The committed documents are the API contracts; tests/unit/test_openapi_drift.py fails when the
code and the files differ, so a change to an API is always a visible change to these files.
Run it (`make openapi`) after an intended API change and commit the result.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SERVICES = ("encoder_service", "index_service", "gateway")  # docs/openapi/<name>.json
OUT_DIR = REPO / "docs" / "openapi"


def openapi_document(service: str) -> dict[str, Any]:
    """The service's OpenAPI document, from an app built with default settings (no lifespan)."""
    module = importlib.import_module(f"glimpse.{service.removesuffix('_service')}.main")
    app = module.create_app()
    return app.openapi()  # type: ignore[no-any-return]


def render(document: dict[str, Any]) -> str:
    return json.dumps(document, indent=2, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if a committed file differs")
    args = parser.parse_args(argv)
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    stale = []
    for service in SERVICES:
        path = OUT_DIR / f"{service}.json"
        text = render(openapi_document(service))
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(str(path.relative_to(REPO)))
        else:
            path.write_text(text)
            print(f"wrote {path.relative_to(REPO)}")
    if stale:
        print("OpenAPI documents out of date (run `make openapi`): " + ", ".join(stale))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
