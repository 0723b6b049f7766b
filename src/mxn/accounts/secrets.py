"""The server secret that keys API-key hashes: `MXN_SECRET`, else made once and kept in the store."""

from __future__ import annotations

import secrets as _random

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from mxn.store.models import KV

_KEY = "secret"


async def load_secret(sessions: async_sessionmaker[AsyncSession], configured: str | None) -> bytes:
    if configured:
        return configured.encode()
    async with sessions() as s:
        row = await s.get(KV, _KEY)
        if row is not None:
            return row.value.encode()
        s.add(KV(key=_KEY, value=_random.token_hex(32)))
        try:
            await s.commit()
        except IntegrityError:
            # Another replica or CLI made it first: use theirs, so every process agrees.
            await s.rollback()
        value = (await s.execute(select(KV.value).where(KV.key == _KEY))).scalar_one()
        return value.encode()
