"""The whole Glimpse stack as real processes: index, encoder (tiny model) and gateway.

    from tests.support.stack import start_stack

    @pytest.fixture(scope="module")
    def stack(tmp_path_factory):
        with start_stack(tmp_path_factory.mktemp("stack")) as s:
            yield s

    def test_search(stack):
        r = httpx.post(stack.gateway_url + "/search/text", json={"query": "a cat"})

Each service is a :class:`ServiceProcess` (``stack.index``, ``stack.encoder``,
``stack.gateway``) on its own free port, so a test can ``kill()`` one and ``start()`` it again on
the same port. Extra keyword arguments are environment variables given to all three
(``GATEWAY_API_KEY="..."``, ``INDEX_TRAIN_THRESHOLD="100"``); each service reads only its prefix.
Data lives under the given folder: ``index/``, ``media/``, ``logs/<service>.log``.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.support.procs import ServiceProcess

TINY_DIM = 64

TINY_ENCODER_ENV = {
    "ENCODER_MODEL": "glimpse-tiny",
    "ENCODER_PRETRAINED": "none",
    "ENCODER_DEVICE": "cpu",
    # The test machine's cores are shared by several services and test runs (torch's threads).
    "OMP_NUM_THREADS": "1",
    "HF_HUB_OFFLINE": "1",
}


@dataclass
class Stack:
    """Three running services and where their data is."""

    root: Path
    index: ServiceProcess
    encoder: ServiceProcess
    gateway: ServiceProcess
    env: dict[str, str] = field(default_factory=dict)

    @property
    def gateway_url(self) -> str:
        return self.gateway.url

    @property
    def media_dir(self) -> Path:
        return self.root / "media"

    @property
    def index_dir(self) -> Path:
        return self.root / "index"

    def client(self, api_key: str | None = None, timeout: float = 30.0) -> httpx.Client:
        """An httpx client on the gateway (with the bearer key if given)."""
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        return httpx.Client(base_url=self.gateway_url, headers=headers, timeout=timeout)

    def services(self) -> list[ServiceProcess]:
        return [self.gateway, self.encoder, self.index]

    def stop(self) -> None:
        for service in self.services():
            service.stop()

    def logs(self) -> str:
        """The tail of every service's log, for an assertion message."""
        return "\n".join(f"--- {s.module} ---\n{s.log_tail(2000)}" for s in self.services())


def stack_env(root: Path, **env_overrides: str) -> dict[str, str]:
    """The environment the three services share (tiny model, data under ``root``)."""
    return {
        **TINY_ENCODER_ENV,
        "INDEX_DIM": str(TINY_DIM),
        "INDEX_DATA_DIR": str(root / "index"),
        # Faiss's OpenMP threads spin while idle; on a shared test machine that steals the
        # CPU the other services need.
        "OMP_NUM_THREADS": "1",
        "GATEWAY_MEDIA_DIR": str(root / "media"),
        **{k: str(v) for k, v in env_overrides.items()},
    }


@contextmanager
def start_stack(root: Path, *, timeout: float = 120.0, **env_overrides: str) -> Iterator[Stack]:
    """Start index and encoder (in parallel), then the gateway; stop all three on exit."""
    root.mkdir(parents=True, exist_ok=True)
    logs = root / "logs"
    logs.mkdir(exist_ok=True)
    env = stack_env(root, **env_overrides)
    index = ServiceProcess("glimpse.index.main", env, logs / "index.log")
    encoder = ServiceProcess("glimpse.encoder.main", env, logs / "encoder.log")
    gateway = ServiceProcess(
        "glimpse.gateway.main",
        {**env, "GATEWAY_ENCODER_URL": encoder.url, "GATEWAY_INDEX_URL": index.url},
        logs / "gateway.log",
    )
    stack = Stack(root, index, encoder, gateway, env)
    try:
        with ThreadPoolExecutor(2) as pool:
            started = [pool.submit(s.start, timeout) for s in (index, encoder)]
            for future in started:
                future.result()
        gateway.start(timeout)
        yield stack
    finally:
        stack.stop()


def sample_photos(limit: int | None = None) -> dict[str, bytes]:
    """scikit-image's bundled colour photos as JPEG bytes, by name (no network needed)."""
    from PIL import Image
    from skimage import data

    names = [
        "astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry",
        "motorcycle_left", "retina", "colorwheel", "logo", "page", "camera", "moon",
        "horse", "text", "coins", "clock", "grass", "gravel", "brick", "checkerboard",
    ]
    photos: dict[str, bytes] = {}
    for name in names:
        loader = getattr(data, name, None)
        if loader is None:
            continue
        try:
            array = loader()
        except Exception:  # noqa: BLE001 - a sample missing from this scikit-image build
            continue
        img = Image.fromarray(array)
        if img.mode not in ("RGB", "L"):
            img = img.convert("RGB")
        out = io.BytesIO()
        img.save(out, format="JPEG", quality=90)
        photos[f"{name}.jpg"] = out.getvalue()
        if limit is not None and len(photos) >= limit:
            break
    return photos
