"""The gateway's public routes, a module per concern."""

from __future__ import annotations

from fastapi import APIRouter

from glimpse.gateway.routes import admin, images, ingest, library, ops, search

router = APIRouter()
for _concern in (search, ingest, images, library, admin, ops):
    router.include_router(_concern.router)
