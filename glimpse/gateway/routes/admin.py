"""The admin routes: index snapshot and rebuild, and the libraries' status and scans."""

from __future__ import annotations

from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Path

from glimpse.contracts.errors import ERROR_RESPONSES, ErrorType, GlimpseError
from glimpse.contracts.index import RebuildRequest, RebuildResponse, SnapshotResponse
from glimpse.gateway.backfill import backfill_of
from glimpse.gateway.library import Libraries
from glimpse.gateway.state import GatewayState, State, WriteAccess

router = APIRouter(responses=ERROR_RESPONSES)


@router.post(
    "/admin/index/snapshot",
    response_model=SnapshotResponse,
    tags=["admin"],
    dependencies=[WriteAccess],
)
async def admin_snapshot(state: State) -> Any:
    """Ask the index to write a snapshot now."""
    return await state.index.json("POST", "/v1/index/snapshot")


@router.post(
    "/admin/index/rebuild",
    response_model=RebuildResponse,
    tags=["admin"],
    dependencies=[WriteAccess],
)
async def admin_rebuild(body: RebuildRequest, state: State) -> Any:
    """Ask the index to retrain now (optionally with a forced Faiss factory string)."""
    return await state.index.json("POST", "/v1/index/rebuild", json=body.model_dump())


@router.post("/admin/backfill", status_code=202, tags=["admin"], dependencies=[WriteAccess])
async def admin_backfill(state: State) -> dict[str, Any]:
    """Read the metadata of items ingested before it was read, from their originals, in the
    background; resumes where a stopped one left off (glimpse/gateway/backfill.py)."""
    return await backfill_of(state).start()


@router.get("/admin/backfill", tags=["admin"], dependencies=[WriteAccess])
async def admin_backfill_status(state: State) -> dict[str, Any]:
    """The backfill's progress: status, cursor (the last item id done), total, updated,
    skipped, failed."""
    return backfill_of(state).status()


def _libraries(state: GatewayState) -> Libraries:
    if state.libraries is None:
        raise GlimpseError(
            ErrorType.not_found,
            "No library is configured (GATEWAY_LIBRARIES is not set).",
            {"libraries": []},
        )
    return state.libraries


@router.get("/admin/libraries", tags=["admin"], dependencies=[WriteAccess])
async def admin_libraries(state: State) -> dict[str, Any]:
    """Per library: files seen, indexed, pending, failed (with reasons), the last scan and the
    watcher's kind."""
    libraries = _libraries(state)
    return {"libraries": await anyio.to_thread.run_sync(libraries.status)}


@router.post(
    "/admin/libraries/{name}/scan", status_code=202, tags=["admin"], dependencies=[WriteAccess]
)
async def admin_library_scan(
    name: Annotated[str, Path(max_length=200, description="The library's name.")], state: State
) -> dict[str, Any]:
    """Ask for a scan of a library now (it runs in the background; see GET /admin/libraries)."""
    library = _libraries(state).get(name)
    library.rescan_requested.set()
    # Seen by the process that syncs the library when it is another one (library.py).
    await anyio.to_thread.run_sync(library.state.set_info, "scan_requested", 1)
    return {"library": await anyio.to_thread.run_sync(library.status)}
