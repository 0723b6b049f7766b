"""Held balances (`accounts.holds`) against a real store: two replicas spending one balance concurrently stay
exact, an outright set voids what was held, and the exact path takes over when a balance gets small."""

from __future__ import annotations

import asyncio
import itertools
import random

import pytest

from mxn.accounts.holds import LARGE, Holds
from mxn.accounts.service import create_key, create_user
from mxn.errors import RateLimited
from mxn.store.db import create_engine, sessionmaker
from mxn.store.migrate import upgrade
from mxn.store.models import ApiKey, User

SECRET = b"s" * 32
_names = itertools.count()


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('h') / 'h.db'}"
    upgrade(url)
    return url


async def _account(sessions, user_quota: int, key_quota: int | None) -> tuple[int, int]:  # type: ignore[no-untyped-def]
    async with sessions() as s:
        user = await create_user(s, f"h{next(_names)}", None, quota=user_quota)
        row, _ = await create_key(s, SECRET, user, limits={"quota": key_quota})
        await s.commit()
        return user.id, row.id


async def _balances(sessions, user_id: int, key_id: int) -> tuple[int | None, int | None]:  # type: ignore[no-untyped-def]
    async with sessions() as s:
        user, key = await s.get(User, user_id), await s.get(ApiKey, key_id)
        assert user is not None and key is not None
        return user.quota, key.quota


def test_two_replicas_spending_one_balance_stay_exact(store: str) -> None:
    async def run() -> None:
        engine = create_engine(store)
        sessions = sessionmaker(engine)
        replicas = [Holds(sessions, 64), Holds(sessions, 64)]
        try:
            user_id, key_id = await _account(sessions, 10_000_000, 5_000_000)
            rng = random.Random(7)
            spent = 0

            async def one(i: int) -> None:
                nonlocal spent
                holds = replicas[i % 2]
                want = rng.randint(50, 500)
                r = await holds.reserve(user_id, key_id, True, True, want, 1)
                await asyncio.sleep(rng.random() / 1000)  # not a wait: interleaves the replicas' reserves and settles
                cost = rng.randint(0, want + 50)  # sometimes more than reserved, as a settled overrun can be
                await holds.settle(r, cost)
                spent += cost

            await asyncio.gather(*(one(i) for i in range(400)))
            held = sum(h.units for holds in replicas for h in holds.held.values())
            assert held > 0, "large balances were served from holds"
            user_quota, key_quota = await _balances(sessions, user_id, key_id)
            assert user_quota is not None and key_quota is not None
            assert user_quota + sum(h.units for x in replicas for h in x.held.values() if h.table is User) == (
                10_000_000 - spent
            )
            for holds in replicas:
                await holds.close()
            assert await _balances(sessions, user_id, key_id) == (10_000_000 - spent, 5_000_000 - spent)
        finally:
            await engine.dispose()

    asyncio.run(run())


def test_setting_a_balance_voids_what_was_held(store: str) -> None:
    async def run() -> None:
        engine = create_engine(store)
        sessions = sessionmaker(engine)
        holds = Holds(sessions, 64)
        try:
            user_id, key_id = await _account(sessions, 1_000_000, None)
            r = await holds.reserve(user_id, key_id, True, False, 100, 1)
            assert r.held, "taken from a hold"
            async with sessions() as s:
                user = await s.get(User, user_id)
                assert user is not None
                user.quota = 5000  # the operator sets the balance outright
                await s.commit()
            await holds.settle(r, 40)
            await holds.close()
            # Neither the hold nor the unused part of r (a reservation of the old balance) lands on the new one.
            assert (await _balances(sessions, user_id, key_id))[0] == 5000
        finally:
            await engine.dispose()

    asyncio.run(run())


def test_small_balances_take_the_exact_path_and_refuse_exactly(store: str) -> None:
    async def run() -> None:
        engine = create_engine(store)
        sessions = sessionmaker(engine)
        holds = Holds(sessions, 64)
        try:
            want = 30
            user_id, key_id = await _account(sessions, LARGE * want + 600, None)
            admitted = 0
            for _ in range(LARGE + 40):
                try:
                    r = await holds.reserve(user_id, key_id, True, False, want, want)
                except RateLimited:
                    continue
                await holds.settle(r, want)
                admitted += 1
            await holds.close()
            assert admitted == LARGE + 20
            assert (await _balances(sessions, user_id, key_id))[0] == 0
        finally:
            await engine.dispose()

    asyncio.run(run())
