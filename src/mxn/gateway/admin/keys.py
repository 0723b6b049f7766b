"""/admin/keys: anyone's keys, with the limits and quota only an admin sets."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from mxn import services
from mxn.accounts.service import KEY_FIELDS, key_view
from mxn.gateway.admin.common import actor, number, state
from mxn.gateway.admin.schemas import KeyCreate, KeyPatch
from mxn.wire import json_response

router = APIRouter()


@router.get("/keys")
async def list_keys(request: Request, user: str | None = None) -> Response:
    async with state(request).sessions() as s:
        return json_response({"data": [key_view(k, n) for k, n in await services.keys.listing(s, user)]})


@router.post("/keys", status_code=201)
async def create_key(body: KeyCreate, request: Request) -> Response:
    st = state(request)
    async with st.sessions() as s:
        user = await services.users.by_name(s, body.user)
        limits = body.model_dump(include={"rpm", "rpd", "tpm", "concurrency", "quota"})
        row, key = await services.keys.create(
            s, actor(request), st.secret, user, **body.model_dump(include=KEY_FIELDS), limits=limits
        )
        return json_response({**key_view(row, user.name), "key": key}, 201)


@router.patch("/keys/{key_id}")
async def patch_key(key_id: int, body: KeyPatch, request: Request) -> Response:
    async with state(request).sessions() as s:
        row = await services.keys.by_id(s, key_id)
        await services.keys.update(s, actor(request), row, body.model_dump(exclude_unset=True))
        return json_response(key_view(row))


@router.post("/keys/{key_id}/rotate")
async def rotate_key(key_id: int, request: Request) -> Response:
    st = state(request)
    async with st.sessions() as s:
        row = await services.keys.by_id(s, key_id)
        key = await services.keys.rotate(s, actor(request), st.secret, row)
        return json_response({**key_view(row), "key": key})


@router.get("/keys/{item_id}")
async def get_key(item_id: str, request: Request) -> Response:
    async with state(request).sessions() as s:
        return json_response(key_view(await services.keys.by_id(s, number(item_id, "key"))))


@router.delete("/keys/{item_id}")
async def delete_key(item_id: str, request: Request) -> Response:
    key_id = number(item_id, "key")
    async with state(request).sessions() as s:
        await services.keys.delete(s, actor(request), await services.keys.by_id(s, key_id))
    return json_response({"id": key_id, "deleted": True})
