"""Held balances (`accounts.holds`) against a real store: two replicas spending one balance concurrently stay
exact, an outright set voids what was held, and the exact path takes over when a balance gets small."""

from __future__ import annotations

import asyncio
import itertools
import random

import pytest
from sqlalchemy import select

from mxn.accounts import holds as holds_module
from mxn.accounts.holds import LARGE, Holds
from mxn.accounts.service import create_key, create_user
from mxn.errors import RateLimited
from mxn.store.db import create_engine, sessionmaker
from mxn.store.migrate import upgrade
from mxn.store.models import ApiKey, QuotaHold, User
from mxn.usage import record
from mxn.usage.writer import insert

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


def test_a_busy_hold_is_refilled_ahead_and_an_old_one_settles_in_memory_before_it_goes_back(
    store: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def run() -> None:
        engine = create_engine(store)
        sessions = sessionmaker(engine)
        holds = Holds(sessions, 64)
        try:
            user_id, key_id = await _account(sessions, 10_000_000, None)
            spent, open_ = 0, []
            for _ in range(64 * 5):  # five chunks' worth
                r = await holds.reserve(user_id, key_id, True, False, 100, 1)
                assert r.held, "always served from a hold"
                open_.append(r)
                if len(open_) > 8:  # a few in flight at any time
                    await holds.settle(open_.pop(0), 60)
                    spent += 60
                await asyncio.sleep(0.002)  # a request's time with its upstream: a refill runs meanwhile
            assert holds.waited == 1, "only the first request waited for the store"
            first = holds.held[("users", user_id)]
            monkeypatch.setattr(holds_module, "MAX_AGE", 0.0)  # every hold is old now: the next take swaps it
            r = await holds.reserve(user_id, key_id, True, False, 100, 1)
            open_.append(r)
            await asyncio.gather(*holds.refills.values())
            assert holds.retiring == [first] and holds.held[("users", user_id)] is not first
            assert first.live and first.pending == 9
            for r in open_:
                await holds.settle(r, 60)  # settled in memory: the retired hold is still live
                spent += 60
            assert first.live and first.pending == 0
            monkeypatch.setattr(holds_module, "MAX_AGE", 5.0)
            await holds._retire_done([first])
            assert not first.live and not holds.retiring
            await holds.close()
            assert (await _balances(sessions, user_id, key_id))[0] == 10_000_000 - spent
            async with sessions() as s:
                assert not (await s.execute(select(QuotaHold).where(QuotaHold.replica == holds.replica))).all()
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


async def _spend_and_die(sessions, user_id: int, key_id: int, journal: str, n: int) -> tuple[Holds, int]:  # type: ignore[no-untyped-def]
    """A replica that serves `n` requests from its holds, journals a record for all but the last (in flight when
    it dies), and dies: nothing given back. Returns it and the recorded cost."""
    dead = Holds(sessions, 64, journal=journal)
    rows, recorded = [], 0
    for i in range(n):
        r = await dead.reserve(user_id, key_id, True, True, 500, 1)
        assert r.held, "served from holds"
        if i == n - 1:
            break  # reserved, never settled nor recorded
        cost = 100 + 7 * i + (600 if i == 3 else 0)  # one charge beyond its reservation
        await dead.settle(r, cost)
        rows.append(record(model="m", chip="cpu", route="chat", latency_ms=1.0, status=200, cost=cost,
                           record_id=f"{dead.replica}-{i}", **r.paid_from()))  # fmt: skip
        recorded += cost
    await insert(sessions, rows)
    return dead, recorded


def test_a_dead_replicas_holds_come_back_to_the_unit_once_its_lease_ran_out(
    store: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def run() -> None:
        engine = create_engine(store)
        sessions = sessionmaker(engine)
        try:
            user_id, key_id = await _account(sessions, 10_000_000, 5_000_000)
            monkeypatch.setattr(holds_module, "LEASE", 0.2)
            dead, recorded = await _spend_and_die(sessions, user_id, key_id, "j1", 20)
            async with sessions() as s:
                assert len((await s.execute(select(QuotaHold).where(QuotaHold.replica == dead.replica))).all()) == 2
            survivors = [Holds(sessions, 64, journal="j1"), Holds(sessions, 64, journal="j1")]
            elsewhere = Holds(sessions, 64, journal="j2")  # another journal directory: it cannot know
            assert await survivors[0].reclaim(lambda replica: False) == 0, "its journals are not all moved"
            assert await elsewhere.reclaim(lambda replica: True) == 0
            assert await survivors[0].reclaim(lambda replica: True) == 0, "its lease has not run out"
            await asyncio.sleep(0.3)
            # Two survivors at once: each hold ends once.
            back = await asyncio.gather(*(s.reclaim(lambda replica: True) for s in survivors))
            assert sum(back) > 0
            assert await _balances(sessions, user_id, key_id) == (10_000_000 - recorded, 5_000_000 - recorded)
            async with sessions() as s:
                assert not (await s.execute(select(QuotaHold).where(QuotaHold.replica == dead.replica))).all()
        finally:
            await engine.dispose()

    asyncio.run(run())


def test_a_live_replica_renews_its_lease_and_gives_back_what_it_holds(
    store: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def run() -> None:
        engine = create_engine(store)
        sessions = sessionmaker(engine)
        monkeypatch.setattr(holds_module, "LEASE", 0.6)
        for name in ("IDLE", "MAX_AGE"):  # the sweep renews, and gives nothing back meanwhile
            monkeypatch.setattr(holds_module, name, 10.0)
        monkeypatch.setattr(holds_module, "TICK", 0.1)
        live = Holds(sessions, 64, journal="j3")
        try:
            user_id, key_id = await _account(sessions, 10_000_000, None)
            r = await live.reserve(user_id, key_id, True, False, 500, 1)
            live.start()
            await asyncio.sleep(1.5)  # past two leases: renewed meanwhile
            assert await Holds(sessions, 64, journal="j3").reclaim(lambda replica: True) == 0
            await live.settle(r, 123)
            await live.close()
            assert (await _balances(sessions, user_id, key_id))[0] == 10_000_000 - 123
            async with sessions() as s:
                assert not (await s.execute(select(QuotaHold).where(QuotaHold.replica == live.replica))).all()
        finally:
            await engine.dispose()

    asyncio.run(run())
