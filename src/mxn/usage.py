"""Usage records: one per request, queued on the hot path, written in batches, flushed on shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import Table, insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from mxn.store.models import Usage

log = logging.getLogger("mxn.usage")
USAGE = cast(Table, Usage.__table__)
COLUMNS = (
    "created_at",
    "user_id",
    "key_id",
    "model",
    "chip",
    "endpoint_id",
    "route",
    "prompt_tokens",
    "completion_tokens",
    "ttft_ms",
    "latency_ms",
    "status",
    "error",
    "cost",
)


def record(**values: Any) -> dict[str, Any]:
    values.setdefault("created_at", datetime.now(UTC))
    return values


CLOSE_WAIT = 30.0  # seconds close() lets a write under way finish


class UsageWriter:
    def __init__(self, sessions: async_sessionmaker[AsyncSession], interval: float = 0.5, batch: int = 500) -> None:
        self.sessions = sessions
        self.interval = interval
        self.batch = batch
        self.pending: list[dict[str, Any]] = []
        self.wake = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.closing = False

    def start(self) -> None:
        self.task = asyncio.create_task(self._loop())

    def add(self, row: dict[str, Any]) -> None:
        self.pending.append(row)
        if len(self.pending) >= self.batch:
            self.wake.set()

    async def _loop(self) -> None:
        while not self.closing:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), self.interval)
            self.wake.clear()
            await self.flush()

    async def flush(self) -> None:
        while self.pending:
            rows, self.pending = self.pending[: self.batch], self.pending[self.batch :]
            try:
                async with self.sessions() as s:
                    await s.execute(insert(USAGE), rows)  # Core executemany: no ORM work per row
                    await s.commit()
            except asyncio.CancelledError:
                self.pending[:0] = rows  # shutdown interrupted this write: close() writes them again
                raise
            except Exception as exc:
                # Keep them for the next round rather than lose them; the store may be back by then.
                log.error("writing %d usage records failed: %s", len(rows), type(exc).__name__)
                self.pending[:0] = rows
                return

    async def close(self) -> None:
        """Write what is pending. A write under way is let finish rather than cancelled: cancelled inside its
        commit, it may have landed all the same, and writing those rows again would count them twice."""
        self.closing = True
        self.wake.set()
        if self.task:
            try:
                await asyncio.wait_for(asyncio.shield(self.task), CLOSE_WAIT)
            except TimeoutError:  # a store that does not answer: give up on that write, keep its rows
                self.task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self.task
        await self.flush()
