"""Pooled HTTP clients for the encoder and the index, and the mapping of their failures.

One ``HttpPool`` per upstream (``gateway/http.py``), built in the lifespan, reuses keep-alive
connections (a search is two upstream calls; a new TCP connection each time would cost more
than the gateway's whole budget). Failures become the public error body:

- connection refused / reset, DNS, connect timeout -> 503 ``upstream_unavailable``
- read timeout, or no pooled connection free in it -> 504 ``upstream_timeout``
- upstream 4xx                                     -> the same status and body, passed through
- upstream 503 / 504                               -> 503 ``upstream_unavailable`` / 504
- upstream 507                                     -> 507 ``insufficient_storage``
- any other upstream 5xx, malformed or huge answer -> 502 ``upstream_error``

A pooled keep-alive connection the upstream closed while idle (it restarted) fails on first
use before any byte of an answer; every upstream call we make is idempotent, so that one is
retried once on a fresh connection.
"""

from __future__ import annotations

import asyncio
import urllib.parse
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from contracts.errors import ErrorType, GlimpseError
from contracts.vectors import decode_vectors, encode_vector
from gateway.http import (
    Body,
    HttpPool,
    Reply,
    UpstreamConnectError,
    UpstreamDisconnected,
    UpstreamError,
    UpstreamTimeout,
    json_body,
    multipart_body,
)

FileField = tuple[str, tuple[str, bytes, str]]  # ("files", (filename, bytes, content type))


def build_client(
    base_url: str, *, connect_timeout: float, read_timeout: float, max_connections: int
) -> HttpPool:
    return HttpPool(
        base_url,
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
        max_connections=max_connections,
    )


class _Watch:
    """The patience timer of one upstream call: probe the upstream's health when the call
    has waited ``patience`` seconds; cancel the call if the probe fails, else wait again."""

    def __init__(self, task: asyncio.Task[Any]) -> None:
        self.task = task
        self.dead = False
        self.finished = False
        self.timer: asyncio.TimerHandle | None = None

    def arm(self, upstream: Upstream) -> None:
        loop = asyncio.get_running_loop()
        self.timer = loop.call_later(upstream.patience, self._slow, upstream)

    def _slow(self, upstream: Upstream) -> None:
        if not self.finished:
            upstream._shared_probe().add_done_callback(lambda probe: self._probed(upstream, probe))

    def _probed(self, upstream: Upstream, probe: asyncio.Task[bool]) -> None:
        if self.finished:
            return
        if probe.cancelled() or not probe.result():
            self.dead = True
            self.task.cancel()
        else:
            self.arm(upstream)  # alive but busy: keep waiting, up to the read timeout

    def finish(self) -> None:
        self.finished = True
        if self.timer is not None:
            self.timer.cancel()


class Upstream:
    """One upstream service: requests with failures mapped to the public error body.

    A process that is stopped (SIGSTOP, a hung event loop) still accepts connections, so a
    request to it would wait for the whole read timeout, which must be long enough for a big
    ingest batch. Instead, a request that takes longer than ``patience`` seconds triggers a
    liveness probe (``GET /healthz`` within ``probe_timeout``); if the upstream does not answer
    even that, the request is abandoned with 503 at once. A live but busy upstream is waited
    for, up to the read timeout.
    """

    def __init__(
        self,
        name: str,
        client: HttpPool,
        *,
        patience: float = 0.5,
        probe_timeout: float = 1.0,
    ) -> None:
        self.name = name
        self.client = client
        self.patience = patience
        self.probe_timeout = probe_timeout
        self._probe: asyncio.Task[bool] | None = None

    async def aclose(self) -> None:
        if self._probe is not None:
            self._probe.cancel()
        await self.client.aclose()

    async def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        files: Sequence[FileField] | None = None,
        data: Mapping[str, str] | None = None,
        params: Mapping[str, str | int] | None = None,
        timeout: float | None = None,
    ) -> Reply:
        """One call; ``json`` or a multipart form of ``files`` and ``data`` fields as body."""
        body: Body = b""
        content_type = None
        if files:
            body, content_type = multipart_body(data or {}, files)
        elif data is not None:
            body = urllib.parse.urlencode(data).encode()
            content_type = "application/x-www-form-urlencoded"
        elif json is not None:
            body, content_type = json_body(json)
        kwargs: dict[str, Any] = {
            "body": body, "content_type": content_type, "params": params, "timeout": timeout
        }
        task = asyncio.current_task()
        if task is None:  # not in a task (never in a route): no watchdog
            return await self._request(method, path, **kwargs)
        # A timer rather than a second task per call: the common case, an answer within
        # ``patience``, then costs one timer handle instead of a task and a wait.
        watch = _Watch(task)
        watch.arm(self)
        try:
            return await self._request(method, path, **kwargs)
        except asyncio.CancelledError:
            if not watch.dead or task.uncancel() > 0:
                raise  # cancelled by someone else, or by them too
            raise GlimpseError(
                ErrorType.upstream_unavailable,
                f"The {self.name} service stopped responding (no answer to a request "
                f"for {self.patience:g} s, nor to its health check); try again shortly.",
            ) from None
        finally:
            watch.finish()

    def _shared_probe(self) -> asyncio.Task[bool]:
        # Many slow requests at once share one probe instead of each sending its own.
        if self._probe is None or self._probe.done():
            self._probe = asyncio.ensure_future(self._alive())
        return self._probe

    async def _alive(self) -> bool:
        try:
            # Outside the pool: a probe must not queue behind the slow calls it checks on.
            # wait_for bounds the whole exchange (connect + silence); the pool bounds each part.
            response = await asyncio.wait_for(
                self.client.request("GET", "/healthz", timeout=self.probe_timeout, pooled=False),
                self.probe_timeout,
            )
        except (UpstreamError, asyncio.TimeoutError):
            return False
        return response.status_code == 200

    async def _request(self, method: str, path: str, **kwargs: Any) -> Reply:
        for attempt in (1, 2):
            try:
                response = await self.client.request(method, path, **kwargs)
                break
            except UpstreamDisconnected as exc:
                if attempt == 2 or exc.received or not exc.reused:
                    raise self._unavailable(exc) from exc
                # else: a stale pooled connection; once more, on another connection
            except UpstreamConnectError as exc:
                raise self._unavailable(exc) from exc
            except UpstreamTimeout as exc:
                raise GlimpseError(
                    ErrorType.upstream_timeout,
                    f"The {self.name} service did not answer in time ({exc}).",
                ) from exc
            except UpstreamError as exc:  # malformed or oversized answer
                raise GlimpseError(
                    ErrorType.upstream_error, f"The {self.name} service answered badly ({exc})."
                ) from exc
        if response.status_code >= 400:
            raise self._error_from(response)
        return response

    async def json(self, method: str, path: str, **kwargs: Any) -> Any:
        """``request`` (same keywords), then the answer's JSON."""
        response = await self.request(method, path, **kwargs)
        try:
            return response.json()
        except ValueError as exc:
            raise GlimpseError(
                ErrorType.upstream_error, f"The {self.name} service answered with invalid JSON."
            ) from exc

    async def ready(self) -> str:
        """'ok', or why the upstream is not ready (never raises)."""
        try:
            response = await asyncio.wait_for(
                self.client.request("GET", "/readyz", timeout=2.0, pooled=False), 2.0
            )
        except (UpstreamError, asyncio.TimeoutError) as exc:
            return f"unreachable ({type(exc).__name__})"
        if response.status_code == 200:
            return "ok"
        return f"not ready (HTTP {response.status_code})"

    def _unavailable(self, exc: Exception) -> GlimpseError:
        return GlimpseError(
            ErrorType.upstream_unavailable,
            f"The {self.name} service is unavailable ({type(exc).__name__}); try again shortly.",
        )

    def _error_from(self, response: Reply) -> GlimpseError:
        status = response.status_code
        try:
            body = response.json()
        except ValueError:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            body = None
        if isinstance(body, dict) and "error" in body and "error_type" in body:
            message, error_type, details = body["error"], body["error_type"], body.get("details")
        else:
            message = f"The {self.name} service answered HTTP {status}."
            error_type, details = None, None
        if 400 <= status < 500:
            return GlimpseError(
                error_type or ErrorType.bad_request, message, details, status=status
            )
        if status == 507:
            return GlimpseError(
                ErrorType.insufficient_storage,
                f"The {self.name} service is out of disk space: {message}",
            )
        if status == 503:
            return GlimpseError(
                ErrorType.upstream_unavailable, f"The {self.name} service is not ready: {message}"
            )
        if status == 504:
            return GlimpseError(
                ErrorType.upstream_timeout, f"The {self.name} service timed out: {message}"
            )
        return GlimpseError(
            ErrorType.upstream_error, f"The {self.name} service failed: {message}"
        )


def _vector(value: Any, dim: int | None = None) -> np.ndarray:
    return decode_vectors([value], dim, what="upstream vector", allow_zero=True)[0]


class EncoderClient(Upstream):
    """encoder_service: text and image bytes to unit vectors."""

    def __init__(self, client: HttpPool, **options: float) -> None:
        super().__init__("encoder", client, **options)
        self.model: str | None = None

    async def embed_text(self, texts: Sequence[str]) -> np.ndarray:
        body = await self.json(
            "POST", "/v1/embed/text", json={"texts": list(texts), "encoding": "base64"}
        )
        self.model = body["model"]
        return decode_vectors(body["embeddings"], body["dim"], what="embeddings", allow_zero=True)

    async def embed_images(
        self, files: Sequence[tuple[str, bytes, str]]
    ) -> tuple[list[np.ndarray | None], list[dict[str, Any] | None]]:
        """One vector or one error per (filename, bytes, content type), in order."""
        body = await self.json(
            "POST",
            "/v1/embed/image",
            files=[("files", f) for f in files],
            data={"encoding": "base64"},
        )
        self.model = body["model"]
        vectors = [None if e is None else _vector(e, body["dim"]) for e in body["embeddings"]]
        errors = list(body.get("errors") or [None] * len(vectors))
        if len(vectors) != len(files) or len(errors) != len(files):
            raise GlimpseError(
                ErrorType.upstream_error,
                f"The encoder answered {len(vectors)} slots for {len(files)} files.",
            )
        return vectors, errors

    async def info(self) -> dict[str, Any]:
        info: dict[str, Any] = await self.json("GET", "/v1/info")
        self.model = info.get("model", self.model)
        return info


class IndexClient(Upstream):
    """index_service: vectors to ids, and the stored record of every item."""

    def __init__(self, client: HttpPool, **options: float) -> None:
        super().__init__("index", client, **options)

    async def search(
        self,
        vector: np.ndarray,
        k: int,
        *,
        exclude_ids: Sequence[int] = (),
        nprobe: int | None = None,
    ) -> list[dict[str, Any]]:
        body: dict[str, Any] = {"vectors": [encode_vector(vector)], "k": k}
        if exclude_ids:
            body["exclude_ids"] = list(exclude_ids)
        if nprobe is not None:
            body["nprobe"] = nprobe
        answer = await self.json("POST", "/v1/search", json=body)
        hits: list[dict[str, Any]] = answer["results"][0]
        return hits

    async def add(self, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        answer = await self.json("POST", "/v1/items", json={"items": items})
        added: list[dict[str, Any]] = answer["items"]
        return added

    async def keys_missing(self, keys: Sequence[str]) -> set[str]:
        answer = await self.json("POST", "/v1/keys/missing", json={"keys": list(keys)})
        return set(answer["missing"])

    async def item(self, item_id: int) -> dict[str, Any]:
        record: dict[str, Any] = await self.json("GET", f"/v1/items/{item_id}")
        return record

    async def vector(self, item_id: int) -> np.ndarray:
        answer = await self.json(
            "GET", f"/v1/items/{item_id}/vector", params={"encoding": "base64"}
        )
        return _vector(answer["vector"], answer.get("dim"))

    async def delete(self, item_id: int) -> None:
        await self.request("DELETE", f"/v1/items/{item_id}")

    async def stats(self) -> dict[str, Any]:
        stats: dict[str, Any] = await self.json("GET", "/v1/stats")
        return stats
