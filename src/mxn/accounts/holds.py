"""Balances held by this replica, so that most requests reserve and settle their quota in memory.

A replica takes a chunk of a large balance from the store with one conditional UPDATE (a hold), serves
reservations from it, and gives what is left back (`quota + units`) after a second without use, at most every
`MAX_AGE` seconds, before this replica shows or changes balances, and on shutdown. The store's balance is then
what is not held anywhere; nothing is spent twice and no balance goes below zero, because every unit a replica
spends was first taken from the store by a conditional UPDATE.

Holds are only taken while a balance is large: at least `LARGE` times the request's reservation, and never
taking the store's balance below the 80% alert line, so alerts and refusals are decided by the exact path
(`quota.reserve`), which is used for everything else. Setting a balance outright starts a new epoch
(`quota_epoch`): units held from the old balance are not given back to the new one.

What this trades: a replica that dies keeps what it held (at most 1/16 of the balance it saw, or `multiple`
times one reservation); a request may be refused while another replica still holds part of a balance it is
not using (for at most a second). `MXN_QUOTA_HOLD=0` turns holds off: every request then reserves and settles
in the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from mxn.accounts import quota
from mxn.accounts.quota import Reservation
from mxn.deps import Dependency
from mxn.store.models import ApiKey, User

IDLE = 1.0  # seconds without use before a hold goes back
MAX_AGE = 5.0  # and at the latest this long after it was taken
LARGE = 256  # a balance is held only when it is at least this many reservations
SHARE = 16  # and then at most this share of it
_ATTEMPTS = 4

Table = type[User] | type[ApiKey]


@dataclass(slots=True, eq=False)
class Hold:
    table: Table
    ident: int
    epoch: int
    units: int
    taken_at: float
    used_at: float
    live: bool = True


@dataclass
class Holds:
    sessions: async_sessionmaker[AsyncSession]
    multiple: int  # a hold is at most this many reservations; 0: no holds
    health: Dependency = field(default_factory=lambda: Dependency("store"))  # how giving back goes, logged once
    held: dict[tuple[str, int], Hold] = field(default_factory=dict)
    locks: dict[tuple[str, int], asyncio.Lock] = field(default_factory=dict)
    task: asyncio.Task[None] | None = None

    async def reserve(
        self, user_id: int, key_id: int, user_limited: bool, key_limited: bool, want: int, minimum: int
    ) -> Reservation:
        """As `quota.reserve`, from this replica's holds when they can pay the whole of `want`."""
        if not user_limited and not (key_limited and key_id):
            return Reservation(None, None, want)
        balances: list[tuple[Table, int]] = [(User, user_id)] if user_limited else []
        if key_limited and key_id:
            balances.append((ApiKey, key_id))
        for attempt in range(_ATTEMPTS if self.multiple else 0):
            # Concurrent requests may spend a top-up before this one gets to it: then it tops up again.
            if attempt and not all([await self._top_up(table, ident, want) for table, ident in balances]):
                break
            served = self._take(balances, want)
            if served is not None:
                return Reservation(
                    user_id if user_limited else None, key_id if key_limited else None, want, held=served
                )
        if self.held:
            await self.give_back(balances)  # the exact path must see the whole balance
        return await quota.reserve(self.sessions, user_id, key_id, want, minimum)

    def _take(self, balances: list[tuple[Table, int]], want: int) -> tuple[Hold, ...] | None:
        holds = [self.held.get((t.__tablename__, i)) for t, i in balances]
        if not all(h is not None and h.units >= want for h in holds):
            return None
        now = time.monotonic()
        for h in holds:
            assert h is not None
            h.units -= want
            h.used_at = now
        return tuple(h for h in holds if h is not None)

    async def _top_up(self, table: Table, ident: int, want: int) -> bool:
        """Whether this replica now holds at least `want` of the balance."""
        key = (table.__tablename__, ident)
        async with self.locks.setdefault(key, asyncio.Lock()):
            h = self.held.get(key)
            if h is not None and h.units >= want:
                return True  # another request topped it up meanwhile
            async with self.sessions() as s:
                cols = (table.quota, table.quota_granted, table.quota_alerted, table.quota_epoch)
                row = (await s.execute(select(*cols).where(table.id == ident))).one_or_none()
                if row is None or row[0] is None or row[0] < LARGE * want:
                    return False
                balance: int = row[0]
                _, granted, alerted, epoch = row
                floor = granted // 5 if granted and (alerted or 0) < 80 else 0
                chunk = min(balance // SHARE, self.multiple * want, balance - floor)
                if chunk < 2 * want:
                    return False
                taken = await s.execute(
                    update(table)
                    .where(table.id == ident, table.quota >= chunk, table.quota_epoch == epoch)
                    .values(quota=table.quota - chunk)
                )
                if not taken.rowcount:  # type: ignore[attr-defined]
                    return False
                await s.commit()
            now = time.monotonic()
            if h is not None and h.live and h.epoch == epoch:
                h.units += chunk
                return True
            if h is not None:
                await self._return(h)
            self.held[key] = Hold(table, ident, epoch, chunk, now, now)
            return True

    async def settle(self, r: Reservation, cost: int) -> None:
        if not r.held:
            await quota.settle(self.sessions, r, cost)
            return
        delta = r.amount - cost
        if not delta:
            return
        for h in r.held:
            if h.live and h.units + delta >= 0:
                h.units += delta
            elif h.live:  # a charge beyond the reservation and the hold: the rest as far as the store goes
                rest, h.units = h.units + delta, 0
                await quota.adjust(self.sessions, h.table, h.ident, rest)
            else:  # the hold went back meanwhile: so does this
                await quota.adjust(self.sessions, h.table, h.ident, delta)

    async def give_back(self, balances: list[tuple[Table, int]] | None = None) -> None:
        keys = [(t.__tablename__, i) for t, i in balances] if balances is not None else list(self.held)
        for key in keys:
            h = self.held.pop(key, None)
            if h is not None:
                await self._return(h)

    async def _return(self, h: Hold) -> None:
        h.live = False
        units, h.units = h.units, 0
        if units <= 0:
            return
        try:
            async with self.sessions() as s:
                await s.execute(
                    update(h.table)
                    .where(h.table.id == h.ident, h.table.quota_epoch == h.epoch)
                    .values(quota=h.table.quota + units)
                )
                await s.commit()
        except BaseException:
            h.units, h.live = h.units + units, True  # still held: the next sweep tries again
            self.held.setdefault((h.table.__tablename__, h.ident), h)
            raise

    def start(self) -> None:
        if self.multiple:
            self.task = asyncio.create_task(self._sweep())

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(IDLE / 2)
            now = time.monotonic()
            stale = [
                (h.table, h.ident) for h in self.held.values() if now - h.used_at >= IDLE or now - h.taken_at >= MAX_AGE
            ]
            try:
                await self.give_back(stale)
            except Exception as exc:  # the store is away: the holds stay until it is back
                self.health.failed(exc)
            else:
                if stale:
                    self.health.ok()

    async def close(self) -> None:
        if self.task:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        await self.give_back()
