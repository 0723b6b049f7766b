"""Which endpoint serves a request: states, circuit breakers, active health checks, least-loaded choice.

Runtime health lives here, per process and per endpoint id, so it survives catalogue reloads; the
persisted `state` of an endpoint (running, stopped, ...) is the operator's and stays in the store.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from mxn import metrics
from mxn.catalog.registry import Catalog, Cell, EndpointInfo, EndpointState
from mxn.errors import RateLimited, ServiceUnavailable

log = logging.getLogger("mxn.routing")
PROBE_TIMEOUT = aiohttp.ClientTimeout(total=5.0)  # an endpoint that takes longer to say it is well is not
CLOSED, HALF_OPEN, OPEN = "closed", "half_open", "open"
_BREAKER_GAUGE = {CLOSED: 0, HALF_OPEN: 1, OPEN: 2}


@dataclass
class Health:
    endpoint: EndpointInfo
    labels: tuple[str, str, str]
    in_flight: int = 0
    failures: int = 0  # consecutive
    breaker: str = CLOSED
    opened_at: float = 0.0
    probing: bool = False
    healthy: bool = True  # the last active check
    recent: deque[bool] = field(default_factory=lambda: deque(maxlen=20))
    changes: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=50))

    def note(self, what: str) -> None:
        self.changes.append({"at": time.time(), "change": what})
        log.warning("endpoint %s (%s): %s", self.endpoint.id, self.labels[0] + "@" + self.labels[1], what)

    def view(self) -> dict[str, Any]:
        return {
            "in_flight": self.in_flight,
            "breaker": self.breaker,
            "consecutive_failures": self.failures,
            "healthy": self.healthy,
            "changes": list(self.changes),
        }


class Router:
    def __init__(self, *, failures_to_open: int = 5, cooldown: float = 10.0, error_rate: float = 0.5) -> None:
        self.failures_to_open = failures_to_open
        self.cooldown = cooldown
        self.error_rate = error_rate
        self.health: dict[int, Health] = {}
        # Told when an endpoint goes down (breaker opens, or a health check fails): (endpoint id, cell, why).
        self.on_down: Callable[[int, str, str], None] | None = None

    def of(self, cell: Cell, endpoint: EndpointInfo) -> Health:
        h = self.health.get(endpoint.id)
        if h is None:
            h = self.health[endpoint.id] = Health(endpoint, (cell.model.name, cell.chip.id, str(endpoint.id)))
        elif h.endpoint is not endpoint:
            # A catalogue reload made a new EndpointInfo for the same endpoint: the counters carry on, but what
            # was learnt of an old address (a managed replica placed again elsewhere) says nothing of the new one.
            moved = _address(h.endpoint) != _address(endpoint)
            h.endpoint = endpoint
            if moved:
                h.healthy, h.failures, h.probing = True, 0, False
                h.recent.clear()
                if h.breaker != CLOSED:
                    self._set(h, CLOSED, f"moved to {endpoint.config.url or endpoint.config.path}")
        return h

    def state(self, cell: Cell, endpoint: EndpointInfo) -> EndpointState:
        """The endpoint's effective state: the operator's, or `unhealthy` when checks or the breaker say so."""
        if endpoint.state != EndpointState.RUNNING:
            return endpoint.state
        h = self.of(cell, endpoint)
        return EndpointState.UNHEALTHY if not h.healthy or h.breaker == OPEN else EndpointState.RUNNING

    def cell_state(self, cell: Cell) -> EndpointState:
        states = {self.state(cell, e) for e in cell.endpoints}
        return next((s for s in EndpointState if s in states), EndpointState.STOPPED)

    # --- choosing ---
    def candidates(self, cell: Cell, pinned: int | None = None) -> list[EndpointInfo]:
        """Endpoints to try in order: priority tier first (higher first), least loaded for its weight next."""
        if pinned is not None:
            return [e for e in cell.endpoints if e.id == pinned]
        running = [e for e in cell.endpoints if e.state == EndpointState.RUNNING and e.weight > 0]
        if not running:
            raise ServiceUnavailable(
                f"deployment {cell.name} has no running endpoint (state: {cell.state})", code=f"deployment_{cell.state}"
            )
        usable = [e for e in running if self._admits(cell, e)]
        # (Callers start the first candidate with no await in between, so these counts stay true.)
        if not usable:
            raise ServiceUnavailable(
                f"every endpoint of {cell.name} is failing or unhealthy; retry shortly",
                code="deployment_unhealthy",
                headers={"retry-after": str(int(self.cooldown))},
            )
        free = [e for e in usable if self._has_room(cell, e)]
        if not free:
            raise RateLimited(
                f"every endpoint of {cell.name} is at its concurrency limit",
                code="endpoints_busy",
                headers={"retry-after": "1"},
            )
        ordered = []
        for tier in sorted({e.priority for e in free}, reverse=True):
            pool = [e for e in free if e.priority == tier]
            # Least loaded for its weight first; among equally loaded ones, a weighted random order
            # (Efraimidis–Spirakis: u ** (1/w), largest first), so that weight counts at low load too.
            keys = {e.id: (self.of(cell, e).in_flight / e.weight, -(random.random() ** (1 / e.weight))) for e in pool}
            ordered += sorted(pool, key=lambda e: keys[e.id])
        return ordered

    def available(self, cell: Cell, e: EndpointInfo) -> bool:
        """Still worth trying now (a later failover candidate may have filled up or tripped meanwhile)."""
        return e.state == EndpointState.RUNNING and self._admits(cell, e) and self._has_room(cell, e)

    def _has_room(self, cell: Cell, e: EndpointInfo) -> bool:
        return e.max_concurrency is None or self.of(cell, e).in_flight < e.max_concurrency

    def _admits(self, cell: Cell, e: EndpointInfo) -> bool:
        h = self.of(cell, e)
        if not h.healthy:
            return False
        if h.breaker == OPEN and time.monotonic() - h.opened_at >= self.cooldown:
            self._set(h, HALF_OPEN, "breaker half-open: letting one request probe")
        if h.breaker == HALF_OPEN:
            return not h.probing
        return h.breaker == CLOSED

    # --- outcomes ---
    def started(self, cell: Cell, e: EndpointInfo) -> Health:
        h = self.of(cell, e)
        h.in_flight += 1
        if h.breaker == HALF_OPEN:
            h.probing = True
        metrics.series(metrics.IN_FLIGHT, *h.labels).set(h.in_flight)
        return h

    def finished(self, h: Health) -> None:
        h.in_flight = max(0, h.in_flight - 1)
        h.probing = False  # a probe that ended without a verdict (429, 400, cancelled) frees the slot
        metrics.series(metrics.IN_FLIGHT, *h.labels).set(h.in_flight)

    def succeeded(self, h: Health) -> None:
        h.failures, h.probing = 0, False
        h.recent.append(True)
        metrics.series(metrics.UPSTREAM, *h.labels, "ok").inc()
        if h.breaker != CLOSED:
            self._set(h, CLOSED, "breaker closed: the endpoint answers again")

    def failed(self, h: Health, why: str) -> None:
        h.failures += 1
        h.probing = False
        h.recent.append(False)
        metrics.series(metrics.UPSTREAM, *h.labels, "error").inc()
        rate = h.recent.count(False) / len(h.recent)
        if h.breaker == HALF_OPEN or (
            h.breaker == CLOSED
            and (h.failures >= self.failures_to_open or (len(h.recent) >= 10 and rate >= self.error_rate))
        ):
            h.opened_at = time.monotonic()
            self._set(h, OPEN, f"breaker open after {h.failures} failures in a row ({why})")
            self._down(h, f"breaker open after {h.failures} failures in a row ({why})")

    def _set(self, h: Health, breaker: str, what: str) -> None:
        h.breaker = breaker
        metrics.series(metrics.BREAKER, *h.labels).set(_BREAKER_GAUGE[breaker])
        h.note(what)

    def _down(self, h: Health, why: str) -> None:
        if self.on_down is not None:
            self.on_down(h.endpoint.id, f"{h.labels[0]}@{h.labels[1]}", why)

    # --- active checks ---
    async def check_all(self, catalog: Catalog, client: aiohttp.ClientSession) -> None:
        checks = [
            self._check(cell, e, client)
            for cell in catalog.cells.values()
            for e in cell.endpoints
            if e.state == EndpointState.RUNNING
        ]
        await asyncio.gather(*checks)

    async def _check(self, cell: Cell, e: EndpointInfo, client: aiohttp.ClientSession) -> None:
        h = self.of(cell, e)
        ok = await _probe(e, client)
        metrics.series(metrics.HEALTHY, *h.labels).set(1 if ok else 0)
        if ok != h.healthy:
            h.healthy = ok
            h.note("health check passed: back in rotation" if ok else "health check failed: out of rotation")
            if not ok:
                self._down(h, "health check failed")
            if ok and h.breaker == OPEN:
                self._set(h, HALF_OPEN, "breaker half-open after a passing health check")


def _address(e: EndpointInfo) -> tuple[str, str | None, str | None]:
    return e.config.engine, e.config.url, e.config.path


async def _probe(e: EndpointInfo, client: aiohttp.ClientSession) -> bool:
    known = await e.engine.health()  # the embedded engine knows; a remote one's upstream is asked over HTTP
    if known is not None:
        return known
    url = (e.config.url or "").rstrip("/") + e.health_path
    try:
        headers = {"authorization": f"Bearer {e.api_key}"} if e.api_key else {}
        async with client.get(url, headers=headers, timeout=PROBE_TIMEOUT) as r:
            return r.status < 500
    except (aiohttp.ClientError, TimeoutError, OSError):
        return False
