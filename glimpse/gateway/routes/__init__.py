"""The gateway's public routes, a module per concern."""

from __future__ import annotations

from fastapi import APIRouter

from glimpse.gateway.routes import admin, duplicates, images, ingest, library, models, ops, search

router = APIRouter()
for _concern in (search, ingest, images, library, admin, models, ops, duplicates):
    router.include_router(_concern.router)
