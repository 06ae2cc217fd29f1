"""The auth matrix, generated from the gateway's own routes so a new route cannot escape it.

Every (method, path) the app serves is classified by a rule, not by a list of today's routes:
GET/HEAD are reads unless under /admin; any other method is a write unless it is one of the
search POSTs; health, readiness, metrics, the docs and the web page are open. A new POST route
is therefore a write route by default, and the matrix expects it to refuse a missing key.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI
from fastapi.routing import APIRoute
from PIL import Image
from starlette.routing import Mount, Route

READ_POSTS = {"/search/text", "/search/image", "/search"}
OPEN_PATHS = {"/healthz", "/readyz", "/metrics", "/openapi.json", "/docs", "/redoc",
              "/docs/oauth2-redirect", "/static-offline-docs", "/"}
SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}


@dataclass(frozen=True)
class RouteCase:
    method: str
    path: str  # the template, e.g. /images/{image_id}
    kind: str  # "write" | "read" | "open"
    in_schema: bool

    @property
    def url(self) -> str:
        return self.path.replace("{image_id}", "1").replace("{path}", "index.html")


def classify(method: str, path: str) -> str:
    if path in OPEN_PATHS:
        return "open"
    if method in SAFE_METHODS and not path.startswith("/admin"):
        return "read"
    if method == "POST" and path in READ_POSTS:
        return "read"
    return "write"


def _flatten(routes: list[Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for route in routes:
        inner = getattr(route, "original_router", None)  # FastAPI's included-router wrapper
        if inner is not None:
            context = getattr(route, "include_context", None)
            yield from _flatten(inner.routes, prefix + str(getattr(context, "prefix", "") or ""))
        else:
            yield prefix, route


def app_routes(app: FastAPI) -> list[RouteCase]:
    """Every (method, path) the app answers, schema or not, the static mount included."""
    schema_ops = {
        (m.upper(), p) for p, ops in app.openapi()["paths"].items() for m in ops
    }
    cases: set[RouteCase] = set()
    for prefix, route in _flatten(list(app.routes)):
        if isinstance(route, APIRoute | Route):
            path = prefix + route.path
            for method in sorted(route.methods or {"GET"}):
                if method == "HEAD":
                    continue
                cases.add(RouteCase(method, path, classify(method, path),
                                    (method, path) in schema_ops))
        elif isinstance(route, Mount):
            path = prefix + (route.path or "/")
            cases.add(RouteCase("GET", path, classify("GET", path), False))
        else:
            raise AssertionError(f"unknown route type {type(route).__name__}: the matrix must "
                                 "learn it so that no route escapes")
    return sorted(cases, key=lambda c: (c.path, c.method))


def openapi_routes(app: FastAPI) -> set[tuple[str, str]]:
    return {(m.upper(), p) for p, ops in app.openapi()["paths"].items() for m in ops}


def _tiny_png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (10, 200, 30)).save(buf, "PNG")
    return buf.getvalue()


def request_kwargs(app: FastAPI, case: RouteCase) -> dict[str, Any]:
    """A plausible request for the route, built from its OpenAPI request body."""
    op = app.openapi()["paths"].get(case.path, {}).get(case.method.lower(), {})
    content = (op.get("requestBody") or {}).get("content", {})
    if "application/json" in content:
        return {"json": {"query": "a red square", "terms": [{"text": "red"}],
                         "sha256": ["0" * 64], "factory": None, "wait": False}}
    if "multipart/form-data" in content:
        ref = content["multipart/form-data"]["schema"].get("$ref", "")
        schema = app.openapi()["components"]["schemas"].get(ref.rsplit("/", 1)[-1], {})
        files = []
        for name, prop in schema.get("properties", {}).items():
            binary = prop.get("format") == "binary" or prop.get("contentMediaType") or (
                prop.get("type") == "array"
                and (prop.get("items", {}).get("format") == "binary"
                     or prop.get("items", {}).get("contentMediaType"))
            )
            if binary:
                files.append((name, ("red.png", _tiny_png(), "image/png")))
        return {"files": files or [("file", ("red.png", _tiny_png(), "image/png"))]}
    return {}
