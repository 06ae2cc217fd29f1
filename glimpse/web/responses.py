"""The one JSON writer of the Starlette services: orjson, numpy arrays included."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import JSONResponse


class OrjsonResponse(JSONResponse):
    """``content`` (dicts, lists, numbers, strings, numpy arrays) as compact UTF-8 JSON."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)
