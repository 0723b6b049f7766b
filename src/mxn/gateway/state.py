"""What the app holds for its lifetime: settings, store, secret, upstream client, engines, catalogue snapshot."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field

import aiohttp
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from mxn import metrics
from mxn.accounts.cache import KeyCache
from mxn.accounts.holds import Holds
from mxn.alerts import Alerts
from mxn.catalog.registry import Catalog, load_catalog_snapshot
from mxn.config import Settings
from mxn.deploy.controller import Controller
from mxn.deps import Dependency
from mxn.engines.pool import EnginePool
from mxn.gateway.body import UnknownFields
from mxn.limits import Limiter
from mxn.limits.auth_failures import AuthThrottle, MemoryCounter
from mxn.moderation.rules import RuleCache
from mxn.routing import Router
from mxn.store.db import unreachable
from mxn.usage import UsageWriter

log = logging.getLogger("mxn")
STORE_DOWN = "requests it must answer get 503 store_unavailable; cached keys and held balances go on"
STORE_PROBE_TIMEOUT = 5.0
LOOP_TICK = 0.05  # seconds between the loop-lag watcher's timers


@dataclass
class AppState:
    settings: Settings
    db: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    secret: bytes
    # HTTP out of the process: requests to engines (the hot path), health checks, classifiers, webhooks.
    upstream: aiohttp.ClientSession
    limiter: Limiter
    usage: UsageWriter
    router: Router = field(default_factory=Router)
    catalog: Catalog = field(default_factory=Catalog)
    # Failed authentications per client address; off (limit 0) until the app sets its own.
    throttle: AuthThrottle = field(default_factory=lambda: AuthThrottle(0, 0.0, MemoryCounter()))
    unknown_fields: UnknownFields = field(default_factory=UnknownFields)  # request fields logged once each
    rules: RuleCache = field(default_factory=RuleCache)  # compiled moderation rules, kept across reloads
    store_health: Dependency = field(default_factory=lambda: Dependency("store", STORE_DOWN))
    # What /readyz reports on: the store, and Redis when it is configured.
    dependencies: list[Dependency] = field(default_factory=list)
    engines: EnginePool = field(init=False)  # one engine per endpoint, kept across catalogue reloads
    alerts: Alerts = field(init=False)
    keys: KeyCache = field(init=False)
    holds: Holds = field(init=False)
    deployments: Controller = field(init=False)
    warming: asyncio.Task[None] | None = None  # loading the served models' tokenizers, off the loop
    cold: set[str] = field(default_factory=set)  # models whose tokenizer would not load: not tried again
    _refresher: asyncio.Task[None] | None = None
    _checker: asyncio.Task[None] | None = None
    _prober: asyncio.Task[None] | None = None
    _watcher: asyncio.Task[None] | None = None
    # One reload at a time: two at once could leave the older snapshot in place, and the pool rebuilding engines
    # back and forth between them.
    _reloading: asyncio.Lock = field(default_factory=asyncio.Lock)

    def __post_init__(self) -> None:
        self.engines = EnginePool(self.upstream)

    async def reload_catalog(self) -> None:
        async with self._reloading:
            self.catalog = await load_catalog_snapshot(self.sessions, self.engines, self.rules)
        if self.warming is None or self.warming.done():
            self.warming = asyncio.create_task(asyncio.to_thread(warm_tokenizers, self.catalog, self.cold))

    def start_refresh(self) -> None:
        """Re-read the catalogue now and then, so edits made through another replica or the CLI arrive."""
        self._refresher = asyncio.create_task(self._refresh_loop())

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.catalog_refresh)
            try:
                await self.reload_catalog()
            except Exception as exc:  # the old snapshot keeps serving
                if unreachable(exc):
                    self.store_health.failed(exc)
                else:
                    log.warning("catalogue refresh failed: %s", type(exc).__name__)

    def start_health_checks(self) -> None:
        self._checker = asyncio.create_task(self._check_loop())
        self._prober = asyncio.create_task(self._probe_store())
        self._watcher = asyncio.create_task(watch_loop())

    async def check_store(self) -> bool:
        """One round trip to the store; its health follows the answer."""
        try:
            async with asyncio.timeout(STORE_PROBE_TIMEOUT), self.sessions() as s:
                await s.execute(text("SELECT 1"))
        except Exception as exc:
            self.store_health.failed(exc)
            return False
        self.store_health.ok()
        return True

    async def _probe_store(self) -> None:
        """While requests find the store away, ask it every second, so that it is seen back within one."""
        while True:
            await asyncio.sleep(1.0)
            if not self.store_health.up:
                await self.check_store()

    async def _check_loop(self) -> None:
        while True:
            try:
                await self.router.check_all(self.catalog, self.upstream)
            except Exception as exc:
                log.warning("health checks failed: %s", type(exc).__name__)
            await asyncio.sleep(self.settings.health_interval)

    async def close(self) -> None:
        for task in (self._refresher, self._checker, self._prober, self._watcher, self.warming):
            if task:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self.deployments.close()
        await self.keys.close()
        await self.alerts.close()
        await self.usage.close()  # a clean shutdown loses no usage record
        await self.holds.close()  # and gives back every held balance
        await self.limiter.close()
        await self.throttle.close()
        await self.engines.close()  # frees local models
        await self.upstream.close()
        await self.db.dispose()


async def watch_loop(interval: float = LOOP_TICK) -> None:
    """Event-loop lag into `mxn_event_loop_lag_seconds`: how much later than asked a timer fires. A request that
    waits behind a step holding the loop waits about as long."""
    loop = asyncio.get_running_loop()
    while True:
        start = loop.time()
        await asyncio.sleep(interval)
        metrics.LOOP_LAG.observe(max(0.0, loop.time() - start - interval))


def warm_tokenizers(catalog: Catalog, cold: set[str]) -> None:
    """Load the tokenizer of every model that has an endpoint, in a thread: the first request to count with one
    loaded it on the event loop, stalling every request in flight (0.1 s for cl100k's table, seconds for
    transformers and a chat template). One that cannot load is left to its first request, and named in `cold`."""
    for cell in catalog.cells.values():
        if not cell.endpoints or cell.model.name in cold:
            continue
        try:
            tokenizer = cell.model.tokenizer
            if not tokenizer.loaded:
                tokenizer.warm()
        except Exception as exc:
            cold.add(cell.model.name)
            log.warning("tokenizer of %s not loaded ahead: %s", cell.model.name, type(exc).__name__)
