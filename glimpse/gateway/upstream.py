"""One upstream service (the encoder or the index) behind its replicas: pooled calls,
failover, the liveness watch, and the mapping of their failures.

One ``HttpPool`` per upstream replica (``glimpse/gateway/http.py``), built in the lifespan, reuses
keep-alive connections (a search is two upstream calls; a new TCP connection each time would
cost more than the gateway's whole budget). Which replica a call goes to, and which are down,
is ``glimpse/gateway/replicas.py``'s business. Failures become the public error body:

- connection refused / reset, DNS, connect timeout -> 503 ``upstream_unavailable``
- read timeout, or no pooled connection free in it -> 504 ``upstream_timeout``
- upstream 4xx                                     -> the same status and body, passed through
- upstream 503 / 504                               -> 503 ``upstream_unavailable`` / 504
- upstream 507                                     -> 507 ``insufficient_storage``
- any other upstream 5xx, malformed or huge answer -> 502 ``upstream_error``

A pooled keep-alive connection the upstream closed while idle (it restarted) fails on first
use before any byte of an answer; every upstream call we make is idempotent, so that one is
retried once on a fresh connection. A replica that is unavailable (the first and the fourth
kind of 503 above, or the patience probe's verdict) is marked down and the call moves on to
another replica, if there is one; the 503 is answered only when none is left.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from glimpse.contracts.errors import ErrorType, GlimpseError
from glimpse.gateway.http import (
    Body,
    HttpPool,
    Reply,
    UpstreamConnectError,
    UpstreamDisconnected,
    UpstreamError,
    UpstreamTimeout,
    json_body,
)
from glimpse.gateway.replicas import Replica, ReplicaSet


def build_client(
    base_url: str,
    *,
    connect_timeout: float,
    read_timeout: float,
    max_connections: int,
    address: str | None = None,
) -> HttpPool:
    return HttpPool(
        base_url,
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
        max_connections=max_connections,
        address=address,
    )


def build_replicas(
    urls: str,
    *,
    name: str,
    connect_timeout: float,
    read_timeout: float,
    max_connections: int,
    resolve_interval: float,
    recheck_interval: float,
) -> ReplicaSet:
    """The replicas of a comma-separated URL setting, one pool each (``max_connections`` per
    replica)."""

    def make_pool(url: str, address: str | None) -> HttpPool:
        return build_client(
            url,
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            max_connections=max_connections,
            address=address,
        )

    return ReplicaSet(
        urls,
        make_pool,
        name=name,
        resolve_interval=resolve_interval,
        recheck_interval=recheck_interval,
    )


class _Watch:
    """The patience timer of one call to one replica: probe the replica's health when the call
    has waited ``patience`` seconds; cancel the call if the probe fails, else wait again."""

    def __init__(
        self, task: asyncio.Task[Any], patience: float, probe: Callable[[], asyncio.Task[bool]]
    ) -> None:
        self.task = task
        self.patience = patience
        self.probe = probe
        self.dead = False
        self.finished = False
        self.timer: asyncio.TimerHandle | None = None

    def arm(self) -> None:
        self.timer = asyncio.get_running_loop().call_later(self.patience, self._slow)

    def _slow(self) -> None:
        if not self.finished:
            self.probe().add_done_callback(self._probed)

    def _probed(self, probe: asyncio.Task[bool]) -> None:
        if self.finished:
            return
        if probe.cancelled() or not probe.result():
            self.dead = True
            self.task.cancel()
        else:
            self.arm()  # alive but busy: keep waiting, up to the read timeout

    def finish(self) -> None:
        self.finished = True
        if self.timer is not None:
            self.timer.cancel()


class _Unavailable(Exception):
    """One replica could not serve the call: the caller may try another."""

    def __init__(self, error: GlimpseError, reason: str, *, sent: bool, slow: bool) -> None:
        super().__init__(reason)
        self.error = error
        self.reason = reason
        self.sent = sent  # the request may have reached the replica
        self.slow = slow  # found out by the patience probe, not at once


class Upstream:
    """One upstream service (one or several replicas): calls with failures mapped to the
    public error body.

    A process that is stopped (SIGSTOP, a hung event loop) still accepts connections, so a
    request to it would wait for the whole read timeout, which must be long enough for a big
    ingest batch. Instead, a request that takes longer than ``patience`` seconds triggers a
    liveness probe (``GET /healthz`` within ``probe_timeout``); if the replica does not answer
    even that, the request is abandoned at once (and tried on another replica, if one is up).
    A live but busy replica is waited for, up to the read timeout.

    Failing over: a call that a replica could not serve goes on to the next up replica, as long
    as it has spent less than ``patience + probe_timeout`` (~1.5 s: what finding one stopped
    replica costs), or twice that after one stopped replica, and never past a second one. A
    replica that answers 429 (overloaded) is not marked down, but the call moves on too, and the
    429 is passed on only when no replica had room. Replicas that fail at once (refused, 503)
    cost nothing, so all may be tried; hosts that swallow connections cost a connect timeout
    each, and replicas that froze together hold a call for about 3 s (4.5 s if the last attempt
    starts just inside the budget). Down replicas are tried only when no up one is left, least
    recently tried first, and only while the call has spent less than ``patience``.
    """

    def __init__(
        self,
        name: str,
        client: HttpPool | ReplicaSet,
        *,
        patience: float = 0.5,
        probe_timeout: float = 1.0,
    ) -> None:
        self.name = name
        self.replicas = client if isinstance(client, ReplicaSet) else ReplicaSet.of(client, name)
        self.replicas.name = name
        self.patience = patience
        self.probe_timeout = probe_timeout

    async def aclose(self) -> None:
        await self.replicas.aclose()

    async def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        body: Body | None = None,
        content_type: str | None = None,
        params: Mapping[str, str | int] | None = None,
        timeout: float | None = None,
        idempotent: bool = True,
    ) -> Reply:
        """One call; ``json``, or ``body`` (bytes, or pieces sent as they are) of
        ``content_type``, as its body.

        ``idempotent=False``: after a replica may have received the request, it is not sent to
        another (a repeated DELETE would answer 404 for what the first one did).
        """
        if json is not None:
            body, content_type = json_body(json)
        kwargs: dict[str, Any] = {
            "body": b"" if body is None else body,
            "content_type": content_type,
            "params": params,
            "timeout": timeout,
        }
        replicas = self.replicas
        started = time.monotonic()
        tried: list[Replica] = []
        slow = 0
        failure: _Unavailable | None = None
        busy: Reply | None = None
        while True:
            # The failover budget (see the class): what finding one stopped replica costs, and
            # once more after a stopped one; down replicas only early in a call.
            elapsed = time.monotonic() - started
            if slow > 1 or elapsed >= (self.patience + self.probe_timeout) * (1 + slow):
                replica = None
            else:
                replica = replicas.pick(tried, down_ok=not slow and elapsed < self.patience)
            if replica is None:
                if busy is not None:  # some replica is there, only overloaded: say so
                    raise self._error_from(busy)
                assert failure is not None  # the first pick always finds a replica
                raise self._all_failed(failure, tried)
            tried.append(replica)
            replicas.started(replica)
            try:
                response = await self._attempt(replica, method, path, kwargs)
            except _Unavailable as exc:
                replica.failures += 1
                replicas.mark_down(replica, exc.reason)
                if exc.sent and not idempotent:
                    raise exc.error from None
                failure = exc
                slow += exc.slow
                continue
            finally:
                replicas.finished(replica)
            replicas.mark_up(replica)  # it answered
            if response.status_code == 429 and len(replicas.replicas) > 1:
                # Overloaded (its queue is full): it did none of the work, and another replica
                # may have room. It stays up.
                busy = response
                continue
            if response.status_code >= 400:
                raise self._error_from(response)
            return response

    async def _attempt(
        self, replica: Replica, method: str, path: str, kwargs: dict[str, Any]
    ) -> Reply:
        task = asyncio.current_task()
        if task is None:  # not in a task (never in a route): no watchdog
            return await self._send(replica, method, path, kwargs)
        # A timer rather than a second task per call: the common case, an answer within
        # ``patience``, then costs one timer handle instead of a task and a wait.
        watch = _Watch(task, self.patience, lambda: self._shared_probe(replica))
        watch.arm()
        try:
            return await self._send(replica, method, path, kwargs)
        except asyncio.CancelledError:
            if not watch.dead or task.uncancel() > 0:
                raise  # cancelled by someone else, or by them too
            error = GlimpseError(
                ErrorType.upstream_unavailable,
                f"The {self.name} service stopped responding (no answer to a request "
                f"for {self.patience:g} s, nor to its health check); try again shortly.",
            )
            raise _Unavailable(error, "stopped responding", sent=True, slow=True) from None
        finally:
            watch.finish()

    def _shared_probe(self, replica: Replica) -> asyncio.Task[bool]:
        # Many slow requests at once share one probe instead of each sending its own.
        if replica.probe is None or replica.probe.done():
            replica.probe = asyncio.ensure_future(self._alive(replica))
        return replica.probe

    async def _alive(self, replica: Replica) -> bool:
        try:
            # Outside the pool: a probe must not queue behind the slow calls it checks on.
            # wait_for bounds the whole exchange (connect + silence); the pool bounds each part.
            response = await asyncio.wait_for(
                replica.pool.request(
                    "GET", "/healthz", timeout=self.probe_timeout, pooled=False
                ),
                self.probe_timeout,
            )
        except (UpstreamError, asyncio.TimeoutError):
            return False
        return response.status_code == 200

    async def _send(
        self, replica: Replica, method: str, path: str, kwargs: dict[str, Any]
    ) -> Reply:
        for attempt in (1, 2):
            try:
                response = await replica.pool.request(method, path, **kwargs)
                break
            except UpstreamDisconnected as exc:
                if attempt == 2 or exc.received or not exc.reused:
                    raise self._unavailable(exc, sent=True) from exc
                # else: a stale pooled connection; once more, on another connection
            except UpstreamConnectError as exc:
                raise self._unavailable(exc, sent=False) from exc
            except UpstreamTimeout as exc:
                raise GlimpseError(
                    ErrorType.upstream_timeout,
                    f"The {self.name} service did not answer in time ({exc}).",
                ) from exc
            except UpstreamError as exc:  # malformed or oversized answer
                raise GlimpseError(
                    ErrorType.upstream_error, f"The {self.name} service answered badly ({exc})."
                ) from exc
        if response.status_code == 503:
            raise _Unavailable(
                self._error_from(response), "not ready (HTTP 503)", sent=True, slow=False
            )
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

    async def ready(self) -> tuple[bool, str]:
        """Whether at least one replica is ready, and a line that says so (never raises).

        One replica: 'ok' or why not, as it always was. Several: how many are ready, and why
        the others are not."""
        outcomes = await self.replicas.check_all()
        if len(outcomes) == 1:
            outcome = outcomes[0][1]
            return outcome == "ok", outcome
        ready = [r for r, outcome in outcomes if outcome == "ok"]
        line = f"{len(ready)} of {len(outcomes)} replicas ready"
        problems = [f"{r.label}: {outcome}" for r, outcome in outcomes if outcome != "ok"]
        if problems:
            line += "; " + "; ".join(problems)
        return bool(ready), ("ok: " if ready else "") + line

    def _unavailable(self, exc: Exception, *, sent: bool) -> _Unavailable:
        error = GlimpseError(
            ErrorType.upstream_unavailable,
            f"The {self.name} service is unavailable ({type(exc).__name__}); try again shortly.",
        )
        return _Unavailable(error, f"unreachable ({type(exc).__name__})", sent=sent, slow=False)

    def _all_failed(self, last: _Unavailable, tried: Sequence[Replica]) -> GlimpseError:
        total = len(self.replicas.replicas)
        if total == 1:
            return last.error  # one replica: the same answer as without replicas
        up = self.replicas.up_count
        return GlimpseError(
            ErrorType.upstream_unavailable,
            f"The {self.name} service is unavailable: {len(tried)} of its {total} replicas "
            f"tried, none answered (last: {last.reason}; {up} up); try again shortly.",
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
