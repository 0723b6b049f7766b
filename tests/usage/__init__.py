"""Helpers for the usage tests: a record as admission writes one, and the ids the store holds."""

from __future__ import annotations

from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from mxn.usage import record

Sessions = async_sessionmaker[AsyncSession]


def usage_row(n: int = 0, **values: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "user_id": 1, "key_id": 2, "model": "m", "chip": "c", "endpoint_id": None, "route": "chat",
        "prompt_tokens": n, "completion_tokens": 4, "ttft_ms": None, "latency_ms": 5.0, "status": 200,
        "error": None, "cost": 7,
    }  # fmt: skip
    return record(**(fields | values))


async def stored(sessions: Sessions) -> list[str]:
    """The record ids in the store, one per row."""
    async with sessions() as s:
        return [r for (r,) in (await s.execute(text("SELECT record_id FROM usage"))).all()]
