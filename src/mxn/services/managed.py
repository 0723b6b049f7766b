"""Managed deployments, replicas the gateway starts itself: `managed.deploy`, `managed.scale`,
`managed.undeploy`. The controller of the gateway that holds the lease carries them out."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from mxn import audit
from mxn.audit import Actor
from mxn.catalog.schema import CHIP_TYPES
from mxn.deploy import recipes
from mxn.deploy.service import MAX_REPLICAS, DeployRequest, served_name
from mxn.errors import Conflict, InvalidRequest, NotFound
from mxn.services import deployments
from mxn.services.common import commit
from mxn.store.models import Chip, Deployment, ManagedDeployment, Model


async def cell_of(s: AsyncSession, managed_id: int) -> tuple[str, str, str]:
    """(model, chip, engine) of a managed deployment."""
    q = (
        select(Deployment.model, Deployment.chip, ManagedDeployment.engine)
        .join(ManagedDeployment)
        .where(ManagedDeployment.id == managed_id)
    )
    row = (await s.execute(q)).first()
    if row is None:
        raise NotFound(f"no managed deployment '{managed_id}'", code="managed_not_found")
    return row[0], row[1], row[2]


async def deploy(s: AsyncSession, actor: Actor, req: DeployRequest) -> ManagedDeployment:
    row = await _deploy(s, req)
    audit.record(s, actor, "managed.deploy", f"managed_id={row.id}", req.model_dump(exclude_none=True))
    await commit(s)
    return row


async def scale(
    s: AsyncSession, actor: Actor, model: str, chip: str, replicas: int, engine: str | None = None
) -> ManagedDeployment:
    row = await _scale(s, model, chip, replicas, engine)
    audit.record(s, actor, "managed.scale", f"managed_id={row.id}", {"replicas": replicas})
    await commit(s)
    return row


async def undeploy(
    s: AsyncSession, actor: Actor, model: str, chip: str, engine: str | None = None
) -> ManagedDeployment:
    row = await _undeploy(s, model, chip, engine)
    audit.record(s, actor, "managed.undeploy", f"managed_id={row.id}")
    await commit(s)
    return row


async def _cell(s: AsyncSession, model: str, chip: str) -> Deployment:
    """The cell, found as every writer finds it."""
    try:
        return await deployments.by_name(s, f"{model}@{chip}")
    except NotFound:  # `mxn scale|undeploy` say it in their own words (tests and scripts match them)
        raise NotFound(f"deployment {model}@{chip} does not exist", code="deployment_not_found") from None


async def _managed(s: AsyncSession, model: str, chip: str, engine: str | None = None) -> ManagedDeployment:
    """The managed deployment of `engine` in the cell; without `engine`, the cell's only one."""
    cell = await _cell(s, model, chip)
    rows = (await s.execute(select(ManagedDeployment).where(ManagedDeployment.deployment_id == cell.id))).scalars()
    found = [r for r in rows if engine in (None, r.engine)]
    if not found:
        which = f" with engine '{engine}'" if engine else ""
        raise NotFound(f"{model}@{chip} has no managed deployment{which} (mxn deploy makes one)", code="not_managed")
    if len(found) > 1:
        engines = ", ".join(sorted(r.engine for r in found))
        raise InvalidRequest(f"{model}@{chip} runs several engines ({engines}); say which one", param="engine")
    return found[0]


async def _deploy(s: AsyncSession, req: DeployRequest) -> ManagedDeployment:
    """Record a managed deployment (its model, chip and cell are made if missing); replicas start shortly."""
    engine = req.engine or ("mxn" if req.chip == "cpu" else "vllm")
    recipes.check(engine, req.chip)
    name = req.name or served_name(req.source)
    if await s.get(Chip, req.chip) is None:
        if req.chip not in CHIP_TYPES:
            raise InvalidRequest(f"unknown chip '{req.chip}'; add it to the catalogue first", param="chip")
        s.add(Chip(id=req.chip, name=CHIP_TYPES[req.chip]))
    if await s.get(Model, name) is None:
        s.add(Model(name=name, kind=req.kind, context_length=req.context_length))
    await s.flush()
    cell = (await s.execute(select(Deployment).where(Deployment.model == name, Deployment.chip == req.chip))).scalar()
    created = cell is None
    if cell is None:
        cell = Deployment(model=name, chip=req.chip)
        s.add(cell)
        await s.flush()
    elif (
        await s.execute(
            select(ManagedDeployment).where(
                ManagedDeployment.deployment_id == cell.id, ManagedDeployment.engine == engine
            )
        )
    ).scalar():
        raise Conflict(f"{name}@{req.chip} runs on {engine} already; `mxn scale` changes its replicas")
    row = ManagedDeployment(
        deployment_id=cell.id,
        engine=engine,
        source=req.source,
        replicas=req.replicas,
        devices=req.devices,
        memory_fraction=req.memory_fraction,
        state="deploying",
        created_cell=created,
    )
    s.add(row)
    await s.flush()
    return row


async def _scale(s: AsyncSession, model: str, chip: str, replicas: int, engine: str | None) -> ManagedDeployment:
    if not 0 <= replicas <= MAX_REPLICAS:
        raise InvalidRequest(f"replicas is between 0 and {MAX_REPLICAS}", param="replicas")
    row = await _managed(s, model, chip, engine)
    if row.state == "removing":
        raise Conflict(f"{model}@{chip} is being undeployed")
    row.replicas = replicas
    return row


async def _undeploy(s: AsyncSession, model: str, chip: str, engine: str | None) -> ManagedDeployment:
    row = await _managed(s, model, chip, engine)
    row.state = "removing"
    return row
