"""Groups (per-key defaults, per-user totals, a price multiplier): `group.create`, `group.update`, `group.delete`."""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from mxn import audit
from mxn.audit import Actor
from mxn.errors import Conflict
from mxn.services.common import assign, commit, get, listing
from mxn.store.models import Group


async def by_name(s: AsyncSession, name: str) -> Group:
    return await get(s, Group, name, "group")


async def every(s: AsyncSession) -> list[Group]:
    return await listing(s, Group)


async def create(s: AsyncSession, actor: Actor, columns: dict[str, Any]) -> Group:
    """`columns` are the group's: `name`, `multiplier`, the limits and `max_keys`."""
    if await s.get(Group, columns["name"]):
        raise Conflict(f"group '{columns['name']}' already exists")
    group = Group(**columns)
    s.add(group)
    audit.record(s, actor, "group.create", f"group={group.name}", columns)
    await commit(s)
    return group


async def update(s: AsyncSession, actor: Actor, group: Group, changes: dict[str, Any]) -> Group:
    assign(group, changes)
    audit.record(s, actor, "group.update", f"group={group.name}", changes)
    await commit(s)
    return group


async def delete(s: AsyncSession, actor: Actor, group: Group) -> None:
    audit.record(s, actor, "group.delete", f"group={group.name}")
    await s.delete(group)
    await commit(s)
