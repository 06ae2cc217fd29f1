"""The replicas of one upstream: which one a call goes to, which are down, how one comes back.

``GATEWAY_ENCODER_URL`` and ``GATEWAY_INDEX_URL`` take one URL or several, comma-separated;
each is a replica. A URL whose host name resolves to several addresses (compose's
``--scale encoder=3``, or containers sharing a network alias: Docker's DNS answers with every
one) stands for one replica per address, and the name is resolved again every
``RESOLVE_INTERVAL_S`` (main.py) so that replicas which come and go are followed. A name with a
single address is connected to by name, exactly as when there were no replicas.

A call goes to the replica that is up and has the fewest calls in flight, ties taken in turn
(so a quiet gateway still alternates). The caller (``upstream.py``) marks a replica down
when it refuses a connection, drops one, answers 503 or stops answering; a down replica gets no
calls while another is up, and a background check of its ``/readyz`` every
``RECHECK_S`` (main.py) takes it back once it is ready. When every replica is down a call
still tries them (least recently tried first; ``clients.Upstream`` bounds how many): a single
upstream then behaves as it always did, and an outage ends with the first call that succeeds.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
import time
import urllib.parse
from collections.abc import Callable, Collection, Coroutine, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from glimpse.gateway.http import HttpPool, UpstreamError

logger = logging.getLogger("glimpse.gateway")

PoolFactory = Callable[[str, "str | None"], HttpPool]  # (base URL, address or None) -> pool

# How long one DNS lookup may take before the old answer is kept.
_RESOLVE_TIMEOUT_S = 5.0


def split_urls(value: str | Sequence[str]) -> list[str]:
    """The URLs of a comma-separated setting, each checked (ValueError names the bad one)."""
    parts = value.split(",") if isinstance(value, str) else list(value)
    urls = [part.strip().rstrip("/") for part in parts if part.strip()]
    if not urls:
        raise ValueError("expected at least one http://host[:port] URL")
    for url in urls:
        split = urllib.parse.urlsplit(url)
        if split.scheme != "http" or not split.hostname:
            raise ValueError(f"{url!r} is not an http://host[:port][/prefix] URL")
        split.port  # noqa: B018 - raises ValueError for a port that is not a number
    duplicates = sorted({url for url in urls if urls.count(url) > 1})
    if duplicates:
        raise ValueError(f"{duplicates[0]!r} is listed twice")
    return urls


def _is_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def preferred_addresses(infos: Sequence[tuple[Any, ...]]) -> list[str]:
    """The distinct IPv4 addresses of a getaddrinfo answer, in order; IPv6 ones only if there
    are none. Both families of one host ('localhost': 127.0.0.1 and ::1) are one replica, not
    two, and a service listens on one of them more often than on both."""
    v4 = [info[4][0] for info in infos if info[0] == socket.AF_INET]
    v6 = [info[4][0] for info in infos if info[0] == socket.AF_INET6]
    return list(dict.fromkeys(v4 or v6))


@dataclass(eq=False)
class Replica:
    """One replica: its connection pool, whether it is up, and its counters."""

    url: str  # the configured URL it came from
    pool: HttpPool
    address: str | None = None  # the resolved address it connects to; None: the URL's host
    up: bool = True
    reason: str = ""  # why it is down
    changed_at: float = field(default_factory=time.monotonic)  # last change of ``up``
    last_used: float = 0.0
    outstanding: int = 0  # calls in flight
    requests: int = 0  # calls sent to it
    failures: int = 0  # calls it failed as unavailable
    retired: bool = False  # no longer in DNS: closed once its calls are done
    probe: asyncio.Task[bool] | None = None  # the shared liveness probe of slow calls

    @property
    def label(self) -> str:
        return self.url if self.address is None else f"{self.url} ({self.address})"

    def status(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "address": self.address,
            "up": self.up,
            "reason": None if self.up else self.reason,
            "down_for_s": None if self.up else round(time.monotonic() - self.changed_at, 1),
            "in_flight": self.outstanding,
            "requests": self.requests,
            "failures": self.failures,
        }


class ReplicaSet:
    """Every replica of one upstream, the choice among them, and the checks that revive them."""

    def __init__(
        self,
        urls: str | Sequence[str],
        make_pool: PoolFactory,
        *,
        name: str = "upstream",
        resolve_interval: float = 0.0,
        recheck_interval: float = 1.0,
        ready_timeout: float = 2.0,
    ) -> None:
        self.name = name
        self.urls = split_urls(urls)
        self._make_pool = make_pool
        self.resolve_interval = resolve_interval
        self.recheck_interval = recheck_interval
        self.ready_timeout = ready_timeout
        self.replicas = [Replica(url, make_pool(url, None)) for url in self.urls]
        self._turn = 0
        self._names = {
            url: host
            for url in self.urls
            if not _is_literal(host := urllib.parse.urlsplit(url).hostname or "")
        }
        self._resolver: asyncio.Task[None] | None = None
        self._recovery: asyncio.Task[None] | None = None
        self._resolve_now = asyncio.Event()
        self._background: set[asyncio.Task[Any]] = set()
        self._closed = False
        # Called when a replica that was down answers again (the encoder client re-reads its
        # limits then: a restarted encoder may run with other settings).
        self.on_back: Callable[[Replica], None] | None = None

    @classmethod
    def of(cls, pool: HttpPool, name: str = "upstream") -> ReplicaSet:
        """One fixed replica around a pool built by the caller (no lookups, no checks)."""
        return cls([pool.base_url], lambda url, address: pool, name=name)

    # Choosing -----------------------------------------------------------------------------

    def pick(self, tried: Collection[Replica], *, down_ok: bool) -> Replica | None:
        """The untried up replica with the fewest calls in flight (ties in turn); when none is
        left and ``down_ok``, the untried down one used least recently; else None."""
        self._start_resolver()
        replicas = self.replicas
        count = len(replicas)
        self._turn = turn = (self._turn + 1) % count
        best: Replica | None = None
        for i in range(count):
            replica = replicas[(turn + i) % count]
            if replica.up and replica not in tried and (
                best is None or replica.outstanding < best.outstanding
            ):
                best = replica
        if best is None and down_ok:
            down = [r for r in replicas if not r.up and r not in tried]
            if down:
                best = min(down, key=lambda r: r.last_used)
            if len(down) == count:
                # Every replica is down: a restarted container may have a new address.
                self._resolve_now.set()
        return best

    def started(self, replica: Replica) -> None:
        replica.outstanding += 1
        replica.requests += 1
        replica.last_used = time.monotonic()

    def finished(self, replica: Replica) -> None:
        replica.outstanding -= 1
        if replica.retired and replica.outstanding == 0:
            self._spawn(replica.pool.aclose())

    def mark_down(self, replica: Replica, reason: str) -> None:
        replica.reason = reason
        if not replica.up or replica.retired:
            return
        replica.up = False
        replica.changed_at = time.monotonic()
        if len(self.replicas) > 1:
            up = sum(r.up for r in self.replicas)
            logger.warning(
                "%s replica %s is down (%s); %d of %d up",
                self.name, replica.label, reason, up, len(self.replicas),
            )
        self._start_recovery()

    def mark_up(self, replica: Replica) -> None:
        if replica.up or replica.retired:
            return
        replica.up = True
        replica.reason = ""
        replica.changed_at = time.monotonic()
        if self.on_back is not None:
            self.on_back(replica)
        if len(self.replicas) > 1:
            up = sum(r.up for r in self.replicas)
            logger.warning(
                "%s replica %s is back; %d of %d up", self.name, replica.label, up,
                len(self.replicas),
            )

    @property
    def up_count(self) -> int:
        return sum(r.up for r in self.replicas)

    def status(self) -> dict[str, Any]:
        return {
            "replicas": len(self.replicas),
            "up": self.up_count,
            "members": [r.status() for r in self.replicas],
        }

    # Readiness checks ---------------------------------------------------------------------

    async def check(self, replica: Replica) -> str:
        """'ok' if the replica's /readyz answers 200, else why not; marks it up or down."""
        try:
            # Outside the pool: a check must not queue behind the calls of a busy replica.
            response = await asyncio.wait_for(
                replica.pool.request(
                    "GET", "/readyz", timeout=self.ready_timeout, pooled=False
                ),
                self.ready_timeout,
            )
        except (UpstreamError, asyncio.TimeoutError) as exc:
            outcome = f"unreachable ({type(exc).__name__})"
        else:
            outcome = (
                "ok" if response.status_code == 200
                else f"not ready (HTTP {response.status_code})"
            )
        if outcome == "ok":
            self.mark_up(replica)
        else:
            self.mark_down(replica, outcome)
        return outcome

    async def check_all(self) -> list[tuple[Replica, str]]:
        replicas = list(self.replicas)
        outcomes = await asyncio.gather(*(self.check(r) for r in replicas))
        return list(zip(replicas, outcomes, strict=True))

    def _start_recovery(self) -> None:
        # A lone replica needs no checks in the background: every call tries it anyway.
        if len(self.replicas) < 2 or self._closed:
            return
        if self._recovery is None or self._recovery.done():
            self._recovery = asyncio.ensure_future(self._recover())

    async def _recover(self) -> None:
        # Checks every down replica at once, then again every recheck interval, until none is
        # down. No backoff: a check costs one connection per replica and interval, and how soon
        # a replica returns to service matters more than that.
        while not self._closed:
            down = [r for r in self.replicas if not r.up]
            if not down:
                return
            await asyncio.gather(*(self.check(r) for r in down))
            if all(r.up for r in down):
                continue  # look again: another may have gone down meanwhile
            await asyncio.sleep(self.recheck_interval)

    # Name resolution ----------------------------------------------------------------------

    def _start_resolver(self) -> None:
        if self._resolver is None and self._names and self.resolve_interval > 0 and not (
            self._closed
        ):
            self._resolver = asyncio.ensure_future(self._resolve_loop())

    async def _resolve_loop(self) -> None:
        while not self._closed:
            self._resolve_now.clear()
            await self.resolve()
            # At most one lookup a second, even while every replica is down and calls ask for
            # one each; otherwise one per interval.
            await asyncio.sleep(min(1.0, self.resolve_interval))
            rest = self.resolve_interval - 1.0
            if rest > 0 and not self._resolve_now.is_set():
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._resolve_now.wait(), rest)

    async def resolve(self) -> None:
        """Look every host name up again; add the new addresses, retire the gone ones."""
        loop = asyncio.get_running_loop()
        for url, host in self._names.items():
            port = urllib.parse.urlsplit(url).port or 80
            try:
                infos = await asyncio.wait_for(
                    loop.getaddrinfo(host, port, type=socket.SOCK_STREAM), _RESOLVE_TIMEOUT_S
                )
            except (OSError, asyncio.TimeoutError) as exc:
                # Keep what we have: a DNS hiccup must not drop live replicas, and Docker's DNS
                # forgets a name while all its containers are stopped.
                logger.debug("%s: cannot resolve %s (%s)", self.name, host, exc)
                continue
            addresses = preferred_addresses(infos)
            self._set_addresses(url, addresses if len(addresses) > 1 else [None])

    def _set_addresses(self, url: str, addresses: Sequence[str | None]) -> None:
        current = {r.address: r for r in self.replicas if r.url == url}
        if set(current) == set(addresses):
            return
        kept: list[Replica] = []
        for address in addresses:
            replica = current.pop(address, None)
            if replica is None:
                # A new container may still be loading its model: it is checked before use.
                replica = Replica(
                    url, self._make_pool(url, address), address=address, up=False,
                    reason="new, not checked yet",
                )
            kept.append(replica)
        for replica in current.values():
            replica.retired = True
            if replica.outstanding == 0:
                self._spawn(replica.pool.aclose())
        by_url = {u: [r for r in self.replicas if r.url == u] for u in self.urls}
        by_url[url] = kept
        self.replicas = [r for u in self.urls for r in by_url[u]]
        logger.warning(
            "%s: %s now resolves to %s", self.name, url,
            ", ".join(a or "one address" for a in addresses),
        )
        self._start_recovery()

    # Lifetime -----------------------------------------------------------------------------

    def _spawn(self, coroutine: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.ensure_future(coroutine)
        self._background.add(task)  # a reference, so the task is not collected mid-way
        task.add_done_callback(self._background.discard)

    async def aclose(self) -> None:
        self._closed = True
        tasks = [self._resolver, self._recovery, *self._background]
        tasks += [r.probe for r in self.replicas]
        for task in tasks:
            if task is not None:
                task.cancel()
        for replica in self.replicas:
            await replica.pool.aclose()


class ReplicaMetrics:
    """Prometheus collector of every replica's state, read at scrape time (the calls only bump
    plain integers): ``glimpse_upstream_replica_{up,in_flight,requests_total,failures_total}``
    labelled by upstream and replica."""

    def __init__(self, sets: Callable[[], Sequence[ReplicaSet]]) -> None:
        self.sets = sets

    def collect(self) -> Iterator[Metric]:
        labels = ["upstream", "replica"]
        up = GaugeMetricFamily(
            "glimpse_upstream_replica_up",
            "1 while the gateway sends calls to this upstream replica, 0 while it is down.",
            labels=labels,
        )
        in_flight = GaugeMetricFamily(
            "glimpse_upstream_replica_in_flight", "Calls in flight to the replica.", labels=labels
        )
        requests = CounterMetricFamily(
            "glimpse_upstream_replica_requests", "Calls sent to the replica.", labels=labels
        )
        failures = CounterMetricFamily(
            "glimpse_upstream_replica_failures",
            "Calls the replica could not serve (refused, dropped, 503, stopped responding).",
            labels=labels,
        )
        for replicas in self.sets():
            for replica in replicas.replicas:
                key = [replicas.name, replica.label]
                up.add_metric(key, float(replica.up))
                in_flight.add_metric(key, replica.outstanding)
                requests.add_metric(key, replica.requests)
                failures.add_metric(key, replica.failures)
        yield from (up, in_flight, requests, failures)
