"""Quota: reserved before the call, settled on real usage after, refunded on failure; never negative.

Balances live in the store (`users.quota`, `api_keys.quota`; NULL = unlimited) and change only through
conditional UPDATEs (`... WHERE quota >= :amount`), which the database serialises per row: exact under
concurrency and across replicas without any lock of ours.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from sqlalchemy import case, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from mxn.errors import RateLimited
from mxn.store.models import ApiKey, User

_ATTEMPTS = 8


@dataclass(frozen=True, slots=True)
class Price:
    """Per 1M tokens, times the group's multiplier. Units: tokens, or micro-credits when `credits`."""

    credits: bool
    input: float
    output: float
    multiplier: float

    def cost(self, prompt: int, completion: int) -> int:
        if not self.credits:
            return prompt + completion
        # A price per 1M tokens is, per token, the same number of micro-credits.
        return math.ceil((prompt * self.input + completion * self.output) * self.multiplier - 1e-9)

    def completion_affordable(self, units: int, prompt: int) -> int:
        """How many completion tokens `units` pay for after the prompt."""
        if not self.credits:
            return units - prompt
        if self.output * self.multiplier <= 0:
            return 1 << 31
        left = units / self.multiplier - prompt * self.input
        return math.floor(left / self.output + 1e-9)


# A balance as reserve() read it: (balance, what was granted, the share already alerted on: 0, 80 or 100).
Seen = tuple[int, int | None, int]


@dataclass(slots=True)
class Reservation:
    user_id: int | None  # set when the user's balance was charged
    key_id: int | None  # set when the key's balance was charged
    amount: int
    seen: tuple[Seen | None, Seen | None] = (None, None)  # the user's and the key's
    held: tuple[Any, ...] = ()  # the replica's holds it was paid from (`accounts.holds`), if it was

    @property
    def empty(self) -> bool:
        return self.user_id is None and self.key_id is None

    def paid_from(self) -> dict[str, str]:
        """The holds it was paid from, as a usage record names them."""
        return {"user_hold" if h.table is User else "key_hold": h.id for h in self.held}

    def may_cross(self, cost: int) -> bool:
        """Whether this charge may take a balance past 80% or 100% spent (then the store decides, once)."""
        for seen in self.seen:
            if seen is None:
                continue
            balance, granted, alerted = seen
            if not granted:
                continue
            after = balance - cost
            if (after <= 0 and alerted < 100) or (after * 5 <= granted and alerted < 80):
                return True
        return False


def insufficient(message: str = "You exceeded your current quota.") -> RateLimited:
    return RateLimited(message, code="insufficient_quota", headers={"retry-after": "60"})


async def reserve(
    sessions: async_sessionmaker[AsyncSession], user_id: int, key_id: int, want: int, minimum: int
) -> Reservation:
    """Take up to `want` units (at least `minimum`) from every limited balance of the key and its user."""
    for _ in range(_ATTEMPTS):
        async with sessions() as s:
            user_cols = (User.quota, User.quota_granted, User.quota_alerted)
            if key_id:
                key_cols = (ApiKey.quota, ApiKey.quota_granted, ApiKey.quota_alerted)
                query = select(*user_cols, *key_cols).join(ApiKey, ApiKey.user_id == User.id)
                got = tuple((await s.execute(query.where(ApiKey.id == key_id))).one())
            else:  # a console session: only the user's balance
                got = (*(await s.execute(select(*user_cols).where(User.id == user_id))).one(), None, None, 0)
            row: tuple[int | None, int | None] = (got[0], got[3])
            balances = [b for b in row if b is not None]
            if not balances:
                return Reservation(None, None, want)
            amount = min(want, *balances)
            if amount < minimum:
                raise insufficient()
            seen = tuple(None if got[i] is None else (got[i], got[i + 1], got[i + 2] or 0) for i in (0, 3))
            charged = Reservation(None, None, amount, seen)  # type: ignore[arg-type]
            if row[0] is not None:
                if not await _take(s, User, user_id, amount):
                    continue  # someone spent in between: read again
                charged.user_id = user_id
            if row[1] is not None:
                if not await _take(s, ApiKey, key_id, amount):
                    await s.rollback()
                    continue
                charged.key_id = key_id
            await s.commit()
            return charged
    raise insufficient("Your quota is being spent by other requests right now; retry shortly.")


async def _take(s: AsyncSession, table: type[User] | type[ApiKey], ident: int, amount: int) -> bool:
    result = await s.execute(
        update(table).where(table.id == ident, table.quota >= amount).values(quota=table.quota - amount)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


async def settle(sessions: async_sessionmaker[AsyncSession], r: Reservation, cost: int) -> None:
    """Give back what the reservation did not use; charge any excess only as far as the balance goes."""
    if r.empty or cost == r.amount:
        return
    async with sessions() as s:
        for table, ident in ((User, r.user_id), (ApiKey, r.key_id)):
            if ident is not None:
                await _adjust(s, table, ident, r.amount - cost)
        await s.commit()


async def adjust(
    sessions: async_sessionmaker[AsyncSession], table: type[User] | type[ApiKey], ident: int, delta: int
) -> None:
    """Add `delta` to a balance (a refund, or a charge as far as the balance goes)."""
    async with sessions() as s:
        await _adjust(s, table, ident, delta)
        await s.commit()


async def _adjust(s: AsyncSession, table: type[User] | type[ApiKey], ident: int, delta: int) -> None:
    new = table.quota + delta
    await s.execute(update(table).where(table.id == ident).values(quota=case((new < 0, 0), else_=new)))


async def adjust_in(s: AsyncSession, table: type[User] | type[ApiKey], ident: int, delta: int, epoch: int) -> None:
    """As `adjust`, in `s`'s transaction, if the balance is still the one of `epoch` (not set anew since)."""
    new = table.quota + delta
    where = (table.id == ident, table.quota_epoch == epoch)
    await s.execute(update(table).where(*where).values(quota=case((new < 0, 0), else_=new)))
