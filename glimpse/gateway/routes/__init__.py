"""The gateway's public routes, a module per concern."""

from __future__ import annotations

from starlette.routing import BaseRoute

from glimpse.gateway.routes import admin, duplicates, images, ingest, library, models, ops, search

# One flat list for the app's own router: FastAPI matches an included router's routes through a
# wrapper per level on every request, a flat list only once.
routes: list[BaseRoute] = [
    route
    for concern in (search, ingest, images, library, admin, models, ops, duplicates)
    for route in concern.router.routes
]
