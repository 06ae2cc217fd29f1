"""Model migration with search up the whole time (issue 22): POST /admin/model re-encodes every
stored original with another model into a new index space, in the background, then switches
searches to it at once; confirm drops the old space, rollback switches back.

How it runs:

- The encoder loads the new model beside its own (POST /v1/models) and the index gets a space
  named after the model (its dimension from the encoder). A space left by an earlier migration
  to the same model is reused, when its dimension matches, so a migration resumes.
- The re-encoding pages through the space's pending items (GET /v1/spaces/{name}/pending: the
  index says what is left, so a restart resumes from the index itself), reads each original
  the way thumbnails do (the media store, else the library file), embeds it with the new model
  and stores the vectors in the space.
- Throttle: before it starts, the p50 of probe searches is measured idle (a text search as the
  gateway makes it, through the encoder, whose text cache answers it, and the old space: the
  cheapest search, so the slowdown it shows is the largest any search sees); after each batch
  a few more probes are timed, and while their p50 is above 1.5 times the idle one (at least
  ``MIN_IDLE_MS``) the next batch waits longer (doubling), otherwise less (halving).
- New ingests meanwhile are encoded by both models (``encode_new_items``, called by ingest.py).
  Once the built-in space is needed by no search nor rollback (after a confirmed switch away
  from it), an ingest is encoded by the serving model alone and added straight into its space
  (``ingest_space``), the item with no built-in vector (on Milvus its row holds a placeholder
  that built-in searches skip: milvus_store.py); an index that cannot (no ``optional`` on its
  built-in space in GET /v1/spaces) keeps both models encoding.
- At 100 % the space is activated in the index and searches embed with the new model: each
  search uses one (model, space) pair (clients.QUERY_SPACE), before or after the switch.

The state lives in ``<media>/migration.json``, not in the index's space registry: it holds what
the index has no field for (the model's name and weights, the old space to roll back to, the
progress) and the media folder is what every worker and gateway already shares. Every worker
reads it twice a second; the one that holds the media store's lock named ``RUNNER`` (KeyLocks,
the locks ingest takes per key) re-encodes, and when its process dies another one takes over.
Admin changes and progress writes take the lock named ``WRITER`` for their read-modify-write.

One file, over 400 lines: the state file, the admin steps, the runner and the ingest hook share
one Migration object and its invariant (searches pair a model with its space); split, each part
would reach into the others.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import statistics
import time
from collections import deque
from pathlib import Path
from typing import Any

import anyio
import orjson

from glimpse.contracts.errors import ErrorType, GlimpseError
from glimpse.contracts.vectors import encode_vector
from glimpse.gateway.clients import BUILTIN_SPACE
from glimpse.gateway.media import write_atomic
from glimpse.gateway.state import GatewayState

logger = logging.getLogger("glimpse.gateway")

RUNNER = "glimpse-migration-runner"
WRITER = "glimpse-migration-writer"
BATCH = 32  # originals per embed call and per vector write
REFRESH_S = 0.5  # how often a worker reads the state file
SLOWDOWN = 1.5  # search p50 may grow to this many times its idle value
IDLE_PROBES = 15
PROBE_TEXT = "a photo"
PROBES = 3  # probe searches after each batch
WINDOW = 9  # probe timings the p50 is taken over
# The idle p50 the throttle compares with is at least this: below it, the jitter of a loaded
# machine reads as a slowdown and stalls the migration (bench/bench_migration.py --floors).
MIN_IDLE_MS = 5.0
MAX_DELAY_S = 5.0
ACTIVE = ("running", "switched")
# Errors the migration waits out (a service restarting); any other one stops it, the old
# space serving on (a full disk: insufficient_storage).
TRANSIENT = frozenset(e.value for e in (
    ErrorType.upstream_unavailable, ErrorType.upstream_timeout, ErrorType.not_ready,
    ErrorType.overloaded, ErrorType.request_timeout,
))
RETRY_S = 0.5
MAX_RETRY_S = 10.0


def space_name(model: str, pretrained: str) -> str:
    """The index space of a model and its weights: letters, digits and '_', starting with a
    letter, at most 63 characters (the index's rule)."""
    slug = re.sub(r"[^A-Za-z0-9]+", "_", f"{model}__{pretrained}").strip("_")
    name = slug if slug[:1].isalpha() else f"m_{slug}"
    if len(name) > 63:
        digest = hashlib.sha256(name.encode()).hexdigest()[:8]
        name = f"{name[:54]}_{digest}"
    return name


def _p50(samples: Any) -> float:
    return float(statistics.median(samples)) if samples else 0.0


class Migration:
    """One gateway worker's view of the migration, and its runner when it holds the lock."""

    def __init__(self, state: GatewayState) -> None:
        self.state = state
        self.path: Path = state.media.root / "migration.json"
        self.saved: dict[str, Any] = {}
        self._mtime: float | None = None
        self._refresher: asyncio.Task[None] | None = None
        self._runner: asyncio.Task[None] | None = None

    # -- the state file ------------------------------------------------------------------------

    def _read(self) -> dict[str, Any]:
        try:
            saved: dict[str, Any] = orjson.loads(self.path.read_bytes())
            return saved
        except FileNotFoundError:
            return {}
        except (OSError, orjson.JSONDecodeError) as exc:
            logger.warning("migration state %s unreadable: %s", self.path, exc)
            return self.saved

    def _write(self, saved: dict[str, Any], *, durable: bool = True) -> None:
        write_atomic(self.path, orjson.dumps(saved), fsync=durable)

    async def _change(self, change: Any, *, durable: bool = True) -> dict[str, Any]:
        """Apply ``change`` (the saved state -> the new one, or None to keep it) under the
        writer lock, and this worker's view with it."""
        async with self.state.media.locks.hold([WRITER]):
            saved = await anyio.to_thread.run_sync(self._read)
            new = change(dict(saved))
            if new is not None:
                await anyio.to_thread.run_sync(lambda: self._write(new, durable=durable))
                saved = new
        self._apply(saved)
        return saved

    def _apply(self, saved: dict[str, Any]) -> None:
        """Point this worker's searches at the saved (model, space), and start the runner
        when a migration runs and this worker has none."""
        self.saved = saved
        serving = saved.get("serving") or {}
        encoder, index = self.state.encoder, self.state.index
        encoder.loads = {m: dict(body) for m, body in (saved.get("loads") or {}).items()}
        pair = (serving.get("model"), serving.get("space"))
        if pair != encoder.serving:
            encoder.serving = pair
            index.space = pair[1]
            if pair[0] is not None:
                encoder.model = pair[0]
        if saved.get("state") == "running" and (self._runner is None or self._runner.done()):
            self._runner = asyncio.create_task(self._run())

    async def refresh(self) -> None:
        """Read the state file if it changed."""
        try:
            mtime: float | None = (await anyio.to_thread.run_sync(self.path.stat)).st_mtime
        except FileNotFoundError:
            mtime = None
        if mtime != self._mtime or (self.saved.get("state") == "running"
                                    and (self._runner is None or self._runner.done())):
            self._mtime = mtime
            self._apply(await anyio.to_thread.run_sync(self._read))

    def start(self) -> None:
        """Follow the state file from now on (the lifespan calls it): a migration that ran
        before a restart resumes."""
        if self._refresher is None:
            self._refresher = asyncio.create_task(self._follow())

    async def _follow(self) -> None:
        while True:
            try:
                await self.refresh()
            except Exception:  # noqa: BLE001 - the next reading tries again
                logger.exception("reading the migration state failed")
            await asyncio.sleep(REFRESH_S)

    async def stop(self) -> None:
        for task in (self._refresher, self._runner):
            if task is not None:
                task.cancel()
                with anyio.CancelScope(shield=True):
                    await asyncio.gather(task, return_exceptions=True)

    # -- admin ---------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """GET /admin/model's answer."""
        saved = self.saved
        progress = saved.get("progress") or {}
        serving = saved.get("serving") or {}
        return {
            "state": saved.get("state", "idle"),
            "model": saved.get("model"),
            "pretrained": saved.get("pretrained"),
            "space": saved.get("space"),
            "dim": saved.get("dim"),
            "old_model": saved.get("old_model"),
            "old_space": saved.get("old_space"),
            "serving_model": serving.get("model") or self.state.encoder.model,
            "serving_space": serving.get("space"),
            "done": int(progress.get("done", 0)),
            "total": int(progress.get("total", 0)),
            "failed": int(progress.get("failed", 0)),
            "rate": float(progress.get("rate", 0.0)),
            "eta_s": progress.get("eta_s"),
            "idle_p50_ms": progress.get("idle_p50_ms"),
            "search_p50_ms": progress.get("search_p50_ms"),
            "delay_s": float(progress.get("delay_s", 0.0)),
            "error": saved.get("error") or progress.get("last_error"),
        }

    async def begin(self, model: str, pretrained: str | None) -> dict[str, Any]:
        """Start a migration to ``model``: 422 when it cannot be loaded or its space exists
        with another dimension, 409 while one runs or waits for confirm or rollback."""
        await self.refresh()
        if self.saved.get("state") in ACTIVE:
            raise self._busy()
        encoder, index = self.state.encoder, self.state.index
        body = {"model": model, **({} if pretrained is None else {"pretrained": pretrained})}
        loaded = await encoder.json("POST", "/v1/models", json=body)
        name, weights, dim = str(loaded["model"]), str(loaded["pretrained"]), int(loaded["dim"])
        old_model = (self.saved.get("serving") or {}).get("model")
        if old_model is None:
            old_model = str((await encoder.info())["model"])
        if name == old_model:
            raise GlimpseError(ErrorType.conflict,
                               f"Searches use model {name!r} already; nothing to migrate.")
        space = space_name(name, weights)
        listing = await index.json("GET", "/v1/spaces")
        spaces = {s["name"]: int(s["dim"]) for s in listing["spaces"]}
        if space in spaces and spaces[space] != dim:
            raise GlimpseError(
                ErrorType.validation_error,
                f"Space {space!r} of model {name!r} exists with dim {spaces[space]}, but the "
                f"model gives {dim}-d vectors; drop the space (DELETE /v1/spaces/{space} on "
                "the index) to start again.",
                {"model": model, "space": space},
            )
        if space not in spaces:
            await index.json("POST", "/v1/spaces", json={"name": space, "dim": dim})

        def started(saved: dict[str, Any]) -> dict[str, Any]:
            if saved.get("state") in ACTIVE:
                raise self._busy()
            serving = saved.get("serving") or {}
            loads = dict(saved.get("loads") or {})
            loads[name] = {"model": name, "pretrained": weights}
            return {
                "state": "running", "model": model, "pretrained": weights,
                "encoder_model": name, "space": space, "dim": dim,
                "old_model": old_model, "old_space": listing["active"],
                "builtin_optional": any(s.get("optional") for s in listing["spaces"]
                                        if s.get("built_in")),
                # Explicit from now on: each search names the space its model's vectors are in.
                "serving": {"model": serving.get("model"), "space": listing["active"]},
                "loads": loads, "started_at": time.time(), "error": None,
                "progress": {"done": 0, "total": 0, "failed": 0, "rate": 0.0},
            }

        await self._change(started)
        return self.status()

    def _busy(self) -> GlimpseError:
        saved = self.saved
        what = ("runs" if saved.get("state") == "running"
                else "has switched and waits for POST /admin/model/confirm or /rollback")
        return GlimpseError(
            ErrorType.conflict,
            f"A migration to {saved.get('model')!r} {what}; see GET /admin/model.",
            {"state": saved.get("state")},
        )

    async def confirm(self) -> dict[str, Any]:
        """Keep the new space for good: the old one is dropped (the built-in one cannot be:
        it stays, with no vectors of the items ingested from now on; see ``ingest_space``)."""
        await self.refresh()
        if self.saved.get("state") != "switched":
            raise GlimpseError(ErrorType.conflict, "There is no switched migration to confirm "
                               f"(state: {self.saved.get('state', 'idle')}).")
        old = str(self.saved["old_space"])

        def confirmed(saved: dict[str, Any]) -> dict[str, Any] | None:
            if saved.get("state") != "switched":
                return None
            return {**saved, "state": "confirmed"}

        await self._change(confirmed)
        if old != BUILTIN_SPACE:
            try:
                await self.state.index.request("DELETE", f"/v1/spaces/{old}", idempotent=False)
            except GlimpseError as exc:
                if exc.error_type != ErrorType.not_found.value:
                    raise
        return self.status()

    async def rollback(self) -> dict[str, Any]:
        """Searches go back to the old model and space (also stops a running migration; the
        new space is kept, so starting it again resumes)."""
        await self.refresh()
        state = self.saved.get("state")
        if state not in ACTIVE:
            raise GlimpseError(ErrorType.conflict, "There is no running or switched migration "
                               f"to roll back (state: {state or 'idle'}).")
        old_space, old_model = str(self.saved["old_space"]), self.saved.get("old_model")
        await self.state.index.json("POST", f"/v1/spaces/{old_space}/activate")
        default = (await self.state.encoder.info())["model"]

        def rolled_back(saved: dict[str, Any]) -> dict[str, Any] | None:
            if saved.get("state") not in ACTIVE:
                return None
            model = None if old_model == default else old_model
            return {**saved, "state": "rolled_back",
                    "serving": {"model": model, "space": old_space}}

        await self._change(rolled_back)
        return self.status()

    # -- ingest ---------------------------------------------------------------------------------

    def _needed_spaces(self) -> dict[str, str | None]:
        """The model of each space new items need (None: the encoder's own, the built-in
        space's): the serving one, and while a migration runs or waits, its old and new."""
        saved = self.saved
        serving = saved.get("serving") or {}
        needed: dict[str, str | None] = {
            str(serving.get("space") or BUILTIN_SPACE): serving.get("model")}
        if saved.get("state") in ACTIVE:
            needed.setdefault(str(saved["old_space"]), saved.get("old_model"))
            needed.setdefault(str(saved["space"]), str(saved["encoder_model"]))
        if BUILTIN_SPACE in needed or not saved.get("builtin_optional"):
            needed[BUILTIN_SPACE] = None  # the built-in vector is the encoder's own model's
        return needed

    def ingest_space(self) -> tuple[str | None, str | None]:
        """(model, space) an ingest embeds with and adds its items into: (None, None), the
        encoder's own model and the built-in space, unless no search nor rollback needs that
        space any more; then the serving model and its space."""
        needed = self._needed_spaces()
        if BUILTIN_SPACE in needed:
            return None, None
        serving = self.saved.get("serving") or {}
        return serving.get("model"), serving.get("space")

    async def encode_new_items(
        self, items: list[tuple[int, str, bytes]], added_into: str | None = None
    ) -> None:
        """Vectors of items ingested just now ((id, path, bytes)) in every named space they
        need besides ``added_into`` (where the ingest added them, from ``ingest_space``):
        during a migration, new items are encoded by both models. A failure only logs: the
        item stays pending in the space, and the re-encoding gets it."""
        if not items:
            return
        for space, model in self._needed_spaces().items():
            if space in (added_into, BUILTIN_SPACE):
                continue
            try:
                await self._encode_into(model, space, items)
            except GlimpseError as exc:
                logger.warning("new items not yet in space %s: %s", space, exc.message)

    async def _encode_into(
        self, model: str | None, space: str, items: list[tuple[int, str, bytes]]
    ) -> list[int]:
        """Embed ``items`` with ``model`` and store them in ``space``; the ids that failed."""
        answer = await self.state.encoder.embed_images_wire(
            [(path, data) for _, path, data in items], model
        )
        ids, vectors, failed = [], [], []
        for (item_id, _, _), vector in zip(items, answer.vectors, strict=True):
            if vector is None:
                failed.append(item_id)
            else:
                ids.append(item_id)
                vectors.append(vector)
        if ids:
            await self.state.index.json("POST", f"/v1/spaces/{space}/vectors",
                                        json={"ids": ids, "vectors": vectors})
        return failed

    # -- the runner ----------------------------------------------------------------------------

    async def _run(self) -> None:
        """Re-encode while this worker holds the runner lock and the migration runs."""
        try:
            async with self.state.media.locks.hold([RUNNER]):
                await self._run_held()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - reported in the state; the old space serves
            logger.exception("migration stopped")
            message = exc.message if isinstance(exc, GlimpseError) else f"{exc}"

            def failed(saved: dict[str, Any]) -> dict[str, Any] | None:
                if saved.get("state") != "running":
                    return None
                return {**saved, "state": "failed", "error": message}

            await self._change(failed)

    async def _run_held(self) -> None:
        """Re-encode until done; an upstream that is down or restarting (kill -9 of the
        encoder or the index) is waited for, and the pass starts again from /pending."""
        wait = RETRY_S
        while True:
            await self.refresh()
            if self.saved.get("state") != "running":
                return
            try:
                await self._reencode(dict(self.saved))
                return
            except GlimpseError as exc:
                if exc.error_type not in TRANSIENT:
                    raise
                logger.warning("migration waits for its upstreams: %s", exc.message)
                progress = {**(self.saved.get("progress") or {}), "last_error": exc.message}
                await self._progress(progress)
                await asyncio.sleep(wait)
                wait = min(MAX_RETRY_S, wait * 2)

    async def _probe(self, model: str | None, space: str) -> float:
        """One text search as the gateway makes it, in milliseconds: ``model`` embeds the
        probe's text (from the encoder's cache after the first time), ``space`` is searched."""
        started = time.perf_counter()
        vectors = await self.state.encoder.embed_text([PROBE_TEXT], model)
        await self.state.index.json(
            "POST", "/v1/search", json={"vectors": [encode_vector(vectors[0])], "k": 10,
                                        "space": space})
        return (time.perf_counter() - started) * 1000.0

    async def _reencode(self, saved: dict[str, Any]) -> None:
        index, space, model = self.state.index, str(saved["space"]), str(saved["encoder_model"])
        old_space, old_model = str(saved["old_space"]), saved.get("old_model")
        idle = max(MIN_IDLE_MS, _p50([await self._probe(old_model, old_space)
                                      for _ in range(IDLE_PROBES)]))
        timings: deque[float] = deque(maxlen=WINDOW)
        delay, cursor, started, encoded = 0.0, 0, time.monotonic(), 0
        failed_ids: set[int] = set()
        progress_in_pass = False
        while True:
            page = await index.json("GET", f"/v1/spaces/{space}/pending",
                                    params={"after": cursor, "limit": BATCH})
            items = page["items"]
            done, total = int(page["done"]), int(page["total"])
            if not items:
                if done >= total:
                    await self._switch(saved, done, total)
                    return
                if not progress_in_pass and failed_ids:
                    raise GlimpseError(
                        ErrorType.upstream_error,
                        f"{len(failed_ids)} originals cannot be read or embedded (ids "
                        f"{', '.join(map(str, sorted(failed_ids)[:10]))}); the old space "
                        "keeps serving.",
                    )
                cursor, progress_in_pass = 0, False  # items came in behind the cursor
                await asyncio.sleep(REFRESH_S)
                continue
            cursor = int(items[-1]["id"])
            read = await anyio.to_thread.run_sync(self._originals, items)
            missing = {int(i["id"]) for i in items} - {item_id for item_id, _, _ in read}
            failed = missing | set(await self._encode_into(model, space, read) if read else [])
            failed_ids |= failed
            failed_ids -= {item_id for item_id, _, _ in read} - failed
            encoded += len(read) - len(failed & {i for i, _, _ in read})
            progress_in_pass = progress_in_pass or len(failed) < len(items)
            for _ in range(PROBES):
                timings.append(await self._probe(old_model, old_space))
            p50 = _p50(timings)
            delay = (min(MAX_DELAY_S, max(0.05, delay * 2)) if p50 > SLOWDOWN * idle
                     else (delay / 2 if delay > 0.01 else 0.0))
            rate = encoded / max(1e-9, time.monotonic() - started)
            done = min(total, done + len(items) - len(failed))
            progress = {
                "done": done, "total": total, "failed": len(failed_ids),
                "rate": round(rate, 2),
                "eta_s": round((total - done) / rate, 1) if rate > 0 else None,
                "idle_p50_ms": round(idle, 3), "search_p50_ms": round(p50, 3),
                "delay_s": round(delay, 3),
            }
            if not await self._progress(progress):
                return  # rolled back meanwhile
            if delay:
                await asyncio.sleep(delay)

    async def _progress(self, progress: dict[str, Any]) -> bool:
        """Save the progress; False when the migration no longer runs."""

        def update(saved: dict[str, Any]) -> dict[str, Any] | None:
            if saved.get("state") != "running":
                return None
            return {**saved, "progress": progress}

        saved = await self._change(update, durable=False)
        return saved.get("state") == "running"

    def _originals(self, items: list[dict[str, Any]]) -> list[tuple[int, str, bytes]]:
        """(id, path, bytes) of each pending item whose original can be read (as thumbnails
        read them: the media store, else the library file)."""
        out = []
        for item in items:
            try:
                found = self.state.media.find_original(str(item["key"]), str(item["path"]))
                data = found.read_bytes() if isinstance(found, Path) else found
            except OSError as exc:
                logger.info("migration: the original of %s cannot be read: %s",
                            str(item["path"])[:200], exc)
                continue
            if data is not None:
                out.append((int(item["id"]), str(item["path"]), data))
        return out

    async def _switch(self, saved: dict[str, Any], done: int, total: int) -> None:
        """At 100 %: the index answers from the new space, and searches embed with the new
        model (each search pairs them: clients.QUERY_SPACE)."""
        space, model = str(saved["space"]), str(saved["encoder_model"])
        await self.state.index.json("POST", f"/v1/spaces/{space}/activate")

        def switched(current: dict[str, Any]) -> dict[str, Any] | None:
            if current.get("state") != "running":
                return None
            progress = {**(current.get("progress") or {}), "done": done, "total": total,
                        "eta_s": 0.0}
            return {**current, "state": "switched", "switched_at": time.time(),
                    "serving": {"model": model, "space": space}, "progress": progress}

        after = await self._change(switched)
        if after.get("state") != "switched":  # rolled back while it activated: undo that
            await self.state.index.json("POST", f"/v1/spaces/{saved['old_space']}/activate")
        logger.info("migration to %s switched: %d items", model, done)


def migration_of(state: GatewayState) -> Migration:
    """The worker's Migration, made on first use."""
    migration = getattr(state, "migration", None)
    if not isinstance(migration, Migration):
        migration = Migration(state)
        setattr(state, "migration", migration)  # noqa: B010 (GatewayState has no field for it)
    return migration


class MigrationMetrics:
    """Prometheus collector of the migration's progress, read at scrape time."""

    STATES = ("idle", "running", "switched", "confirmed", "rolled_back", "failed")

    def __init__(self, state_of: Any) -> None:
        self.state_of = state_of

    def collect(self) -> Any:
        from prometheus_client.core import GaugeMetricFamily

        state = self.state_of()
        if state is None:
            return
        status = migration_of(state).status()
        states = GaugeMetricFamily("glimpse_migration_state",
                                   "1 for the model migration's state.", labels=["state"])
        for name in self.STATES:
            states.add_metric([name], float(status["state"] == name))
        yield states
        for name, key, text in (
            ("glimpse_migration_done", "done", "Items re-encoded into the new space."),
            ("glimpse_migration_total", "total", "Items the new space needs."),
            ("glimpse_migration_rate", "rate", "Items re-encoded per second."),
            ("glimpse_migration_eta_seconds", "eta_s", "Seconds left at the current rate."),
            ("glimpse_migration_delay_seconds", "delay_s", "The throttle's wait per batch."),
        ):
            value = status[key]
            yield GaugeMetricFamily(name, text, value=float(value or 0.0))
