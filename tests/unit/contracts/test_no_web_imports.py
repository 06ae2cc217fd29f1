"""glimpse.contracts holds bodies only: importing it loads neither FastAPI nor Starlette, so a
client or a tool can use the bodies without a web framework (the handlers live in glimpse.web)."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import glimpse.contracts


def test_contracts_import_no_web_framework() -> None:
    modules = sorted(
        f"glimpse.contracts.{m.name}" for m in pkgutil.iter_modules(glimpse.contracts.__path__)
    )
    assert "glimpse.contracts.errors" in modules  # the listing found the package's modules
    script = (
        "import importlib, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('fastapi', 'starlette')))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    assert out.strip() == "[]", f"glimpse.contracts imports a web framework: {out.strip()}"
