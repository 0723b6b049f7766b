"""Quota: reserved before the call, settled on real usage after, refunded on failure; never negative.

Balances live in the store (`users.quota`, `api_keys.quota`; NULL = unlimited) and change only through
conditional UPDATEs (`... WHERE quota >= :amount`), which the database serialises per row: exact under
concurrency and across replicas without any lock of ours.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

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


@dataclass(slots=True)
class Reservation:
    user_id: int | None  # set when the user's balance was charged
    key_id: int | None  # set when the key's balance was charged
    amount: int

    @property
    def empty(self) -> bool:
        return self.user_id is None and self.key_id is None


def insufficient(message: str = "You exceeded your current quota.") -> RateLimited:
    return RateLimited(message, code="insufficient_quota", headers={"retry-after": "60"})


async def reserve(
    sessions: async_sessionmaker[AsyncSession], user_id: int, key_id: int, want: int, minimum: int
) -> Reservation:
    """Take up to `want` units (at least `minimum`) from every limited balance of the key and its user."""
    for _ in range(_ATTEMPTS):
        async with sessions() as s:
            row: tuple[int | None, int | None]
            if key_id:
                query = select(User.quota, ApiKey.quota).join(ApiKey, ApiKey.user_id == User.id)
                row = tuple((await s.execute(query.where(ApiKey.id == key_id))).one())  # type: ignore[assignment]
            else:  # a console session: only the user's balance
                row = ((await s.execute(select(User.quota).where(User.id == user_id))).scalar_one(), None)
            balances = [b for b in row if b is not None]
            if not balances:
                return Reservation(None, None, want)
            amount = min(want, *balances)
            if amount < minimum:
                raise insufficient()
            charged = Reservation(None, None, amount)
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
    delta = r.amount - cost
    async with sessions() as s:
        for table, ident in ((User, r.user_id), (ApiKey, r.key_id)):
            if ident is not None:
                new = table.quota + delta
                await s.execute(update(table).where(table.id == ident).values(quota=case((new < 0, 0), else_=new)))
        await s.commit()
