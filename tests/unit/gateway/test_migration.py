"""The model migration's pieces without the services (glimpse/gateway/migration.py): space
names, and a migration that runs out of disk stops with the old space serving."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from glimpse.contracts.errors import ErrorType, GlimpseError
from glimpse.gateway.clients import EmbeddedImages
from glimpse.gateway.media import MediaStore
from glimpse.gateway.migration import Migration, space_name
from glimpse.index.spaces import NAME_PATTERN


@pytest.mark.parametrize("model, pretrained", [
    ("glimpse-tiny-32", "none"),
    ("ViT-B-32", "laion2b_s34b_b79k"),
    ("hf-hub:timm/ViT-SO400M-14-SigLIP-384", "/models/" + "x" * 200 + ".safetensors"),
    ("4-layer", "none"),
])
def test_space_names_follow_the_index_rule(model: str, pretrained: str) -> None:
    name = space_name(model, pretrained)
    assert re.fullmatch(NAME_PATTERN, name), name
    assert space_name(model, pretrained) == name
    assert space_name(model, "other") != name
    assert space_name("glimpse-tiny-32", "none") == "glimpse_tiny_32_none"


class FakeEncoder:
    def __init__(self) -> None:
        self.serving: tuple[str | None, str | None] = (None, None)
        self.loads: dict[str, Any] = {}
        self.model: str | None = "glimpse-tiny"

    async def json(self, method: str, path: str, **kwargs: Any) -> Any:
        assert (method, path) == ("POST", "/v1/models")
        return {"model": "glimpse-tiny-32", "pretrained": "none", "dim": 32, "image_size": 64,
                "default": False}

    async def info(self) -> dict[str, Any]:
        return {"model": "glimpse-tiny"}

    async def embed_text(self, texts: list[str], model: str | None = None) -> np.ndarray:
        assert model == "glimpse-tiny"  # the throttle's probes: a search by the old model
        return np.ones((len(texts), 64), dtype=np.float32) / 8.0

    async def embed_images_wire(self, files: Any, model: str | None = None) -> EmbeddedImages:
        assert model == "glimpse-tiny-32"
        return EmbeddedImages(["AAAA"] * len(files), [None] * len(files), [(1, 1)] * len(files))


class FullIndex:
    """An index whose disk fills up at the first space write."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    async def json(self, method: str, path: str, **kwargs: Any) -> Any:
        self.calls.append((method, path))
        if path == "/v1/spaces" and method == "GET":
            return {"active": "default", "spaces": [{"name": "default", "dim": 64}]}
        if path == "/v1/spaces":
            return {}
        if path == "/v1/search":
            return {"results": [[]]}
        if path.endswith("/pending"):
            return {"items": [{"id": 1, "key": "a" * 64, "path": "p.jpg"}], "done": 0,
                    "total": 1}
        if path.endswith("/vectors"):
            raise GlimpseError(ErrorType.insufficient_storage,
                               "The index service is out of disk space: no room.")
        raise AssertionError(path)


def test_a_full_disk_stops_the_migration_and_the_old_space_serves(tmp_path: Path) -> None:
    media = MediaStore(tmp_path)
    media.setup()
    (tmp_path / "originals").mkdir(exist_ok=True)
    media.original_path("a" * 64).write_bytes(b"jpeg bytes")
    index = FullIndex()
    state = SimpleNamespace(media=media, encoder=FakeEncoder(), index=index)
    migration = Migration(state)  # type: ignore[arg-type]

    async def scenario() -> dict[str, Any]:
        await migration.begin("glimpse-tiny-32", "none")
        assert migration._runner is not None
        await asyncio.wait_for(migration._runner, 30)
        await migration.refresh()
        return migration.status()

    status = asyncio.run(scenario())
    assert status["state"] == "failed"
    assert "out of disk space" in status["error"]
    assert status["serving_space"] == "default" and state.encoder.serving == (None, "default")
    assert ("POST", "/v1/spaces/glimpse_tiny_32_none/activate") not in index.calls


def _plan(saved: dict[str, Any]) -> tuple[tuple[str | None, str | None], list[str]]:
    """(model, space) an ingest adds with, and the other spaces it encodes into."""
    migration = Migration(SimpleNamespace(media=SimpleNamespace(root=Path("/nowhere"))))  # type: ignore[arg-type]
    migration.saved = saved
    model_space = migration.ingest_space()
    added_into = model_space[1] or "default"
    others = [s for s in migration._needed_spaces() if s not in (added_into, "default")]
    return model_space, others


NEW_PAIR = {"model": "glimpse-tiny-32", "space": "tiny32"}
RUN = {"model": "glimpse-tiny-32", "encoder_model": "glimpse-tiny-32", "space": "tiny32",
       "old_model": "glimpse-tiny", "old_space": "default", "builtin_optional": True}


@pytest.mark.parametrize("saved, plan", [
    ({}, ((None, None), [])),
    ({**RUN, "state": "running", "serving": {"model": None, "space": "default"}},
     ((None, None), ["tiny32"])),
    ({**RUN, "state": "switched", "serving": NEW_PAIR}, ((None, None), ["tiny32"])),
    ({**RUN, "state": "rolled_back", "serving": {"model": None, "space": "default"}},
     ((None, None), [])),
    # Confirmed away from the built-in space: the serving model alone, straight into its space.
    ({**RUN, "state": "confirmed", "serving": NEW_PAIR}, (("glimpse-tiny-32", "tiny32"), [])),
    # ... unless the index needs every item's built-in vector (Milvus): both, as before.
    ({**RUN, "state": "confirmed", "serving": NEW_PAIR, "builtin_optional": False},
     ((None, None), ["tiny32"])),
    # A next migration from there: its old and new spaces, never the built-in one.
    ({**RUN, "state": "running", "serving": NEW_PAIR, "space": "big", "encoder_model": "big",
      "old_space": "tiny32", "old_model": "glimpse-tiny-32"},
     (("glimpse-tiny-32", "tiny32"), ["big"])),
])
def test_an_ingest_encodes_with_the_models_its_spaces_need(
    saved: dict[str, Any], plan: tuple[tuple[str | None, str | None], list[str]],
) -> None:
    assert _plan(saved) == plan
