"""/admin/nodes and /admin/managed: the machines and chips placement sees, and managed deployments (the
HTTP form of `mxn deploy|scale|undeploy|deployments`)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.responses import Response

from mxn import services
from mxn.deploy import service
from mxn.errors import NotFound
from mxn.gateway.admin.common import actor, state
from mxn.gateway.admin.schemas import ScaleBody
from mxn.wire import json_response

router = APIRouter()


@router.get("/nodes")
async def nodes(request: Request) -> Response:
    """Nodes with their chips (detected devices, or Ray resources) and the replicas placed on each."""
    controller = state(request).deployments
    data = await controller.placement.nodes()
    return json_response({"placement": controller.placement.kind, "leader": controller.lease.held, "data": data})


async def _views(request: Request, s: AsyncSession) -> list[dict[str, Any]]:
    controller = state(request).deployments
    return await service.views(s, controller.views, controller.unplaced)


async def _view(request: Request, managed_id: int) -> dict[str, object]:
    async with state(request).sessions() as s:
        found = [v for v in await _views(request, s) if v["id"] == managed_id]
    if not found:
        raise NotFound(f"no managed deployment '{managed_id}'", code="managed_not_found")
    return found[0]


@router.get("/managed")
async def list_managed(request: Request) -> Response:
    async with state(request).sessions() as s:
        return json_response({"data": await _views(request, s)})


@router.post("/managed", status_code=201)
async def deploy(body: service.DeployRequest, request: Request) -> Response:
    st = state(request)
    async with st.sessions() as s:
        row = await services.managed.deploy(s, actor(request), body)
        await st.reload_catalog()
    st.deployments.wake()
    return json_response(await _view(request, row.id), 201)


@router.get("/managed/{managed_id}")
async def get_managed(managed_id: int, request: Request) -> Response:
    return json_response(await _view(request, managed_id))


@router.patch("/managed/{managed_id}")
async def scale(managed_id: int, body: ScaleBody, request: Request) -> Response:
    st = state(request)
    async with st.sessions() as s:
        model, chip, engine = await services.managed.cell_of(s, managed_id)
        await services.managed.scale(s, actor(request), model, chip, body.replicas, engine)
        await st.reload_catalog()
    st.deployments.wake()
    return json_response(await _view(request, managed_id))


@router.delete("/managed/{managed_id}")
async def undeploy(managed_id: int, request: Request) -> Response:
    st = state(request)
    async with st.sessions() as s:
        model, chip, engine = await services.managed.cell_of(s, managed_id)
        await services.managed.undeploy(s, actor(request), model, chip, engine)
        await st.reload_catalog()
    st.deployments.wake()
    return json_response(await _view(request, managed_id))
