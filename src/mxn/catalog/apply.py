"""Write a catalogue file into the store. Re-applying the same file changes nothing."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any, TypeVar

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from mxn.catalog.schema import CHIP_TYPES, CatalogFile, EndpointSpec
from mxn.store.models import Chip, Deployment, Endpoint, Model

T = TypeVar("T")


def concrete_chip(chip: str) -> str:
    """`auto` is the chip this machine's torch sees; without torch, the CPU."""
    if chip != "auto":
        return chip
    try:
        from mxn.engines.local.loader import detect_chip
    except ImportError:
        return "cpu"
    return detect_chip()


def endpoint_columns(spec: EndpointSpec) -> dict[str, Any]:
    data = spec.model_dump()
    data["timeouts"] = spec.timeouts.model_dump(exclude_none=True) if spec.timeouts else None
    return data


def _identity(engine: str, url: str | None, path: str | None, upstream_model: str | None) -> tuple[Any, ...]:
    return (engine, url, path, upstream_model)


def _assign(row: object, values: dict[str, Any]) -> bool:
    changed = False
    for k, v in values.items():
        if getattr(row, k) != v:
            setattr(row, k, v)
            changed = True
    return changed


async def apply_catalog(s: AsyncSession, spec: CatalogFile) -> dict[str, int]:
    """Upsert chips, models, deployments; the file owns its endpoints (`source='catalog'`)."""
    counts = {"created": 0, "updated": 0, "removed": 0}

    chips = {c.id: c for c in (await s.execute(select(Chip))).scalars()}
    wanted_chips = {c.id: {"name": c.name or CHIP_TYPES.get(c.id, c.id), "alias": c.alias} for c in spec.chips}
    for d in spec.deployments:
        d.chip = concrete_chip(d.chip)
        wanted_chips.setdefault(d.chip, {"name": CHIP_TYPES[d.chip], "alias": None})
    for chip_id, chip_values in wanted_chips.items():
        _upsert(s, chips.get(chip_id), partial(Chip, id=chip_id), chip_values, counts)

    models = {m.name: m for m in (await s.execute(select(Model))).scalars()}
    for m in spec.models:
        values: dict[str, Any] = m.model_dump(exclude={"name"})
        _upsert(s, models.get(m.name), partial(Model, name=m.name), values, counts)
    await s.flush()

    deployments = {(d.model, d.chip): d for d in (await s.execute(select(Deployment))).scalars()}
    for d in spec.deployments:
        values = {
            "moderation": d.moderation,
            "price_input": d.price.input,
            "price_output": d.price.output,
            "disclosure": d.disclosure,
            **d.limits.model_dump(),
        }
        row = _upsert(
            s,
            deployments.get((d.model, d.chip)),
            partial(Deployment, model=d.model, chip=d.chip),
            values,
            counts,
        )
        await s.flush()
        await _apply_endpoints(s, row.id, d.endpoints, counts)
    await s.commit()
    return counts


def _upsert(
    s: AsyncSession,
    row: T | None,
    make: Callable[..., T],
    values: dict[str, Any],
    counts: dict[str, int],
) -> T:
    if row is None:
        row = make(**values)
        s.add(row)
        counts["created"] += 1
    elif _assign(row, values):
        counts["updated"] += 1
    return row


async def _apply_endpoints(
    s: AsyncSession, deployment_id: int, specs: list[EndpointSpec], counts: dict[str, int]
) -> None:
    existing = (
        await s.execute(select(Endpoint).where(Endpoint.deployment_id == deployment_id, Endpoint.source == "catalog"))
    ).scalars()
    by_identity = {_identity(e.engine, e.url, e.path, e.upstream_model): e for e in existing}
    for spec in specs:
        values = endpoint_columns(spec)
        row = by_identity.pop(_identity(spec.engine, spec.url, spec.path, spec.upstream_model), None)
        if row is None:
            s.add(Endpoint(deployment_id=deployment_id, source="catalog", **values))
            counts["created"] += 1
        elif _assign(row, values):
            counts["updated"] += 1
    for gone in by_identity.values():
        await s.delete(gone)
        counts["removed"] += 1
