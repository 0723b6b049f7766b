"""Quota arithmetic and the reserve/settle cycle against a real store: never negative, never double-spent."""

from __future__ import annotations

import asyncio
import itertools

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mxn.accounts import quota
from mxn.accounts.service import create_key, create_user
from mxn.errors import RateLimited
from mxn.store.db import create_engine, sessionmaker
from mxn.store.migrate import upgrade
from mxn.store.models import ApiKey, User

SECRET = b"s" * 32
_names = itertools.count()


@given(
    st.booleans(), st.floats(0, 50), st.floats(0.01, 50), st.floats(0.1, 5), st.integers(0, 5000), st.integers(0, 5000)
)
def test_affordable_completion_never_costs_more_than_the_units(
    credits: bool, p_in: float, p_out: float, mult: float, prompt: int, units: int
) -> None:
    price = quota.Price(credits, p_in, p_out, mult)
    n = price.completion_affordable(units, prompt)
    if n >= 0:
        assert price.cost(prompt, n) <= units
        assert price.cost(prompt, n + 1) > units or price.cost(prompt, n + 1) == price.cost(prompt, n)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    url = f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('q') / 'q.db'}"
    upgrade(url)
    return url


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.integers(0, 500),
    st.one_of(st.none(), st.integers(0, 500)),
    st.lists(st.tuples(st.integers(1, 120), st.integers(0, 200)), min_size=1, max_size=12),
)
def test_reserve_then_settle_keeps_balances_exact_and_never_negative(
    store: str, user_quota: int, key_quota: int | None, calls: list[tuple[int, int]]
) -> None:
    async def run() -> None:
        engine = create_engine(store)
        sessions = sessionmaker(engine)
        try:
            async with sessions() as s:
                user = await create_user(s, f"u{next(_names)}", None, quota=user_quota)
                row, _ = await create_key(s, SECRET, user, limits={"quota": key_quota})
                await s.commit()
                user_id, key_id = user.id, row.id
            spent_user, spent_key = 0, 0
            for want, actual in calls:
                try:
                    r = await quota.reserve(sessions, user_id, key_id, want, 1)
                except RateLimited:
                    continue
                cost = actual  # sometimes more than was reserved
                await quota.settle(sessions, r, cost)
                # The settle charges any excess only as far as the balance goes.
                spent_user = min(user_quota, spent_user + cost)
                if key_quota is not None:
                    spent_key = min(key_quota, spent_key + cost)
            async with sessions() as s:
                u = await s.get(User, user_id)
                k = await s.get(ApiKey, key_id)
                assert u is not None and k is not None
                assert u.quota is not None and u.quota >= 0 and u.quota == user_quota - spent_user
                if key_quota is not None:
                    assert k.quota is not None and k.quota >= 0 and k.quota == key_quota - spent_key
        finally:
            await engine.dispose()

    asyncio.run(run())


def test_concurrent_reservations_never_overdraw(store: str) -> None:
    async def run() -> None:
        engine = create_engine(store)
        sessions = sessionmaker(engine)
        try:
            async with sessions() as s:
                user = await create_user(s, "racer", None, quota=1000)
                row, _ = await create_key(s, SECRET, user)
                await s.commit()

            async def one() -> int:
                try:
                    return (await quota.reserve(sessions, user.id, row.id, 30, 30)).amount
                except RateLimited:
                    return 0

            taken = await asyncio.gather(*(one() for _ in range(60)))
            assert sum(taken) == 990 and sum(1 for t in taken if t) == 33
            async with sessions() as s:
                assert (await s.get(User, user.id)).quota == 10  # type: ignore[union-attr]
        finally:
            await engine.dispose()

    asyncio.run(run())
