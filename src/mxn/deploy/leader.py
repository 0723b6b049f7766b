"""One controller at a time: whichever gateway holds the lease places replicas; the others wait for it.

PostgreSQL: a session-level advisory lock on a connection of its own (released when the holder dies).
SQLite: an exclusive lock on a file beside the database (every replica of a SQLite store is on this machine)."""

from __future__ import annotations

import contextlib
import fcntl
import os
from typing import IO, Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from mxn.store.db import is_sqlite
from mxn.store.locks import lock_path

LOCK_ID = 0x6D786E64  # "mxnd"


class Lease:
    def __init__(self, db: AsyncEngine, url: str, data_dir: str) -> None:
        self.db = db
        self.url = url
        self.data_dir = data_dir
        self._file: IO[Any] | None = None
        self._conn: AsyncConnection | None = None

    @property
    def held(self) -> bool:
        return self._file is not None or self._conn is not None

    async def acquire(self) -> bool:
        """True while this process holds the lease; takes it when it is free."""
        if self._conn is not None:
            try:  # the lock lives as long as its connection: make sure that is still there
                await self._conn.execute(text("SELECT 1"))
                return True
            except Exception:
                with contextlib.suppress(Exception):
                    await self._conn.close()
                self._conn = None
        if self._file is not None:
            return True
        if is_sqlite(self.url):
            path = lock_path(self.url, self.data_dir, "controller")
            path.parent.mkdir(parents=True, exist_ok=True)
            f = path.open("a")
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.close()
                return False
            f.truncate(0)
            f.write(f"{os.getpid()}\n")
            f.flush()
            self._file = f
            return True
        conn = await self.db.connect()
        got = (await conn.execute(text("SELECT pg_try_advisory_lock(:id)"), {"id": LOCK_ID})).scalar()
        await conn.commit()
        if got:
            self._conn = conn
            return True
        await conn.close()
        return False

    async def release(self) -> None:
        if self._file is not None:
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None
        if self._conn is not None:
            with contextlib.suppress(Exception):
                await self._conn.execute(text("SELECT pg_advisory_unlock(:id)"), {"id": LOCK_ID})
                await self._conn.commit()
            await self._conn.close()
            self._conn = None
