"""UsageWriter: a usage record is durable in this replica's journal before `add` resolves; a mover task brings the
journals into the store in batches, each record once, and takes over the journals of replicas that died.

The journal being written is never read: each pass of the mover seals it (adds go to a new file from then on) and
moves the sealed files whole, then removes them. Progress within a file is kept in its side file after each
batch's commit; a batch moved again after a crash changes nothing, every record carrying a unique `record_id` that
the store keeps once (INSERT ... ON CONFLICT DO NOTHING).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import os
import secrets
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, cast

from sqlalchemy import Table
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.sql.dml import Insert

from mxn.store.db import unreachable
from mxn.store.models import Usage
from mxn.usage.journal import SUFFIX, JournalFile, directory_id, encode, journals, read

log = logging.getLogger("mxn.usage")
USAGE = cast(Table, Usage.__table__)
CLOSE_WAIT = 30.0  # seconds close() lets the journal take, and then the store
SWEEP = 10.0  # seconds between looks for journals whose writers died
MAX_BACKOFF = 2.0  # seconds between attempts at most, while the store or the disk fails
SYNC_EVERY = 0.2  # seconds between syncs to disk in `interval` mode
REJECTED = "rejected.jsonl"  # records the store refuses outright, set aside here (one journal line each)


async def insert(sessions: async_sessionmaker[AsyncSession], rows: list[dict[str, Any]]) -> None:
    # One executemany takes rows of the same columns: a record leaves out what does not apply (its holds, say).
    columns = set().union(*rows)
    rows = [row if len(row) == len(columns) else {c: row.get(c) for c in columns} for row in rows]
    async with sessions() as s:
        await s.execute(_insert(s.get_bind().dialect.name), rows)  # Core executemany: no ORM work per row
        await s.commit()


@functools.cache
def _insert(dialect: str) -> Insert:
    """The batch insert for the store's dialect; a record already in the store (a batch moved again after a crash,
    or by two survivors) is left as it is. Only the dialect in use is imported (PostgreSQL's is ~2 MiB)."""
    if dialect == "postgresql":
        from sqlalchemy.dialects import postgresql

        return postgresql.insert(USAGE).on_conflict_do_nothing(index_elements=["record_id"])
    from sqlalchemy.dialects import sqlite

    return sqlite.insert(USAGE).on_conflict_do_nothing(index_elements=["record_id"])


class UsageWriter:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        directory: Path | str,
        interval: float = 0.5,
        batch: int = 500,
        fsync: str = "interval",
    ) -> None:
        """`directory`: where this store's journals are (`journal.journal_dir`).
        `fsync`: `always` syncs each group to disk before its adds resolve; `interval` writes each record to the OS
        at once (it outlives the process) and syncs every SYNC_EVERY seconds."""
        self.sessions = sessions
        self.directory = Path(directory)
        self.interval = interval
        self.batch = batch
        self.replica = secrets.token_hex(8)  # names this writer's journals, and starts its records' ids
        self.ids = itertools.count(1)
        self.files = itertools.count(1)
        self.lines: list[bytes] = []  # added, for the next group commit
        self.waiters: list[asyncio.Future[None]] = []  # one per add, resolved when its group is synced
        self.wake = asyncio.Event()  # for the committer: something was added, or it is closing time
        self.stop = asyncio.Event()  # for the mover: closing time
        self.io = asyncio.Lock()  # a group's write, or the switch to a new journal file
        self.moving = asyncio.Lock()  # one pass of the mover at a time (flush() makes one too)
        self.current: JournalFile | None = None  # where adds go
        self.held: list[JournalFile] = []  # sealed journals to move: this writer's, and dead writers'
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="mxn-usage-journal")
        self.committer: asyncio.Task[None] | None = None
        self.mover: asyncio.Task[None] | None = None
        self.closing = False
        self.failing = False
        self.always = fsync == "always"
        self.syncer: asyncio.Task[None] | None = None
        self.directory_id = ""  # the directory's own id, once started
        # Called after each sweep has moved what dead replicas left, with `gone`: the quota holds' reclaim.
        self.after_sweep: Callable[[Callable[[str], bool]], Awaitable[object]] | None = None

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.directory_id = directory_id(self.directory)
        self.current = self._new_file()
        self.committer = asyncio.create_task(self._commit_loop())
        self.mover = asyncio.create_task(self._move_loop())
        if not self.always:
            self.syncer = asyncio.create_task(self._sync_loop())

    def add(self, row: dict[str, Any]) -> asyncio.Future[None]:
        """Journal a usage record, giving it its `record_id`; await the answer for it to be durable. The record is
        queued when this returns: a caller cancelled while it waits still has it journaled."""
        if self.closing:
            raise RuntimeError("usage writer closed")
        row["record_id"] = f"{self.replica}-{next(self.ids)}"
        line = encode(row)
        done = asyncio.get_running_loop().create_future()  # one per add: a caller's cancellation stays its own
        if not self.always and not self.lines and self.current is not None and not self.io.locked():
            # Straight to the OS, here: nothing queued before it, no group being written or file being sealed.
            try:
                self.current.append(line, sync=False)
            except OSError:
                pass  # the committer's way: retried, logged, the caller waiting meanwhile
            else:
                done.set_result(None)
                return done
        self.lines.append(line)
        self.waiters.append(done)
        self.wake.set()
        return done

    async def flush(self) -> None:
        """Bring every record added so far, and what dead replicas left, into the store now; raises what the store
        raises."""
        if self.closing:
            raise RuntimeError("usage writer closed")
        synced = asyncio.get_running_loop().create_future()  # a waiter without a line: resolved after all before it
        self.waiters.append(synced)
        self.wake.set()
        await synced
        async with self.moving:
            await self._claim_dead()
            await self._move_all()
            if self.after_sweep:
                await self.after_sweep(self.gone)

    async def close(self) -> None:
        """Journal what was added, then bring every journal held into the store. If the store does not take them
        within CLOSE_WAIT, they stay for the next start, or another replica, to move."""
        self.closing = True
        self.wake.set()
        self.stop.set()  # the committer writes what is left and stops; the mover stops after its pass
        try:
            async with asyncio.timeout(CLOSE_WAIT):
                for task in (self.committer, self.mover, self.syncer):
                    if task:
                        await task
                await self._move_all(final=True)
        except Exception as exc:
            log.warning("usage records left in %s for the next start to move: %s", self.directory, _reason(exc))
        finally:
            if self.current and self.current.size == 0:
                self.current.remove()
            elif self.current:
                self.current.close()
            for held in self.held:
                held.close()
            self.current, self.held = None, []
            self.executor.shutdown(wait=False)

    def _new_file(self) -> JournalFile:
        while not (created := JournalFile.create(self.directory / f"{self.replica}-{next(self.files):06d}{SUFFIX}")):
            pass  # taken by a survivor's sweep before we held it: that name is spent, the next one will do
        return created

    async def _commit_loop(self) -> None:
        """Group commit: what is added while a group is being written and synced goes in the next group."""
        while not (self.closing and not self.waiters):
            await self.wake.wait()
            self.wake.clear()
            while self.waiters:
                lines, waiters = self.lines, self.waiters
                self.lines, self.waiters = [], []
                if lines:
                    async with self.io:
                        await self._write(b"".join(lines))
                for waiter in waiters:
                    if not waiter.done():
                        waiter.set_result(None)

    async def _write(self, data: bytes) -> None:
        """Write and sync one group, however many attempts it takes: its adds wait, as nothing is durable before."""
        assert self.current
        loop, delay, failed = asyncio.get_running_loop(), 0.05, False
        while True:
            try:
                await loop.run_in_executor(self.executor, self.current.append, data)
                break
            except OSError as exc:
                if not failed:
                    log.error("usage journal %s cannot be written, requests wait: %s", self.current.path, exc)
                failed = True
                await asyncio.sleep(delay)
                delay = min(2 * delay, MAX_BACKOFF)
        if failed:
            log.warning("usage journal %s written again", self.current.path)

    async def _sync_loop(self) -> None:
        """`interval` mode: what was written to the OS reaches the disk within SYNC_EVERY seconds."""
        while not self.closing:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), SYNC_EVERY)
            current = self.current
            if current is not None and current.size:
                try:
                    await asyncio.get_running_loop().run_in_executor(self.executor, current.sync)
                except OSError as exc:
                    log.warning("usage journal %s cannot be synced: %s", current.path, exc)

    async def _move_loop(self) -> None:
        sweep_at, delay = 0.0, self.interval
        while not self.closing:
            try:
                async with self.moving:
                    sweep = time.monotonic() >= sweep_at
                    if sweep:
                        sweep_at = time.monotonic() + SWEEP
                        await self._claim_dead()
                    await self._move_all()
                    if sweep and self.after_sweep:
                        await self.after_sweep(self.gone)
            except Exception as exc:  # the store unreachable: the records wait in the journal
                if not self.failing:
                    log.warning("usage records wait in %s, the store fails: %s", self.directory, _reason(exc))
                self.failing = True
                delay = min(2 * delay, MAX_BACKOFF)
            else:
                if self.failing:
                    log.warning("usage records reach the store again")
                self.failing, delay = False, self.interval
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), delay)

    def gone(self, replica: str) -> bool:
        """Whether `replica` is not this one and has no journal left in this directory: every record it wrote is in
        the store (it has one journal at least for as long as it lives)."""
        return replica != self.replica and not journals(self.directory, replica)

    async def _claim_dead(self) -> None:
        """Take over the journals whose writers died (this replica's earlier life among them): nobody holds them."""
        mine = {held.path for held in self.held} | ({self.current.path} if self.current else set())

        def claim() -> list[JournalFile]:
            found = (JournalFile.claim(path) for path in journals(self.directory) if path not in mine)
            return [held for held in found if held]

        for held in await asyncio.to_thread(claim):
            log.info("moving usage journal %s, left by a replica that stopped", held.path.name)
            self.held.append(held)

    async def _move_all(self, final: bool = False) -> None:
        """Move the journals held, then seal the one being written (if it has anything) and move it too."""
        await self._move_held()
        if self.current and self.current.size:
            new = None if final else await asyncio.to_thread(self._new_file)
            async with self.io:  # waits for a group being written: a sealed journal never changes again
                sealed, self.current = self.current, new
            self.held.append(sealed)
            await self._move_held()

    async def _move_held(self) -> None:
        while self.held:
            await self._move(self.held[0])
            self.held.pop(0)

    async def _move(self, journal: JournalFile) -> None:
        """Every record of a journal nobody writes any more into the store, batch by batch; then the journal away."""
        if journal.moved is None:
            journal.moved = await asyncio.to_thread(journal.load_moved)
        while True:
            batch = await asyncio.to_thread(read, journal.fd, journal.moved, self.batch)
            if batch.skipped:
                log.warning("usage journal %s: %d bytes of torn or damaged lines skipped", journal.path, batch.skipped)
            if batch.rows:
                try:
                    await insert(self.sessions, batch.rows)
                except DBAPIError as exc:
                    if unreachable(exc):
                        raise
                    await self._insert_each(batch.rows)  # a record the store refuses must not hold up the rest
            if batch.eof:
                break
            await asyncio.to_thread(journal.save_moved, batch.end)
        await asyncio.to_thread(journal.remove)

    async def _insert_each(self, rows: list[dict[str, Any]]) -> None:
        """Insert the rows one by one; those the store refuses outright go to the REJECTED file, logged."""
        for row in rows:
            try:
                await insert(self.sessions, [row])
            except DBAPIError as exc:
                if unreachable(exc):
                    raise
                await asyncio.to_thread(_set_aside, self.directory / REJECTED, encode(row))
                log.error("usage record %s refused by the store, kept in %s: %s", row.get("record_id"),
                          self.directory / REJECTED, _reason(exc))  # fmt: skip


def _set_aside(path: Path, line: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)


def _reason(exc: BaseException) -> str:
    """The exception's first line: the store's errors go on with the statement and its parameters."""
    first = str(exc).partition("\n")[0]
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__
