"""/admin/deployments, /admin/endpoints and /admin/cells: the cells of the grid, their upstreams, and how they run
now. Every change serves at once: the running catalogue is reloaded after it."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from mxn import services
from mxn.catalog.schema import DeploymentSpec, EndpointSpec
from mxn.gateway.admin.common import actor, number, state
from mxn.gateway.admin.schemas import DeploymentPatch, EndpointCreate, EndpointPatch
from mxn.gateway.admin.views import deployment_view, endpoint_view
from mxn.wire import json_response

router = APIRouter()


@router.post("/deployments", status_code=201)
async def create_deployment(body: DeploymentSpec, request: Request) -> Response:
    st = state(request)
    async with st.sessions() as s:
        row = await services.deployments.create(s, actor(request), body)
        await st.reload_catalog()
        return json_response(deployment_view(row), 201)


@router.patch("/deployments/{dep_id}")
async def patch_deployment(dep_id: int, body: DeploymentPatch, request: Request) -> Response:
    st = state(request)
    async with st.sessions() as s:
        row = await services.deployments.by_id(s, dep_id)
        await services.deployments.update(s, actor(request), row, body.changes(), confirm=body.confirm)
        await st.reload_catalog()
        return json_response(deployment_view(row))


def _live(request: Request, view: dict[str, Any]) -> dict[str, Any]:
    """The stored endpoint plus what its engine reports now (the embedded engine's queue), if anything."""
    st = state(request)
    info = st.catalog.endpoint(view["id"])
    if info is None:
        return {**view, "live": None, "health": None}
    health = st.router.health.get(info.id)
    cell = next(c for c in st.catalog.cells.values() if info in c.endpoints)
    return {
        **view,
        "effective_state": st.router.state(cell, info),
        "live": info.engine.stats() or None,
        "health": health.view() if health else None,
    }


@router.get("/endpoints")
async def list_endpoints(request: Request) -> Response:
    async with state(request).sessions() as s:
        rows = await services.endpoints.every(s)
        return json_response({"data": [_live(request, endpoint_view(e, d)) for e, d in rows]})


@router.post("/endpoints", status_code=201)
async def create_endpoint(body: EndpointCreate, request: Request) -> Response:
    st = state(request)
    async with st.sessions() as s:
        spec = EndpointSpec.model_validate(body.model_dump(exclude={"deployment"}, exclude_unset=True))
        row = await services.endpoints.create(s, actor(request), body.deployment, spec)
        await st.reload_catalog()
        return json_response(endpoint_view(row, body.deployment), 201)


@router.get("/endpoints/{ep_id}")
async def get_endpoint(ep_id: int, request: Request) -> Response:
    async with state(request).sessions() as s:
        return json_response(_live(request, endpoint_view(*await services.endpoints.with_deployment(s, ep_id))))


@router.patch("/endpoints/{ep_id}")
async def patch_endpoint(ep_id: int, body: EndpointPatch, request: Request) -> Response:
    st = state(request)
    async with st.sessions() as s:
        row, dep = await services.endpoints.with_deployment(s, ep_id)
        await services.endpoints.update(s, actor(request), row, body.changes())
        await st.reload_catalog()
        return json_response(endpoint_view(row, dep))


@router.get("/cells")
async def cells(request: Request) -> Response:
    """The M×N grid as it runs now: each cell's effective state and its endpoints' health."""
    st = state(request)
    data = []
    for cell in st.catalog.cells.values():
        endpoints = []
        for e in cell.endpoints:
            health = st.router.health.get(e.id)
            endpoints.append(
                {
                    "id": e.id,
                    "state": st.router.state(cell, e),
                    "configured_state": e.state,
                    "weight": e.weight,
                    "priority": e.priority,
                    "health": health.view() if health else None,
                }
            )
        data.append(
            {
                "id": cell.id,
                "name": cell.name,
                "model": cell.model.name,
                "chip": cell.chip.id,
                "state": st.router.cell_state(cell),
                "endpoints": endpoints,
            }
        )
    return json_response({"data": data})


@router.get("/deployments")
async def list_deployments(request: Request) -> Response:
    async with state(request).sessions() as s:
        return json_response({"data": [deployment_view(d) for d in await services.deployments.every(s)]})


@router.get("/deployments/{item_id}")
async def get_deployment(item_id: str, request: Request) -> Response:
    async with state(request).sessions() as s:
        return json_response(deployment_view(await services.deployments.by_id(s, number(item_id, "deployment"))))


@router.delete("/deployments/{item_id}")
async def delete_deployment(item_id: str, request: Request) -> Response:
    dep_id = number(item_id, "deployment")
    st = state(request)
    async with st.sessions() as s:
        await services.deployments.delete(s, actor(request), await services.deployments.by_id(s, dep_id))
        await st.reload_catalog()
    return json_response({"id": dep_id, "deleted": True})


@router.delete("/endpoints/{item_id}")
async def delete_endpoint(item_id: str, request: Request) -> Response:
    ep_id = number(item_id, "endpoint")
    st = state(request)
    async with st.sessions() as s:
        await services.endpoints.delete(s, actor(request), await services.endpoints.by_id(s, ep_id))
        await st.reload_catalog()
    return json_response({"id": ep_id, "deleted": True})
