"""Users: `user.create`, `user.update`, `user.delete`."""

from __future__ import annotations

import asyncio
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from mxn import audit
from mxn.accounts import service as accounts
from mxn.accounts.passwords import hash_password
from mxn.audit import Actor
from mxn.services.common import assign, commit, get, listing
from mxn.store.models import User


async def by_id(s: AsyncSession, user_id: int) -> User:
    return await get(s, User, user_id, "user")


async def by_name(s: AsyncSession, name: str) -> User:
    return await accounts.user_by_name(s, name)


async def every(s: AsyncSession) -> list[User]:
    return await listing(s, User)


async def create(
    s: AsyncSession,
    actor: Actor,
    name: str,
    password: str | None,
    *,
    admin: bool = False,
    group: str | None = None,
    quota: int | None = None,
) -> User:
    user = await accounts.create_user(s, name, password, admin=admin, group=group, quota=quota)
    details = {"name": name, "admin": admin, "group": user.group, "quota": quota}
    audit.record(s, actor, "user.create", f"user_id={user.id}", details)
    await commit(s)
    return user


async def update(s: AsyncSession, actor: Actor, user: User, changes: dict[str, Any]) -> User:
    """`changes` name columns (`enabled`, `group`, `quota`, `role`), and `password` in clear, which is hashed."""
    audit.record(s, actor, "user.update", f"user_id={user.id}", changes)
    changes = dict(changes)
    if "password" in changes:
        user.password_hash = await asyncio.to_thread(hash_password, changes.pop("password"))
    assign(user, changes)
    await commit(s)
    return user


async def delete(s: AsyncSession, actor: Actor, user: User) -> None:
    audit.record(s, actor, "user.delete", f"user_id={user.id}", {"name": user.name})
    await s.delete(user)
    await commit(s)
