"""Managed deployments, replicas the gateway starts itself: `managed.deploy`, `managed.scale`,
`managed.undeploy`. The controller of the gateway that holds the lease carries them out."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from mxn import audit
from mxn.audit import Actor
from mxn.deploy import service
from mxn.errors import NotFound
from mxn.services.common import commit
from mxn.store.models import Deployment, ManagedDeployment


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


async def deploy(s: AsyncSession, actor: Actor, req: service.DeployRequest) -> ManagedDeployment:
    row = await service.deploy(s, req)
    audit.record(s, actor, "managed.deploy", f"managed_id={row.id}", req.model_dump(exclude_none=True))
    await commit(s)
    return row


async def scale(
    s: AsyncSession, actor: Actor, model: str, chip: str, replicas: int, engine: str | None = None
) -> ManagedDeployment:
    row = await service.scale(s, model, chip, replicas, engine)
    audit.record(s, actor, "managed.scale", f"managed_id={row.id}", {"replicas": replicas})
    await commit(s)
    return row


async def undeploy(
    s: AsyncSession, actor: Actor, model: str, chip: str, engine: str | None = None
) -> ManagedDeployment:
    row = await service.undeploy(s, model, chip, engine)
    audit.record(s, actor, "managed.undeploy", f"managed_id={row.id}")
    await commit(s)
    return row
