"""Write a catalogue file into the store. Re-applying the same file changes nothing."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial
from typing import Any, TypeVar

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from mxn.catalog.schema import CHIP_TYPES, CatalogFile, EndpointSpec, ModerationSpec
from mxn.store.models import Chip, Deployment, Endpoint, Model, ModerationRule

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
    rule_sets: dict[int | None, ModerationSpec | None] = {None: spec.moderation}
    for d in spec.deployments:
        values = {
            "moderation": d.moderated,
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
        rule_sets[row.id] = d.own_rules
    await _apply_rule_sets(s, rule_sets, counts)
    await s.commit()
    return counts


def rule_columns(spec: ModerationSpec) -> dict[str, Any]:
    """A rule set's stored form; keyword files have been read into `keywords` by the loader."""
    classifier = spec.classifier.model_dump() if spec.classifier else None
    return {"name": spec.name, "keywords": spec.keywords, "regexes": spec.regexes, "classifier": classifier}


async def _apply_rule_sets(
    s: AsyncSession, wanted: dict[int | None, ModerationSpec | None], counts: dict[str, int]
) -> None:
    """The file's rule sets (global, and per deployment it lists), each stored once with `source='catalog'`."""
    existing = {
        r.deployment_id: r
        for r in (await s.execute(select(ModerationRule).where(ModerationRule.source == "catalog"))).scalars()
    }
    for deployment_id, spec in wanted.items():
        row = existing.pop(deployment_id, None)
        if spec is None:
            if row is not None:
                await s.delete(row)
                counts["removed"] += 1
            continue
        values = rule_columns(spec)
        if row is None:
            s.add(ModerationRule(deployment_id=deployment_id, source="catalog", **values))
            counts["created"] += 1
        elif _assign(row, values):
            row.updated_at = datetime.now(UTC)
            counts["updated"] += 1


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
