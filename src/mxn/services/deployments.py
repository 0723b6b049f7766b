"""Deployments, the cells of the M×N grid (`model@chip`): `deployment.create`, `deployment.update`,
`deployment.delete`; switching moderation is `moderation.on|off` (see `services.moderation`)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from mxn import audit
from mxn.audit import Actor
from mxn.catalog.apply import endpoint_columns, rule_columns
from mxn.catalog.schema import DeploymentSpec
from mxn.errors import Conflict, InvalidRequest, NotFound
from mxn.services import moderation
from mxn.services.common import assign, commit, get, listing
from mxn.store.models import Chip, Deployment, Endpoint, Model, ModerationRule


def name_of(row: Deployment) -> str:
    return f"{row.model}@{row.chip}"


async def by_name(s: AsyncSession, name: str) -> Deployment:
    """The deployment called `model@chip`."""
    model, _, chip = name.partition("@")
    row = (await s.execute(select(Deployment).where(Deployment.model == model, Deployment.chip == chip))).scalar()
    if row is None:
        raise NotFound(f"no deployment '{name}' (write it as model@chip)", code="deployment_not_found")
    return row


async def by_id(s: AsyncSession, dep_id: int) -> Deployment:
    return await get(s, Deployment, dep_id, "deployment")


async def every(s: AsyncSession) -> list[Deployment]:
    return await listing(s, Deployment)


async def names(s: AsyncSession) -> dict[int, str]:
    """Every deployment's `model@chip` by its id."""
    return {d.id: name_of(d) for d in (await s.execute(select(Deployment))).scalars()}


async def create(s: AsyncSession, actor: Actor, spec: DeploymentSpec) -> Deployment:
    """A cell with its endpoints and its own rule set, if `spec` has them; made unmoderated, it is logged as
    `moderation.off` as well."""
    await get(s, Model, spec.model, "model")
    await get(s, Chip, spec.chip, "chip")
    taken = select(Deployment.id).where(Deployment.model == spec.model, Deployment.chip == spec.chip)
    if (await s.execute(taken)).first():
        raise Conflict(f"deployment {spec.model}@{spec.chip} already exists")
    row = Deployment(
        model=spec.model,
        chip=spec.chip,
        moderation=spec.moderated,
        price_input=spec.price.input,
        price_output=spec.price.output,
        disclosure=spec.disclosure,
        **spec.limits.model_dump(),
    )
    s.add(row)
    await s.flush()
    for endpoint in spec.endpoints:
        s.add(Endpoint(deployment_id=row.id, source="admin", **endpoint_columns(endpoint)))
    if spec.own_rules is not None:
        s.add(ModerationRule(deployment_id=row.id, source="admin", **rule_columns(spec.own_rules)))
    details = spec.model_dump(mode="json", exclude_unset=True)
    audit.record(s, actor, "deployment.create", f"dep_id={row.id}", details)
    if not row.moderation:
        moderation.record(s, actor, row)
    await commit(s)
    return row


async def update(
    s: AsyncSession, actor: Actor, row: Deployment, changes: dict[str, Any], *, confirm: bool = False
) -> Deployment:
    """`changes` may hold `price` ({input, output}), `limits` (columns: rpm, rpd, tpm, concurrency), `disclosure`
    and `moderation`; turning moderation off must be confirmed (SPEC §4)."""
    on = changes.get("moderation")
    if on is False and row.moderation and not confirm:
        raise InvalidRequest(
            f'turning moderation off for {row.model}@{row.chip} needs "confirm": true',
            param="confirm",
            code="confirmation_required",
        )
    if "price" in changes:
        row.price_input, row.price_output = changes["price"]["input"], changes["price"]["output"]
    assign(row, changes.get("limits", {}))
    if "disclosure" in changes:
        row.disclosure = changes["disclosure"]
    switched = on is not None and moderation.switch(s, actor, row, on)
    rest = {k: v for k, v in changes.items() if k != "moderation"}
    if rest or not switched:  # a bare switch has its own record; every other change, or none, has this one
        audit.record(s, actor, "deployment.update", f"dep_id={row.id}", rest)
    await commit(s)
    return row


async def delete(s: AsyncSession, actor: Actor, row: Deployment) -> None:
    audit.record(s, actor, "deployment.delete", f"dep_id={row.id}", {"deployment": name_of(row)})
    await s.delete(row)
    await commit(s)
