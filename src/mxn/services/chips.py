"""Chips, the catalogue's N: `chip.create`, `chip.update`, `chip.delete`."""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from mxn import audit
from mxn.audit import Actor
from mxn.catalog.schema import ChipSpec
from mxn.errors import Conflict
from mxn.services.common import assign, commit, get, listing
from mxn.store.models import Chip


async def by_id(s: AsyncSession, chip_id: str) -> Chip:
    return await get(s, Chip, chip_id, "chip")


async def every(s: AsyncSession) -> list[Chip]:
    return await listing(s, Chip)


async def create(s: AsyncSession, actor: Actor, spec: ChipSpec) -> Chip:
    if await s.get(Chip, spec.id):
        raise Conflict(f"chip '{spec.id}' already exists")
    chip = Chip(id=spec.id, name=spec.name or spec.id, alias=spec.alias)
    s.add(chip)
    audit.record(s, actor, "chip.create", f"chip_id={chip.id}", spec.model_dump(exclude_unset=True))
    await commit(s)
    return chip


async def update(s: AsyncSession, actor: Actor, chip: Chip, changes: dict[str, Any]) -> Chip:
    """`changes`: `name`, `alias`."""
    assign(chip, changes)
    audit.record(s, actor, "chip.update", f"chip_id={chip.id}", changes)
    await commit(s)
    return chip


async def delete(s: AsyncSession, actor: Actor, chip: Chip) -> None:
    audit.record(s, actor, "chip.delete", f"chip_id={chip.id}")
    await s.delete(chip)
    await commit(s)
