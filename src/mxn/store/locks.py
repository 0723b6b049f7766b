"""Store-wide locks between processes: a PostgreSQL advisory lock, or a file lock beside a SQLite database
(every process of a SQLite store is on one machine)."""

from __future__ import annotations

import asyncio
import fcntl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from mxn.store.db import is_sqlite

STARTUP_LOCK_ID = 0x6D786E73  # "mxns"


def lock_path(url: str, data_dir: str, name: str) -> Path:
    """`<db>.<name>.lock` beside a SQLite file; in the data dir for an in-memory database."""
    database = make_url(url).database
    if database and database != ":memory:":
        return Path(f"{database}.{name}.lock")
    return Path(data_dir) / f"{name}.lock"


@asynccontextmanager
async def exclusive(db: AsyncEngine, url: str, data_dir: str, name: str, lock_id: int) -> AsyncIterator[None]:
    """Wait for the lock, hold it for the block."""
    if is_sqlite(url):
        path = lock_path(url, data_dir, name)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as f:
            await asyncio.to_thread(fcntl.flock, f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)
        return
    async with db.connect() as conn:
        await conn.execute(text("SELECT pg_advisory_lock(:id)"), {"id": lock_id})
        await conn.commit()
        try:
            yield
        finally:
            await conn.execute(text("SELECT pg_advisory_unlock(:id)"), {"id": lock_id})
            await conn.commit()
