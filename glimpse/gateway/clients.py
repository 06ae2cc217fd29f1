"""The gateway's clients of the encoder and the index: their calls, on :class:`Upstream`
(glimpse/gateway/upstream.py: replicas, failover, and the mapping of failures)."""

from __future__ import annotations

import asyncio
import binascii
from collections.abc import Sequence
from contextvars import ContextVar
from typing import Any, NamedTuple

import numpy as np

from glimpse.contracts import image_wire
from glimpse.contracts.errors import ErrorType, GlimpseError
from glimpse.contracts.vectors import VectorLike, decode_vectors, encode_vector
from glimpse.gateway.http import HttpPool
from glimpse.gateway.replicas import ReplicaSet
from glimpse.gateway.upstream import Upstream
from glimpse.imaging import DEFAULT_LIMITS, ImageLimits


def _vector(value: Any, dim: int | None = None) -> np.ndarray:
    return decode_vectors([value], dim, what="upstream vector", allow_zero=True)[0]


def checked_wire_vectors(values: Sequence[Any], dim: int) -> list[VectorLike | None]:
    """``values`` (vectors in their wire form, or None) as they are, once they pass the checks
    :func:`decode_vectors` makes (``dim`` values each, all finite).

    Ingest passes the encoder's vectors on to the index as they came: decoding each to an
    array and encoding it again cost event-loop CPU per image (bench/bench_ingest.py). The base64
    form (what the gateway asks for) is checked for the whole batch at once; anything else,
    or anything that fails, goes through decode_vectors, which names the problem.
    """
    present = [v for v in values if v is not None]
    if not present:
        return list(values)
    length = 4 * ((4 * dim + 2) // 3)  # base64 of dim little-endian float32 values
    try:
        if all(type(v) is str and len(v) == length for v in present):
            raw = b"".join([binascii.a2b_base64(v, strict_mode=True) for v in present])
            if np.isfinite(np.frombuffer(raw, dtype="<f4")).all():
                return list(values)
    except (binascii.Error, ValueError):
        pass  # decode_vectors says what is wrong
    decode_vectors(present, dim, what="upstream vector", allow_zero=True)
    return list(values)


class EmbeddedImages(NamedTuple):
    """The encoder's answer for a batch of files, one slot per file in each list."""

    vectors: list[VectorLike | None]  # None where the file has an error
    errors: list[dict[str, Any] | None]  # {"error", "error_type"}
    sizes: list[tuple[int, int] | None]  # (width, height) as displayed, beside each vector


def _size(value: Any, slot: int) -> tuple[int, int]:
    """An image's (width, height) from the encoder's answer, checked."""
    if isinstance(value, dict):
        width, height = value.get("width"), value.get("height")
        if type(width) is int and type(height) is int and width >= 1 and height >= 1:
            return width, height
    raise GlimpseError(
        ErrorType.upstream_error,
        f"The encoder answered no valid size for files[{slot}] ({str(value)[:80]}).",
    )


# The index space and the model a search's query was embedded with: set by the embed call
# and read by the search and its answer in the same request, so a model switch meanwhile never
# pairs one model's vector with another model's space or name.
QUERY_SPACE: ContextVar[str | None] = ContextVar("glimpse_query_space", default=None)
QUERY_MODEL: ContextVar[str | None] = ContextVar("glimpse_query_model", default=None)
BUILTIN_SPACE = "default"  # the index's items' own vectors (the encoder's configured model)

# How often the encoder's limits are asked for while no encoder answers.
LIMITS_RETRY_S = 1.0


class EncoderClient(Upstream):
    """glimpse.encoder: text and image bytes to unit vectors, and each image's size.

    Images go on the image wire (glimpse/contracts/image_wire.py). The encoder's file and pixel
    limits (``limits``, from its /v1/info) are the gateway's too: it refuses a file over the
    byte limit before sending it, and a thumbnail over the pixel limit before decoding it.
    They are read at start (retried until an encoder answers; the defaults stand meanwhile),
    again whenever a replica that was down answers, and before /readyz first says ready.
    Replicas are meant to share their settings; the last answer wins.
    """

    def __init__(self, client: HttpPool | ReplicaSet, **options: float) -> None:
        super().__init__("encoder", client, **options)
        self._model: str | None = None
        # The model searches embed with (a migration's new one once it switched; None: the
        # encoder's configured model) and the index space of its vectors (None: the active
        # one); and how to load each model a call may name: an encoder that restarted serves
        # its configured model only (glimpse/gateway/migration.py).
        self.serving: tuple[str | None, str | None] = (None, None)
        self.loads: dict[str, dict[str, Any]] = {}
        self.limits: ImageLimits = DEFAULT_LIMITS
        self.limits_known = False
        self._reading: asyncio.Task[None] | None = None
        self.replicas.on_back = lambda replica: self.read_limits()

    def read_limits(self) -> None:
        """Read the limits in the background (one reading at a time), retrying until it works."""
        if self._reading is None or self._reading.done():
            self._reading = asyncio.ensure_future(self._read_limits())

    async def _read_limits(self) -> None:
        while True:
            try:
                await self.info()
                return
            except GlimpseError:
                await asyncio.sleep(LIMITS_RETRY_S)

    async def aclose(self) -> None:
        if self._reading is not None:
            self._reading.cancel()
        await super().aclose()

    async def ready(self) -> tuple[bool, str]:
        ok, line = await super().ready()
        if ok and not self.limits_known:
            try:
                await self.info()
            except GlimpseError as exc:
                return False, f"its limits are not known yet ({exc.message})"
        return ok, line

    @property
    def model(self) -> str | None:
        """The model this request's search embedded with, else the last one searches used."""
        return QUERY_MODEL.get() or self._model

    @model.setter
    def model(self, name: str | None) -> None:
        self._model = name
        QUERY_MODEL.set(name)

    def for_stored(self) -> str | None:
        """The space of the stored vectors a search uses ("more like this", an image term);
        it and its model are noted for this request's search and answer here, since image
        terms are read in tasks of their own, whose notes would not reach the search."""
        model, space = self.serving
        QUERY_SPACE.set(space)
        if model is not None:
            QUERY_MODEL.set(model)
        return space

    def _for_search(self) -> str | None:
        """The model a search embeds with; its space is noted for this request's search."""
        model, space = self.serving
        QUERY_SPACE.set(space)
        return model

    async def _embed(self, model: str | None, path: str, **kwargs: Any) -> Any:
        """An embed call with the encoder's ``model``; a model the encoder lost (it restarted)
        is loaded again once, when this gateway knows how."""
        params = {**kwargs.pop("params", {}), **({} if model is None else {"model": model})}
        try:
            return await self.json("POST", path, params=params, **kwargs)
        except GlimpseError as exc:
            load = self.loads.get(model or "")
            details = exc.details if isinstance(exc.details, dict) else {}
            if load is None or details.get("model") != model or "loaded" not in details:
                raise
        await self.json("POST", "/v1/models", json=load)
        return await self.json("POST", path, params=params, **kwargs)

    async def embed_text(self, texts: Sequence[str], model: str | None = None) -> np.ndarray:
        """Vectors of ``texts`` by ``model`` (default: the one searches use)."""
        chosen = model if model is not None else self._for_search()
        body = await self._embed(
            chosen, "/v1/embed/text",
            json={"texts": list(texts), "encoding": "base64"},
        )
        if model is None:
            self.model = body["model"]
        return decode_vectors(body["embeddings"], body["dim"], what="embeddings", allow_zero=True)

    async def embed_images(
        self, files: Sequence[tuple[str, bytes]]
    ) -> tuple[list[np.ndarray | None], list[dict[str, Any] | None]]:
        """One vector or one error per (name, bytes), in order; when no file could be used,
        the encoder's 4xx is raised (the first file's error)."""
        answer = await self._embed_images(files, self._for_search())
        return [None if v is None else _vector(v) for v in answer.vectors], answer.errors

    async def embed_images_wire(
        self, files: Sequence[tuple[str, bytes]], model: str | None = None
    ) -> EmbeddedImages:
        """Per (name, bytes), in order: its vector, checked but left in its wire form (base64,
        as the index takes it), or its error; and its size as displayed. When no file could
        be used, each file's error all the same (the encoder answers that as a 4xx).
        ``model``: the encoder's configured one by default (the model of the index's items)."""
        try:
            return await self._embed_images(files, model)
        except GlimpseError as exc:
            errors = exc.details.get("errors") if isinstance(exc.details, dict) else None
            if (
                not 400 <= exc.status < 500
                or not isinstance(errors, list)
                or len(errors) != len(files)
                or not all(isinstance(e, dict) for e in errors)
            ):
                raise
            nothing: list[Any] = [None] * len(files)
            return EmbeddedImages(list(nothing), errors, list(nothing))

    async def _embed_images(
        self, files: Sequence[tuple[str, bytes]], model: str | None
    ) -> EmbeddedImages:
        body = await self._embed(
            model,
            "/v1/embed/image",
            body=image_wire.pack_pieces(files),
            content_type=image_wire.CONTENT_TYPE,
            params={"encoding": "base64"},
        )
        if model == self.serving[0]:
            self.model = body["model"]
        embeddings = body["embeddings"]
        errors = list(body.get("errors") or [None] * len(embeddings))
        sizes = body.get("sizes")
        if not (len(embeddings) == len(errors) == len(files)) or not isinstance(sizes, list) \
                or len(sizes) != len(files):
            raise GlimpseError(
                ErrorType.upstream_error,
                f"The encoder answered {len(embeddings)} slots for {len(files)} files.",
            )
        return EmbeddedImages(
            checked_wire_vectors(embeddings, body["dim"]),
            errors,
            [None if v is None else _size(size, i) for i, (v, size) in
             enumerate(zip(embeddings, sizes, strict=True))],
        )

    async def info(self) -> dict[str, Any]:
        info: dict[str, Any] = await self.json("GET", "/v1/info")
        if self.serving[0] is None:
            self.model = info.get("model", self.model)
        max_bytes, max_pixels = info.get("max_file_bytes"), info.get("max_pixels")
        if isinstance(max_bytes, int) and isinstance(max_pixels, int):
            self.limits = ImageLimits(max_bytes=max_bytes, max_pixels=max_pixels)
            self.limits_known = True
        return info


class IndexClient(Upstream):
    """glimpse.index: vectors to ids, and the stored record of every item."""

    def __init__(self, client: HttpPool | ReplicaSet, **options: float) -> None:
        super().__init__("index", client, **options)
        # The space searches read (glimpse/gateway/migration.py); None: the index's active one.
        self.space: str | None = None

    async def search(
        self,
        vector: np.ndarray,
        k: int,
        *,
        exclude_ids: Sequence[int] = (),
        nprobe: int | None = None,
        filters: dict[str, Any] | None = None,
        detail: int | None = None,
    ) -> list[dict[str, Any]]:
        """The top ``k`` hits; past ``detail`` of them, id and score alone."""
        hits, _ = await self.search_words(vector, k, None, exclude_ids=exclude_ids,
                                          nprobe=nprobe, filters=filters, detail=detail)
        return hits

    async def search_words(
        self,
        vector: np.ndarray,
        k: int,
        words: str | None,
        *,
        words_k: int | None = None,
        exclude_ids: Sequence[int] = (),
        nprobe: int | None = None,
        filters: dict[str, Any] | None = None,
        detail: int | None = None,
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """:meth:`search`, and the top ``words_k`` (else ``k``) keyword hits of ``words`` (each
        with its ``rank``) found in the same exchange."""
        body: dict[str, Any] = {"vectors": [encode_vector(vector)], "k": k}
        if detail is not None and detail < k:
            body["detail"] = detail
        if words is not None:
            body["words"] = words
            if words_k is not None:
                body["words_k"] = words_k
        if exclude_ids:
            body["exclude_ids"] = list(exclude_ids)
        if filters:
            body["filters"] = filters
        if nprobe is not None:
            body["nprobe"] = nprobe
        space = QUERY_SPACE.get() or self.space
        if space is not None:
            body["space"] = space
        answer = await self.json("POST", "/v1/search", json=body)
        return answer["results"][0], answer.get("keywords") or []

    async def add(self, items: list[dict[str, Any]], space: str | None = None
                  ) -> list[dict[str, Any]]:
        """Add items; their vectors are ``space``'s when named (migration.ingest_space)."""
        body = {"items": items, **({} if space is None else {"space": space})}
        answer = await self.json("POST", "/v1/items", json=body)
        added: list[dict[str, Any]] = answer["items"]
        return added

    async def keys_missing(self, keys: Sequence[str]) -> set[str]:
        answer = await self.json("POST", "/v1/keys/missing", json={"keys": list(keys)})
        return set(answer["missing"])

    async def key_ids(self, keys: Sequence[str]) -> dict[str, int]:
        answer = await self.json("POST", "/v1/keys/ids", json={"keys": list(keys)})
        return {str(k): int(v) for k, v in answer["ids"].items()}

    async def item(self, item_id: int) -> dict[str, Any]:
        record: dict[str, Any] = await self.json("GET", f"/v1/items/{item_id}")
        return record

    async def vector(self, item_id: int, space: str | None = None) -> np.ndarray:
        """An item's stored vector in ``space`` (the active one for None); that space is
        noted for this request's search."""
        params = {"encoding": "base64", **({} if space is None else {"space": space})}
        answer = await self.json("GET", f"/v1/items/{item_id}/vector", params=params)
        QUERY_SPACE.set(answer.get("space", space))
        return _vector(answer["vector"], answer.get("dim"))

    async def delete(self, item_id: int) -> None:
        await self.request("DELETE", f"/v1/items/{item_id}", idempotent=False)

    async def update(self, item_id: int, *, path: str) -> dict[str, Any]:
        """The item shows ``path`` from now on (its file moved); its record after."""
        record: dict[str, Any] = await self.json("PATCH", f"/v1/items/{item_id}",
                                                 json={"path": path})
        return record

    async def stats(self) -> dict[str, Any]:
        stats: dict[str, Any] = await self.json("GET", "/v1/stats")
        return stats
