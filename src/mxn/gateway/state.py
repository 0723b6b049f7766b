"""What the app holds for its lifetime: settings, store, secret, upstream client, catalogue snapshot."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field

import httpx
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from mxn.catalog.registry import Catalog, load_catalog_snapshot
from mxn.config import Settings
from mxn.limits import Limiter
from mxn.usage import UsageWriter

log = logging.getLogger("mxn")


@dataclass
class AppState:
    settings: Settings
    db: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    secret: bytes
    http: httpx.AsyncClient
    limiter: Limiter
    usage: UsageWriter
    catalog: Catalog = field(default_factory=Catalog)
    _refresher: asyncio.Task[None] | None = None

    async def reload_catalog(self) -> None:
        self.catalog = await load_catalog_snapshot(self.sessions, self.http)

    def start_refresh(self) -> None:
        """Re-read the catalogue now and then, so edits made through another replica or the CLI arrive."""
        self._refresher = asyncio.create_task(self._refresh_loop())

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.catalog_refresh)
            try:
                await self.reload_catalog()
            except Exception as exc:  # the old snapshot keeps serving
                log.warning("catalogue refresh failed: %s", type(exc).__name__)

    async def close(self) -> None:
        if self._refresher:
            self._refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresher
        await self.usage.close()  # a clean shutdown loses no usage record
        await self.limiter.close()
        await self.http.aclose()
        await self.db.dispose()
