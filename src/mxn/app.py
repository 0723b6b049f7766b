"""Wires the app together: store, secret, catalogue, upstream client, routes and error handlers."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path

import aiohttp
from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from sqlalchemy.exc import DBAPIError
from starlette.exceptions import HTTPException

from mxn import __version__, console
from mxn.accounts.cache import KeyCache
from mxn.accounts.holds import Holds
from mxn.accounts.secrets import load_secret
from mxn.alerts import Alerts
from mxn.config import Settings, get_settings
from mxn.deploy.controller import Controller, make_placement
from mxn.deploy.leader import Lease
from mxn.errors import MxnError
from mxn.gateway import admin, headers, openapi, responses, routes, user_api
from mxn.gateway.fast import FastRoutes, Gateway
from mxn.gateway.state import AppState
from mxn.limits import Limiter
from mxn.limits.auth_failures import make_throttle
from mxn.limits.memory import MemoryLimiter
from mxn.limits.resilient import ResilientLimiter
from mxn.routing import Router
from mxn.store.db import create_engine, sessionmaker
from mxn.usage import UsageWriter, journal_dir

GC_THRESHOLD = 50_000  # allocations of objects that can hold references, net, between young collections


def make_limiter(settings: Settings) -> Limiter:
    if settings.redis_url:
        limiter = ResilientLimiter(settings.redis_url, settings.limits_when_redis_down)
        limiter.start()  # registered now: an idle replica still counts in the others' shares
        return limiter
    return MemoryLimiter()


def engine_session() -> aiohttp.ClientSession:
    """The pool that requests to engines go through (and health checks, moderation classifiers and alert
    webhooks): keep-alive connections, no proxies from the environment, bodies passed through as they are (no
    decompression), no cookie jar."""
    connector = aiohttp.TCPConnector(limit=0, limit_per_host=0, keepalive_timeout=30, ttl_dns_cache=300)
    return aiohttp.ClientSession(
        connector=connector, auto_decompress=False, cookie_jar=aiohttp.DummyCookieJar(), trust_env=False
    )


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    db = create_engine(settings.database_url)
    sessions = sessionmaker(db)
    state = AppState(
        settings,
        db,
        sessions,
        await load_secret(sessions, settings.secret),
        engine_session(),
        make_limiter(settings),
        UsageWriter(sessions, journal_dir(settings), fsync=settings.usage_fsync),
        Router(failures_to_open=settings.breaker_failures, cooldown=settings.breaker_cooldown),
    )
    if isinstance(state.limiter, ResilientLimiter):
        state.dependencies.append(state.limiter.health)
    state.alerts = Alerts(settings, sessions, state.upstream)
    state.keys = KeyCache(sessions, settings.auth_refresh, state.store_health)
    state.keys.start()
    state.usage.start()  # first: the holds are named after its journals
    state.holds = Holds(
        sessions, settings.quota_hold, state.store_health, state.usage.replica, state.usage.directory_id
    )
    state.usage.after_sweep = state.holds.reclaim  # a dead replica's holds end once its journals are moved
    state.holds.start()
    state.router.on_down = state.alerts.endpoint_down
    await state.reload_catalog()
    state.alerts.start()
    state.start_refresh()
    state.start_health_checks()
    state.throttle = make_throttle(settings.auth_fail_limit, settings.auth_fail_window, settings.redis_url)
    state.throttle.start()
    placement = make_placement(settings.ray_address, Path(settings.data_dir) / "logs", settings.deploy_start_timeout)
    lease = Lease(db, settings.database_url, settings.data_dir)
    state.deployments = Controller(
        sessions, placement, lease, settings.deploy_interval, state.reload_catalog, state.store_health
    )
    state.deployments.start()
    app.state.mxn = state
    # What start-up made lives as long as the process: out of the collector's way, so that its full collections,
    # which stop the event loop, walk only what requests make. And requests make few reference cycles but many
    # objects that live as long as a request (tens of milliseconds under load): at the default threshold (700)
    # those are walked again and again, about a tenth of the process's time at 128 requests in flight
    # (docs/performance.md); collections every GC_THRESHOLD objects instead find the same cycles.
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_THRESHOLD, 20, 10)
    try:
        yield
    finally:
        await state.close()


def create_app(settings: Settings | None = None) -> Gateway:
    """The ASGI app. The store must already be migrated (`mxn serve` does it before workers start)."""
    app = Gateway(title="mxn", version=__version__, lifespan=lifespan)
    app.state.settings = settings or get_settings()
    app.include_router(routes.router)
    app.include_router(admin.router)  # with /admin/nodes and /admin/managed
    app.include_router(user_api.router)
    app.router.routes.extend(console.routes)
    app.add_exception_handler(MxnError, responses.on_mxn_error)
    app.add_exception_handler(RequestValidationError, responses.on_validation_error)
    app.add_exception_handler(HTTPException, responses.on_http_error)
    for store_error in (DBAPIError, ConnectionError):  # an unreachable store: 503, logged once (deps.py)
        # Handled here rather than by Exception's handler, which the server would log a traceback for as well.
        app.add_exception_handler(store_error, responses.on_unexpected)
    app.add_exception_handler(Exception, responses.on_unexpected)
    # Added first, so innermost of the middlewares: CORS and the security headers wrap it, for the requests that
    # `Gateway` does not answer before the stack because CORS applies to them.
    app.add_middleware(FastRoutes)
    headers.install(app, app.state.settings)
    app.cors = bool(app.state.settings.cors_origins)
    app.openapi = partial(openapi.document, app)  # type: ignore[method-assign]
    return app
