"""/admin/moderation: rule sets, global or a deployment's own (switching a deployment's moderation on or off is
PATCH /admin/deployments/{id})."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from mxn import services
from mxn.gateway.admin.common import actor, state
from mxn.gateway.admin.schemas import RuleSetCreate, RuleSetPatch
from mxn.gateway.admin.views import rule_set_view
from mxn.wire import json_response

router = APIRouter()


@router.get("/moderation")
async def list_rule_sets(request: Request) -> Response:
    async with state(request).sessions() as s:
        names = await services.deployments.names(s)
        return json_response({"data": [rule_set_view(r, names) for r in await services.moderation.rule_sets(s)]})


@router.post("/moderation", status_code=201)
async def create_rule_set(body: RuleSetCreate, request: Request) -> Response:
    st = state(request)
    async with st.sessions() as s:
        deployment = await services.deployments.by_name(s, body.deployment) if body.deployment else None
        row = await services.moderation.create_rules(s, actor(request), body, deployment)
        await st.reload_catalog()
        return json_response(rule_set_view(row, await services.deployments.names(s)), 201)


@router.get("/moderation/{rule_id}")
async def get_rule_set(rule_id: int, request: Request) -> Response:
    async with state(request).sessions() as s:
        row = await services.moderation.rule_set(s, rule_id)
        return json_response(rule_set_view(row, await services.deployments.names(s)))


@router.patch("/moderation/{rule_id}")
async def patch_rule_set(rule_id: int, body: RuleSetPatch, request: Request) -> Response:
    st = state(request)
    async with st.sessions() as s:
        row = await services.moderation.rule_set(s, rule_id)
        await services.moderation.update_rules(s, actor(request), row, body.changes())
        await st.reload_catalog()
        return json_response(rule_set_view(row, await services.deployments.names(s)))


@router.delete("/moderation/{rule_id}")
async def delete_rule_set(rule_id: int, request: Request) -> Response:
    st = state(request)
    async with st.sessions() as s:
        await services.moderation.delete_rules(s, actor(request), await services.moderation.rule_set(s, rule_id))
        await st.reload_catalog()
        return json_response({"id": rule_id, "deleted": True})
