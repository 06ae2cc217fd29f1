"""The compose smoke test (ci/compose_smoke.sh) as a pytest test, on demand.

It builds three images and runs the whole stack on a real Docker engine: 10 to 25 minutes and
tens of GB of disk where the engine stores images as full copies (vfs) and torch comes from
PyPI. So it runs only when asked, `GLIMPSE_DOCKER_SMOKE=1 pytest -m docker`, or as
`make smoke`; the static checks of the same files (test_compose_files.py) run always.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.docker
@pytest.mark.slow
@pytest.mark.timeout(3600)
@pytest.mark.skipif(
    os.environ.get("GLIMPSE_DOCKER_SMOKE") != "1",
    reason="the compose smoke test runs on demand: GLIMPSE_DOCKER_SMOKE=1 (or make smoke)",
)
def test_compose_smoke() -> None:
    run = subprocess.run(
        ["bash", str(ROOT / "ci" / "compose_smoke.sh")],
        cwd=ROOT, capture_output=True, text=True, timeout=3500, check=False,
    )
    assert run.returncode == 0, run.stderr[-6000:] + run.stdout[-2000:]
    assert "PASS in" in run.stderr
