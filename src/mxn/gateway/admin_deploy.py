"""/admin/nodes and /admin/managed: the machines and chips placement sees, and managed deployments (the
HTTP form of `mxn deploy|scale|undeploy|deployments`)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.responses import Response

from mxn.deploy import service
from mxn.errors import NotFound
from mxn.gateway.admin import _commit, _state
from mxn.gateway.auth import admin_principal
from mxn.gateway.responses import json_response
from mxn.store.models import Deployment, ManagedDeployment

router = APIRouter(prefix="/admin", tags=["admin"], dependencies=[Depends(admin_principal)])


class ScaleBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    replicas: int = Field(ge=0, le=service.MAX_REPLICAS)


@router.get("/nodes")
async def nodes(request: Request) -> Response:
    """Nodes with their chips (detected devices, or Ray resources) and the replicas placed on each."""
    controller = _state(request).deployments
    data = await controller.placement.nodes()
    return json_response({"placement": controller.placement.kind, "leader": controller.lease.held, "data": data})


async def _views(request: Request, s: AsyncSession) -> list[dict[str, Any]]:
    controller = _state(request).deployments
    return await service.views(s, controller.views, controller.unplaced)


async def _view(request: Request, managed_id: int) -> dict[str, object]:
    async with _state(request).sessions() as s:
        found = [v for v in await _views(request, s) if v["id"] == managed_id]
    if not found:
        raise NotFound(f"no managed deployment '{managed_id}'", code="managed_not_found")
    return found[0]


@router.get("/managed")
async def list_managed(request: Request) -> Response:
    async with _state(request).sessions() as s:
        return json_response({"data": await _views(request, s)})


@router.post("/managed", status_code=201)
async def deploy(body: service.DeployRequest, request: Request) -> Response:
    async with _state(request).sessions() as s:
        row = await service.deploy(s, body)
        await _commit(request, s, action="deploy")
    _state(request).deployments.wake()
    return json_response(await _view(request, row.id), 201)


@router.get("/managed/{managed_id}")
async def get_managed(managed_id: int, request: Request) -> Response:
    return json_response(await _view(request, managed_id))


async def _names(request: Request, managed_id: int) -> tuple[str, str, str]:
    """(model, chip, engine) of a managed deployment."""
    async with _state(request).sessions() as s:
        q = (
            select(Deployment.model, Deployment.chip, ManagedDeployment.engine)
            .join(ManagedDeployment)
            .where(ManagedDeployment.id == managed_id)
        )
        row = (await s.execute(q)).first()
    if row is None:
        raise NotFound(f"no managed deployment '{managed_id}'", code="managed_not_found")
    return row[0], row[1], row[2]


@router.patch("/managed/{managed_id}")
async def scale(managed_id: int, body: ScaleBody, request: Request) -> Response:
    model, chip, engine = await _names(request, managed_id)
    async with _state(request).sessions() as s:
        await service.scale(s, model, chip, body.replicas, engine)
        await _commit(request, s, action="scale")
    _state(request).deployments.wake()
    return json_response(await _view(request, managed_id))


@router.delete("/managed/{managed_id}")
async def undeploy(managed_id: int, request: Request) -> Response:
    model, chip, engine = await _names(request, managed_id)
    async with _state(request).sessions() as s:
        await service.undeploy(s, model, chip, engine)
        await _commit(request, s, action="undeploy")
    _state(request).deployments.wake()
    return json_response(await _view(request, managed_id))
