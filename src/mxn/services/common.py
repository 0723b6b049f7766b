"""What the services share: finding a row or saying it is missing, assigning changes, committing."""

from __future__ import annotations

from typing import Any, TypeVar

from sqlalchemy import inspect, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from mxn.errors import Conflict, NotFound
from mxn.store.models import Base

T = TypeVar("T", bound=Base)


async def get(s: AsyncSession, table: type[T], ident: Any, what: str) -> T:
    row = await s.get(table, ident)
    if row is None:
        raise NotFound(f"no {what} '{ident}'", code=f"{what}_not_found")
    return row


async def listing(s: AsyncSession, table: type[T]) -> list[T]:
    """Every row, in primary-key order."""
    return list((await s.execute(select(table).order_by(*inspect(table).primary_key))).scalars())


def assign(row: object, changes: dict[str, Any]) -> None:
    for name, value in changes.items():
        setattr(row, name, value)


async def commit(s: AsyncSession) -> None:
    """Commit a change with its audit record; a broken constraint is the caller's conflict, not a crash."""
    try:
        await s.commit()
    except IntegrityError:
        await s.rollback()
        raise Conflict("that would clash with an existing object or leave a dangling reference")
