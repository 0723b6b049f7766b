"""Models, the catalogue's M: `model.create`, `model.update`, `model.delete`."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from mxn import audit
from mxn.audit import Actor
from mxn.catalog.schema import ModelSpec
from mxn.errors import Conflict
from mxn.services.common import assign, commit, get, listing
from mxn.store.models import Model


async def by_name(s: AsyncSession, name: str) -> Model:
    return await get(s, Model, name, "model")


async def every(s: AsyncSession) -> list[Model]:
    return await listing(s, Model)


async def create(s: AsyncSession, actor: Actor, spec: ModelSpec) -> Model:
    if await s.get(Model, spec.name):
        raise Conflict(f"model '{spec.name}' already exists")
    model = Model(**spec.model_dump())
    s.add(model)
    audit.record(s, actor, "model.create", f"model={model.name}", spec.model_dump(exclude_unset=True))
    await commit(s)
    return model


async def update(s: AsyncSession, actor: Actor, model: Model, spec: ModelSpec) -> Model:
    """The model's columns become `spec`'s, validated whole (a patch merged with what is stored); the name stays."""
    columns = spec.model_dump(exclude={"name"})
    changed = {k: v for k, v in columns.items() if getattr(model, k) != v}
    assign(model, columns)
    audit.record(s, actor, "model.update", f"model={model.name}", changed)
    await commit(s)
    return model


async def delete(s: AsyncSession, actor: Actor, model: Model) -> None:
    audit.record(s, actor, "model.delete", f"model={model.name}")
    await s.delete(model)
    await commit(s)
