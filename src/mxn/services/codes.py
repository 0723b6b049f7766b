"""Redemption codes: `code.create`, `code.delete` (redeeming one is the user's, in `accounts.codes`)."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from mxn import audit
from mxn.accounts import codes
from mxn.audit import Actor
from mxn.services.common import commit, get, listing
from mxn.store.models import Code


async def by_id(s: AsyncSession, code_id: int) -> Code:
    return await get(s, Code, code_id, "code")


async def every(s: AsyncSession) -> list[Code]:
    return await listing(s, Code)


async def create(s: AsyncSession, actor: Actor, secret: bytes, quota: int, count: int) -> list[str]:
    """`count` new codes worth `quota` tokens each, shown only now."""
    # Recorded first: create_codes commits, and so takes the record with the codes in one transaction.
    audit.record(s, actor, "code.create", "", {"quota": quota, "count": count})
    return await codes.create_codes(s, secret, quota, count)


async def delete(s: AsyncSession, actor: Actor, code: Code) -> None:
    audit.record(s, actor, "code.delete", f"code_id={code.id}", {"prefix": code.prefix})
    await s.delete(code)
    await commit(s)
