"""/admin/codes: redemption codes, made in batches and shown once."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from mxn import services
from mxn.gateway.admin.common import actor, number, state
from mxn.gateway.admin.schemas import CodesCreate
from mxn.gateway.admin.views import code_view
from mxn.wire import json_response

router = APIRouter()


@router.post("/codes", status_code=201)
async def create_codes(body: CodesCreate, request: Request) -> Response:
    st = state(request)
    async with st.sessions() as s:
        created = await services.codes.create(s, actor(request), st.secret, body.quota, body.count)
    return json_response({"quota": body.quota, "codes": created}, 201)


@router.get("/codes")
async def list_codes(request: Request) -> Response:
    async with state(request).sessions() as s:
        return json_response({"data": [code_view(c) for c in await services.codes.every(s)]})


@router.get("/codes/{item_id}")
async def get_code(item_id: str, request: Request) -> Response:
    async with state(request).sessions() as s:
        return json_response(code_view(await services.codes.by_id(s, number(item_id, "code"))))


@router.delete("/codes/{item_id}")
async def delete_code(item_id: str, request: Request) -> Response:
    code_id = number(item_id, "code")
    async with state(request).sessions() as s:
        await services.codes.delete(s, actor(request), await services.codes.by_id(s, code_id))
    return json_response({"id": code_id, "deleted": True})
