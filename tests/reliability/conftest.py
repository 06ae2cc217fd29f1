"""Fixtures of the reliability suite: service processes, a small tmpfs, the figure recorder.

Each test records the figure RELIABILITY.md asks for with ``figure(...)``; the values land in
``artifacts/reliability/<test>.json`` (git-ignored) and in the JUnit properties, which is
where bench/results/reliability.csv (docs/results.md) takes its numbers from.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.reliability._services import ci, index_process
from tests.support.procs import REPO, ServiceProcess

FIGURES_DIR = REPO / "artifacts" / "reliability"


@pytest.fixture
def figure(request: pytest.FixtureRequest, record_property: Callable[[str, Any], None]
           ) -> Callable[..., None]:
    """Record a test's measured figures (JSON under artifacts/reliability/)."""

    recorded: dict[str, Any] = {}

    def record(**values: Any) -> None:
        FIGURES_DIR.mkdir(parents=True, exist_ok=True)
        name = request.node.name.replace("/", "_").replace(" ", "_")
        recorded.update(values)  # this run's figures only, never an older run's
        (FIGURES_DIR / f"{name}.json").write_text(json.dumps(recorded, indent=1, default=str))
        for key, value in values.items():
            record_property(key, value)

    return record


@contextmanager
def mounted_tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` (e.g. '4m') at ``path``, unmounted on exit.

    Skips with the reason when this machine may not mount (not root, no CAP_SYS_ADMIN), except
    under CI, where the disk-full tests must run, so it fails instead.
    """
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "glimpse-test", str(path)],
        capture_output=True, text=True,
    )
    if done.returncode != 0:
        reason = f"cannot mount a tmpfs here ({done.stderr.strip() or done.returncode})"
        if ci():
            pytest.fail(reason + "; CI must run the disk-full tests")
        pytest.skip(reason)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def resize_tmpfs(path: Path, size: str) -> None:
    subprocess.run(["mount", "-o", f"remount,size={size}", str(path)], check=True)


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Callable[[str, str], Path]]:
    """``tmpfs(name, size)`` mounts a small tmpfs under tmp_path; all are unmounted after."""
    stack: list[Any] = []

    def make(name: str, size: str) -> Path:
        cm = mounted_tmpfs(tmp_path / name, size)
        path = cm.__enter__()
        stack.append(cm)
        return path

    yield make
    for cm in reversed(stack):
        cm.__exit__(None, None, None)


@pytest.fixture
def start_index(tmp_path: Path) -> Iterator[Callable[..., ServiceProcess]]:
    """``start_index(data_dir, **INDEX_env)`` starts an index service; all stop at teardown."""
    procs: list[ServiceProcess] = []

    def start(data_dir: Path | None = None, name: str = "index", **env: str) -> ServiceProcess:
        proc = index_process(tmp_path, data_dir or tmp_path / "index-data", name, **env)
        procs.append(proc)
        return proc.start(90)

    yield start
    for proc in procs:
        proc.kill()


API_KEY = "reliability-suite-key"


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One shared stack (index, tiny encoder, gateway with an API key) for the tests that do
    not kill or reconfigure it; starting the encoder costs tens of seconds on a busy machine.
    Tests that need other settings start their own gateway or index beside it."""
    from tests.support.stack import start_stack

    root = tmp_path_factory.mktemp("shared-stack")
    with start_stack(
        root,
        timeout=180.0,
        GATEWAY_API_KEY=API_KEY,
        # The gateway enforces the encoder's file limit (read from its /v1/info).
        ENCODER_MAX_FILE_BYTES=str(4 * 1024 * 1024),
        GATEWAY_MAX_BODY_BYTES=str(16 * 1024 * 1024),
        GATEWAY_MAX_FILES_PER_REQUEST="16",
        GATEWAY_FSYNC="false",
        # Batch-vs-single consistency (#9) must compare two forward passes, not a cache hit.
        ENCODER_TEXT_CACHE_SIZE="0",
    ) as s:
        yield s


@pytest.fixture
def writer(stack: Any) -> Iterator[Any]:
    """An httpx client on the shared gateway with the write key."""
    with stack.client(API_KEY) as client:
        yield client


@pytest.fixture
def reader(stack: Any) -> Iterator[Any]:
    """An httpx client on the shared gateway without a key."""
    with stack.client() as client:
        yield client
