"""A PostgreSQL of this test's own, stopped while usage records are added: the adds keep returning (durable in the
journal), and once it is back every record lands within seconds, each once."""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from pathlib import Path

import pytest

from mxn.store.db import create_engine, sessionmaker
from mxn.usage import UsageWriter
from mxn.usage.journal import journals
from tests.conftest import wait_for_async
from tests.stores import PrivatePostgres
from tests.usage import Sessions, stored, usage_row

pytestmark = pytest.mark.skipif(not shutil.which("pg_ctl"), reason="needs PostgreSQL's binaries (initdb, pg_ctl)")


async def test_adds_stay_durable_while_postgres_is_down_and_land_once_when_it_is_back(
    private_pg: PrivatePostgres, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = create_engine(private_pg.url)
    sessions = sessionmaker(db)
    writer = UsageWriter(sessions, tmp_path / "journal", interval=0.1)
    writer.start()
    added: list[str] = []

    async def add(n: int) -> None:
        rows = [usage_row(i) for i in range(n)]
        await asyncio.wait_for(asyncio.gather(*(writer.add(row) for row in rows)), 1)  # durable, store or no store
        added.extend(row["record_id"] for row in rows)

    try:
        with caplog.at_level(logging.WARNING, "mxn.usage"):
            await add(50)
            await wait_for_async(lambda: _count(sessions, len(added)), 10, "the first records stored")
            private_pg.stop()
            down = time.monotonic()
            while time.monotonic() - down < 3:
                await add(20)
                await asyncio.sleep(0.05)
            assert journals(tmp_path / "journal") and len(added) > 500
            private_pg.start()  # on this thread: the death signal follows the thread that started it
            back = time.monotonic()
            await wait_for_async(lambda: _count(sessions, len(added)), 10, "every record stored")
            landed = time.monotonic() - back
        ids = await stored(sessions)
        assert len(ids) == len(set(ids)) and set(ids) == set(added)
        assert landed < 5, f"the records took {landed:.1f}s to land"
        # One line when the store starts failing, one when it is back: not one per attempt.
        assert caplog.text.count("the store fails") == 1 and caplog.text.count("reach the store again") == 1
    finally:
        await writer.close()
        await db.dispose()
    assert not journals(tmp_path / "journal")


async def _count(sessions: Sessions, expected: int) -> bool:
    return len(await stored(sessions)) >= expected
