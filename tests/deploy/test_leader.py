"""One controller at a time: the deployment lease on SQLite (a file lock) and PostgreSQL (an advisory lock)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from mxn.deploy.leader import LOCK_ID, Lease
from mxn.store.db import create_engine
from tests.conftest import pg_database, wait_for_async


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'mxn.db'}"
    else:
        yield from pg_database()


@asynccontextmanager
async def two_gateways(url: str, data_dir: Path) -> AsyncIterator[tuple[Lease, Lease]]:
    """The leases of two gateways on one store, each with its own connection pool."""
    db_a, db_b = create_engine(url), create_engine(url)
    a, b = Lease(db_a, url, str(data_dir)), Lease(db_b, url, str(data_dir))
    try:
        yield a, b
    finally:
        await a.release()
        await b.release()
        await db_a.dispose()
        await db_b.dispose()


async def test_only_one_holder_until_it_lets_go(url: str, tmp_path: Path) -> None:
    async with two_gateways(url, tmp_path) as (a, b):
        assert await a.acquire()
        assert await a.acquire()  # holding it is not losing it
        assert not await b.acquire()
        await a.release()
        assert await b.acquire()
        assert not await a.acquire()


@pytest.fixture()
def pg_url() -> Iterator[str]:
    yield from pg_database()


async def test_a_holder_whose_connection_died_finds_out(pg_url: str, tmp_path: Path) -> None:
    """PostgreSQL drops the lock with the connection: the old holder must not go on believing it leads."""
    from sqlalchemy import text

    async with two_gateways(pg_url, tmp_path) as (a, b):
        assert await a.acquire()
        async with b.db.connect() as conn:
            killed = await conn.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' AND objid = :id"
                    " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
                ),
                {"id": LOCK_ID},
            )
            assert killed.scalars().all() == [True]
        # The backend goes away, and its lock with it, shortly after it is told to.
        await wait_for_async(b.acquire, 10, "the lock free once its holder's connection was killed", interval=0.05)
        assert b.held
        assert not await a.acquire()
