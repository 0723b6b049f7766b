"""Balances held by this replica, so that most requests reserve and settle their quota in memory.

A replica takes a chunk of a large balance from the store with one conditional UPDATE (a hold), serves
reservations from it, and gives what is left back (`quota + units`) after a second without use, before this
replica shows or changes balances, and on shutdown. The store's balance is then what is not held anywhere;
nothing is spent twice and no balance goes below zero, because every unit a replica spends was first taken from
the store by a conditional UPDATE.

A busy hold never runs dry in front of a request: when half of its chunk is left, or it is `MAX_AGE` seconds
old, the request that notices starts a refill in the background (one at a time per balance) and goes on. A refill
grows the hold, or, for an old one, takes a fresh chunk and retires the old hold: no new reservations, and it goes
back once the reservations paid from it have settled, so that they settle in memory rather than in the store.

Holds are only taken while a balance is large: at least `LARGE` times the request's reservation, and never
taking the store's balance below the 80% alert line, so alerts and refusals are decided by the exact path
(`quota.reserve`), which is used for everything else. Setting a balance outright starts a new epoch
(`quota_epoch`): units held from the old balance are not given back to the new one.

Holds are leased. Each is a row of `quota_holds`, written in the transaction that takes its chunk, naming the
replica (as its usage journals do) and a lease the replica renews; every usage record names the holds it was paid
from. A replica that ends a hold gives back what its memory says is unspent and deletes the row, in one
transaction. A replica that dies leaves its rows: once its lease has run out and its journals are all in the store
(a survivor sharing its journal directory, or itself started again, moved them: `usage.writer`), whoever deletes
the row gives back the chunk minus the cost of the records paid from it. Exact to the unit; the DELETE decides
who does it when two race. What a dead replica's requests in flight had reserved from a hold comes back too.

What this trades: a request may be refused while another replica still holds part of a balance it is not using
(for at most a second). `MXN_QUOTA_HOLD=0` turns holds off: every request then reserves and settles in the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from mxn import metrics
from mxn.accounts import quota
from mxn.accounts.quota import Reservation
from mxn.deps import Dependency
from mxn.flights import one_flight
from mxn.store.models import ApiKey, QuotaHold, Usage, User

IDLE = 1.0  # seconds without use before a hold goes back
MAX_AGE = 5.0  # and at the latest this long after it was taken
LARGE = 256  # a balance is held only when it is at least this many reservations
LAST = 1.0  # seconds a busy hold's chunk should last at the rate it is being spent
GROWTH = 64  # a chunk is at most this many times the first
SHARE = 16  # and then at most this share of it
TICK = 0.5  # seconds between the sweeps that give back and renew
LEASE = 15.0  # seconds a hold's lease runs; renewed every third of that while the replica holds anything
_ATTEMPTS = 4

log = logging.getLogger("mxn.holds")
Table = type[User] | type[ApiKey]
TABLES: dict[str, Table] = {User.__tablename__: User, ApiKey.__tablename__: ApiKey}


@dataclass(slots=True, eq=False)
class Hold:
    id: str  # its row in quota_holds, and what usage records paid from it name
    table: Table
    ident: int
    epoch: int
    units: int  # unspent; below zero when charges beyond their reservations went past it
    taken_at: float
    used_at: float
    chunk: int = 0  # the last chunk taken into it
    filled_at: float = 0.0  # when that chunk was taken
    served: int = 0  # reservations paid from it since
    pending: int = 0  # reservations paid from it, not settled yet
    live: bool = True
    retiring: bool = False  # replaced by a fresh hold: it goes back once nothing is pending


@dataclass
class Holds:
    sessions: async_sessionmaker[AsyncSession]
    multiple: int  # a hold is at most this many reservations; 0: no holds
    health: Dependency = field(default_factory=lambda: Dependency("store"))  # how giving back goes, logged once
    replica: str = field(default_factory=lambda: secrets.token_hex(8))  # as this replica's usage journals say
    journal: str = ""  # the journal directory's id (`usage.journal.directory_id`)
    held: dict[tuple[str, int], Hold] = field(default_factory=dict)
    retiring: list[Hold] = field(default_factory=list)
    refills: dict[tuple[str, int], asyncio.Task[bool]] = field(default_factory=dict)  # top-ups under way
    waited: int = 0  # reservations that waited for a top-up
    task: asyncio.Task[None] | None = None
    serial: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    renewed: float = 0.0

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
            if attempt:
                self.waited += 1
                metrics.HOLD_WAITS.inc()
                # Every request that finds the hold short waits for the same one top-up, and all go on together.
                if not all([await asyncio.shield(self._topping(table, ident, want)) for table, ident in balances]):
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
            h.pending += 1
            h.served += 1
            if 2 * h.units < h.chunk or now - h.taken_at >= MAX_AGE:
                key = (h.table.__tablename__, h.ident)
                if key not in self.refills:  # ahead of need, in the background: nobody waits for it
                    # A refill that fails counts against the store's health; requests top up or go the exact way.
                    self._topping(h.table, h.ident, want).add_done_callback(self.health.failed_in)
        return tuple(h for h in holds if h is not None)

    def _topping(self, table: Table, ident: int, want: int) -> asyncio.Task[bool]:
        """The balance's one top-up under way, started if there is none."""
        return one_flight(self.refills, (table.__tablename__, ident), lambda: self._top_up(table, ident, want))

    async def _top_up(self, table: Table, ident: int, want: int) -> bool:
        """Take a chunk of the balance into its hold (a fresh hold when the one there is old); whether that was
        possible. One at a time per balance (`_topping`)."""
        key = (table.__tablename__, ident)
        h = self.held.get(key)
        old = h is not None and time.monotonic() - h.taken_at >= MAX_AGE
        async with self.sessions() as s:
            cols = (table.quota, table.quota_granted, table.quota_alerted, table.quota_epoch)
            row = (await s.execute(select(*cols).where(table.id == ident))).one_or_none()
            if row is None or row[0] is None or row[0] < LARGE * want:
                return False
            balance: int = row[0]
            _, granted, alerted, epoch = row
            floor = granted // 5 if granted and (alerted or 0) < 80 else 0
            chunk = min(balance // SHARE, self._size(h) * want, balance - floor)
            if chunk < 2 * want:
                return False
            taken = await s.execute(
                update(table)
                .where(table.id == ident, table.quota >= chunk, table.quota_epoch == epoch)
                .values(quota=table.quota - chunk)
            )
            if not taken.rowcount:  # type: ignore[attr-defined]
                return False
            if h is not None and h.live and h.epoch == epoch and not old:  # the same hold, grown
                grown = update(QuotaHold).where(QuotaHold.id == h.id).values(taken=QuotaHold.taken + chunk)
                await s.execute(grown)
                await s.commit()
                h.units += chunk
                h.chunk, h.filled_at, h.served = chunk, time.monotonic(), 0
                return True
            now = time.monotonic()
            ident_ = f"{self.replica}-{next(self.serial)}"
            new = Hold(ident_, table, ident, epoch, chunk, now, now, chunk=chunk, filled_at=now)
            await s.execute(insert(QuotaHold).values(self._row(new)))
            await s.commit()
        self.held[key] = new
        if h is not None and h.live:
            h.retiring = True  # what is paid from it settles in memory; the sweep gives it back after
            self.retiring.append(h)
        return True

    def _size(self, h: Hold | None) -> int:
        """Reservations the next chunk is for: `multiple`, or as many as the hold is spending in `LAST` seconds
        when that is more (up to GROWTH times), so that a busy key does not wait on the store every few hundred
        requests."""
        if h is None or not h.served:
            return self.multiple
        rate = h.served / max(time.monotonic() - h.filled_at, 0.01)
        return max(self.multiple, min(int(rate * LAST), GROWTH * self.multiple))

    def _row(self, h: Hold) -> dict[str, object]:
        lease = datetime.now(UTC) + timedelta(seconds=LEASE)
        return dict(
            id=h.id, replica=self.replica, journal=self.journal, balance=h.table.__tablename__, ident=h.ident,
            epoch=h.epoch, taken=h.units, lease_until=lease,
        )  # fmt: skip

    async def settle(self, r: Reservation, cost: int) -> None:
        if not r.held:
            await quota.settle(self.sessions, r, cost)
            return
        delta = r.amount - cost
        for h in r.held:
            h.pending -= 1
            if not delta:
                continue
            if h.live:  # below zero, if need be: the store's balance pays that when the hold ends
                h.units += delta
            else:  # the hold went back meanwhile: so does this
                await quota.adjust(self.sessions, h.table, h.ident, delta)

    async def give_back(self, balances: list[tuple[Table, int]] | None = None) -> None:
        """Return the holds of these balances (all, with None) now, retired ones too."""
        keys = {(t.__tablename__, i) for t, i in balances} if balances is not None else set(self.held)
        retired = [h for h in self.retiring if balances is None or (h.table.__tablename__, h.ident) in keys]
        await self._retire_done(retired)
        for key in keys:
            h = self.held.pop(key, None)
            if h is not None:
                await self._return(h)

    async def _retire_done(self, holds: list[Hold]) -> None:
        """Return these retired holds."""
        for h in holds:
            self.retiring.remove(h)
            await self._return(h)

    async def _return(self, h: Hold) -> None:
        h.live = False
        units, h.units = h.units, 0
        try:
            async with self.sessions() as s:
                ended = await s.execute(delete(QuotaHold).where(QuotaHold.id == h.id))
                if units and ended.rowcount:  # type: ignore[attr-defined]  # else a survivor took it for dead
                    await quota.adjust_in(s, h.table, h.ident, units, h.epoch)
                await s.commit()
        except BaseException:
            h.units, h.live = h.units + units, True  # still held: the next sweep tries again
            if h.retiring:
                self.retiring.append(h)
            else:
                self.held.setdefault((h.table.__tablename__, h.ident), h)
            raise

    async def reclaim(self, gone: Callable[[str], bool]) -> int:
        """End the holds of dead replicas: those of this journal directory whose lease ran out and whose replica
        `gone` says has no journal left to move. Each gives back its chunk minus the cost of the usage records paid
        from it. Returns how many units went back."""
        async with self.sessions() as s:
            expired = QuotaHold.lease_until < datetime.now(UTC)
            query = select(QuotaHold.id, QuotaHold.replica).where(QuotaHold.journal == self.journal, expired)
            rows = (await s.execute(query)).all()
        back = 0
        for hold_id, replica in rows:
            if replica != self.replica and gone(replica):
                back += await self._reclaim(hold_id)
        return back

    async def _reclaim(self, hold_id: str) -> int:
        async with self.sessions() as s:
            ended = delete(QuotaHold).where(QuotaHold.id == hold_id)
            cols = (QuotaHold.balance, QuotaHold.ident, QuotaHold.epoch, QuotaHold.taken)
            row = (await s.execute(ended.returning(*cols))).one_or_none()
            if row is None:
                return 0  # another survivor ended it
            balance, ident, epoch, taken = row
            table = TABLES[balance]
            paid_from = Usage.user_hold if table is User else Usage.key_hold
            spent = (await s.execute(select(func.coalesce(func.sum(Usage.cost), 0)).where(paid_from == hold_id))).one()
            unspent = taken - int(spent[0])
            if unspent:
                await quota.adjust_in(s, table, ident, unspent, epoch)
            await s.commit()
        log.warning("hold %s of a replica that stopped: %d of %d units back to %s %d", hold_id, unspent, taken,
                    balance, ident)  # fmt: skip
        return unspent

    def start(self) -> None:
        if self.multiple:
            self.task = asyncio.create_task(self._sweep())

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(TICK)
            now = time.monotonic()
            stale = [(h.table, h.ident) for h in self.held.values() if now - h.used_at >= IDLE]
            try:
                await self._retire_done([h for h in self.retiring if not h.pending or now - h.used_at >= IDLE])
                await self.give_back(stale)
                if self.held and now - self.renewed >= LEASE / 3:
                    await self._renew()
                    self.renewed = now
            except Exception as exc:  # the store is away: the holds stay until it is back
                self.health.failed(exc)
            else:
                if stale:
                    self.health.ok()

    async def _renew(self) -> None:
        async with self.sessions() as s:
            lease = datetime.now(UTC) + timedelta(seconds=LEASE)
            await s.execute(update(QuotaHold).where(QuotaHold.replica == self.replica).values(lease_until=lease))
            await s.commit()

    async def close(self) -> None:
        for task in [self.task, *self.refills.values()]:
            if task:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self.give_back()
