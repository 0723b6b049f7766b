"""Keys the request path has seen, so that a request costs no store round trip to authenticate.

An entry lives until the store's account generation (`accounts.generation`) moves on; after `MAX_AGE` seconds
it is loaded again in the background while requests go on being answered from it. Changes made through this
process drop the cache when they commit; changes made elsewhere (another replica, the CLI) are noticed by polling
one small row every `refresh` seconds. Concurrent requests with a key not cached wait for one load of it. An
entry loaded while the generation moved on is not kept, so a revoked key is never cached as valid. Whether a key
is enabled, expired or allowed from an address is checked on every request from the cached record; only unknown
keys always go to the store (and count as failures for the per-address throttle). While the store is away, a key
seen before goes on being answered from its cached record, however old.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from datetime import UTC, datetime

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from mxn.accounts.service import TOUCH_EVERY, KeyRecord, load_key, touch_key
from mxn.deps import Dependency
from mxn.flights import one_flight
from mxn.store import generation

MAX_AGE = 60.0
MAX_ENTRIES = 100_000


class KeyCache:
    def __init__(
        self, sessions: async_sessionmaker[AsyncSession], refresh: float, health: Dependency | None = None
    ) -> None:
        self.sessions = sessions
        self.health = health or Dependency("store")  # how polling the store goes, logged as deps.py does
        self.refresh = refresh
        self.entries: dict[str, tuple[float, KeyRecord]] = {}
        self.version = 0  # moves on with every clear: a load that spans one is not kept
        self.seen: str | None = None  # the store's generation token at the last poll
        self.touched: dict[int, datetime] = {}  # last_used_at as written, per key
        self.tasks: set[asyncio.Task[None]] = set()
        self.loading: dict[str, asyncio.Task[KeyRecord | None]] = {}  # keys being loaded, one load each
        self.watcher: asyncio.Task[None] | None = None

    def clear(self) -> None:
        self.entries.clear()
        self.version += 1

    async def record(self, key_hash: str) -> KeyRecord | None:
        hit = self.entries.get(key_hash)
        if hit is not None:
            if time.monotonic() - hit[0] >= MAX_AGE and self.health.up and key_hash not in self.loading:
                # In the background: this request goes on with the entry as it is.
                # A reload that fails counts against the store's health; the entry serves on.
                self._load(key_hash).add_done_callback(self.health.failed_in)
            return hit[1]
        return await asyncio.shield(self._load(key_hash))  # shielded: one caller leaving ends no other's wait

    def _load(self, key_hash: str) -> asyncio.Task[KeyRecord | None]:
        """The key's one load under way, started if there is none."""
        return one_flight(self.loading, key_hash, lambda: self._fetch(key_hash))

    async def _fetch(self, key_hash: str) -> KeyRecord | None:
        version, now = self.version, time.monotonic()
        async with self.sessions() as s:
            record = await load_key(s, key_hash)
        if version == self.version:
            if record is None:
                self.entries.pop(key_hash, None)  # revoked while cached
            else:
                if len(self.entries) >= MAX_ENTRIES:
                    self.entries.clear()
                self.entries[key_hash] = (now, record)
        return record

    def used(self, record: KeyRecord, now: datetime) -> None:
        """Note the key's use in the store at most once a minute, off the request path."""
        key_id = record.principal.key_id
        last = self.touched.get(key_id, record.last_used_at)
        if last is not None and now - last <= TOUCH_EVERY:
            return
        self.touched[key_id] = now
        task = asyncio.create_task(self._touch(key_id, now))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _touch(self, key_id: int, now: datetime) -> None:
        try:
            async with self.sessions() as s:
                await touch_key(s, key_id, now)
        except Exception as exc:  # a missed last_used_at is not worth failing anything for
            self.health.failed(exc)

    def start(self) -> None:
        generation.changes_of(self.sessions).listeners.append(self.clear)
        self.watcher = asyncio.create_task(self._watch())

    async def _watch(self) -> None:
        while True:
            try:
                async with self.sessions() as s:
                    token = await generation.current(s)
                if token != self.seen:
                    self.seen = token
                    self.clear()
            except Exception as exc:
                # The store is away: the cached keys go on serving (nobody can change an account meanwhile, but
                # through a replica that still reaches the store: that change arrives when this one does too).
                self.health.failed(exc)
            else:
                self.health.ok()
            await asyncio.sleep(self.refresh)

    async def close(self) -> None:
        with contextlib.suppress(ValueError):
            generation.changes_of(self.sessions).listeners.remove(self.clear)
        if self.watcher:
            self.watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.watcher
        for loading in list(self.loading.values()):
            loading.cancel()
        if self.tasks:
            await asyncio.gather(*self.tasks, return_exceptions=True)


def utcnow() -> datetime:
    return datetime.now(UTC)
