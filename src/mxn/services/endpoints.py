"""Endpoints, the upstreams of a deployment: `endpoint.create`, `endpoint.update`, `endpoint.delete`."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from mxn import audit
from mxn.audit import Actor
from mxn.catalog.apply import endpoint_columns
from mxn.catalog.schema import EndpointSpec
from mxn.errors import NotFound
from mxn.services import deployments
from mxn.services.common import assign, commit, get
from mxn.store.models import Deployment, Endpoint


async def _rows(s: AsyncSession, where: Any = None) -> list[tuple[Endpoint, str]]:
    q = select(Endpoint, Deployment.model, Deployment.chip).join(Deployment).order_by(Endpoint.id)
    if where is not None:
        q = q.where(where)
    return [(e, f"{m}@{c}") for e, m, c in (await s.execute(q)).all()]


async def every(s: AsyncSession) -> list[tuple[Endpoint, str]]:
    """Every endpoint with its deployment's `model@chip`."""
    return await _rows(s)


async def with_deployment(s: AsyncSession, ep_id: int) -> tuple[Endpoint, str]:
    """The endpoint and its deployment's `model@chip`."""
    rows = await _rows(s, Endpoint.id == ep_id)
    if not rows:
        raise NotFound(f"no endpoint '{ep_id}'", code="endpoint_not_found")
    return rows[0]


async def by_id(s: AsyncSession, ep_id: int) -> Endpoint:
    return await get(s, Endpoint, ep_id, "endpoint")


async def create(s: AsyncSession, actor: Actor, deployment: str, spec: EndpointSpec) -> Endpoint:
    """An endpoint of the deployment called `deployment` (model@chip), kept when a catalogue file is re-applied."""
    dep = await deployments.by_name(s, deployment)
    row = Endpoint(deployment_id=dep.id, source="admin", **endpoint_columns(spec))
    s.add(row)
    await s.flush()
    details = {"deployment": deployment, **spec.model_dump(mode="json", exclude_unset=True)}
    audit.record(s, actor, "endpoint.create", f"ep_id={row.id}", details)
    await commit(s)
    return row


async def update(s: AsyncSession, actor: Actor, row: Endpoint, changes: dict[str, Any]) -> Endpoint:
    """`changes` name columns: `url`, `state`, `weight`, `timeouts` (a dict), ..."""
    assign(row, changes)
    audit.record(s, actor, "endpoint.update", f"ep_id={row.id}", changes)
    await commit(s)
    return row


async def delete(s: AsyncSession, actor: Actor, row: Endpoint) -> None:
    audit.record(s, actor, "endpoint.delete", f"ep_id={row.id}")
    await s.delete(row)
    await commit(s)
