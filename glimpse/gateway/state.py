"""What the gateway holds while it runs (built in the lifespan), and how routes get it."""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Generic, TypeVar

import anyio
from fastapi import Depends, Path, Request

from glimpse.gateway.clients import EncoderClient, IndexClient
from glimpse.gateway.config import Settings
from glimpse.gateway.media import MediaStore
from glimpse.gateway.security import check_api_key

if TYPE_CHECKING:
    from glimpse.gateway.library import Libraries

K = TypeVar("K")
V = TypeVar("V")


class LruCache(Generic[K, V]):
    """A bounded map that forgets the least recently used entry first, and any entry older than
    ``ttl`` seconds (None: kept until pushed out)."""

    def __init__(
        self, size: int, ttl: float | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.size = size
        self.ttl = ttl
        self.clock = clock
        self._items: OrderedDict[K, tuple[V, float]] = OrderedDict()

    def get(self, key: K) -> V | None:
        item = self._items.get(key)
        if item is None:
            return None
        value, expires = item
        if self.clock() >= expires:
            del self._items[key]
            return None
        self._items.move_to_end(key)
        return value

    def put(self, key: K, value: V) -> None:
        if self.size <= 0 or self.ttl == 0:
            return
        expires = math.inf if self.ttl is None else self.clock() + self.ttl
        self._items[key] = (value, expires)
        self._items.move_to_end(key)
        while len(self._items) > self.size:
            self._items.popitem(last=False)

    def drop(self, key: K) -> None:
        self._items.pop(key, None)


@dataclass
class GatewayState:
    settings: Settings
    encoder: EncoderClient
    index: IndexClient
    media: MediaStore
    # Index records by id: serving a thumbnail should not cost an index round trip. They expire
    # (GATEWAY_RECORD_TTL_S), so a delete through another gateway is seen here within that.
    records: LruCache[int, dict[str, Any]]
    # Decoding images for validation and thumbnails, one per core at most: a decoded 60 MP
    # PNG is ~180 MB, so an unbounded fan-out over a 64-file batch could take gigabytes.
    decode_limiter: anyio.CapacityLimiter
    # GATEWAY_LIBRARIES' folders and their sync (library.py); None when none are set.
    libraries: Libraries | None = None


# The dependencies are ``async def`` on purpose: FastAPI runs a plain ``def`` dependency in
# the thread pool, two thread hops per request for a few attribute reads.


async def get_state(request: Request) -> GatewayState:
    state: GatewayState = request.app.state.gateway
    return state


State = Annotated[GatewayState, Depends(get_state)]


async def require_write(request: Request, state: State) -> None:
    """Write routes (ingest, delete, admin) need the API key when one is set."""
    check_api_key(request, state.settings.api_key)


async def require_read(request: Request, state: State) -> None:
    """Read routes are open unless GATEWAY_PUBLIC_READ=false, then they need the key too."""
    check_read(request, state)


def check_read(request: Request, state: GatewayState) -> None:
    if not state.settings.public_read:
        check_api_key(request, state.settings.api_key)


def read_state(request: Request) -> GatewayState:
    """The state for a read route that parses its own input (the search bodies), its access
    checked first: a plain call, as FastAPI's dependency solving costs such a route more than
    its own work. Routes whose input FastAPI validates keep ``ReadAccess`` (main.access_first
    answers their 401 before a 422)."""
    state: GatewayState = request.app.state.gateway
    check_read(request, state)
    return state


WriteAccess = Depends(require_write)
ReadAccess = Depends(require_read)

# An image's id in a route's path.
ImageId = Annotated[int, Path(ge=0, le=2**62, description="The image's id.")]
