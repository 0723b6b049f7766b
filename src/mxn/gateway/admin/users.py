"""/admin/users and /admin/groups."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from mxn import services
from mxn.gateway.admin.common import actor, number, state
from mxn.gateway.admin.schemas import GroupBody, GroupPatch, UserCreate, UserPatch
from mxn.gateway.admin.views import group_view, user_view
from mxn.wire import json_response

router = APIRouter()


@router.post("/users", status_code=201)
async def create_user(body: UserCreate, request: Request) -> Response:
    async with state(request).sessions() as s:
        user = await services.users.create(
            s, actor(request), body.name, body.password, admin=body.admin, group=body.group, quota=body.quota
        )
        return json_response(user_view(user), 201)


@router.patch("/users/{user_id}")
async def patch_user(user_id: int, body: UserPatch, request: Request) -> Response:
    async with state(request).sessions() as s:
        user = await services.users.by_id(s, user_id)
        await services.users.update(s, actor(request), user, body.model_dump(exclude_unset=True))
        return json_response(user_view(user))


@router.get("/users")
async def list_users(request: Request) -> Response:
    async with state(request).sessions() as s:
        return json_response({"data": [user_view(u) for u in await services.users.every(s)]})


@router.get("/users/{item_id}")
async def get_user(item_id: str, request: Request) -> Response:
    async with state(request).sessions() as s:
        return json_response(user_view(await services.users.by_id(s, number(item_id, "user"))))


@router.delete("/users/{item_id}")
async def delete_user(item_id: str, request: Request) -> Response:
    user_id = number(item_id, "user")
    async with state(request).sessions() as s:
        await services.users.delete(s, actor(request), await services.users.by_id(s, user_id))
    return json_response({"id": user_id, "deleted": True})


@router.post("/groups", status_code=201)
async def create_group(body: GroupBody, request: Request) -> Response:
    async with state(request).sessions() as s:
        group = await services.groups.create(s, actor(request), body.model_dump())
        return json_response(group_view(group), 201)


@router.patch("/groups/{name}")
async def patch_group(name: str, body: GroupPatch, request: Request) -> Response:
    async with state(request).sessions() as s:
        group = await services.groups.by_name(s, name)
        await services.groups.update(s, actor(request), group, body.model_dump(exclude_unset=True))
        return json_response(group_view(group))


@router.get("/groups")
async def list_groups(request: Request) -> Response:
    async with state(request).sessions() as s:
        return json_response({"data": [group_view(g) for g in await services.groups.every(s)]})


@router.get("/groups/{item_id}")
async def get_group(item_id: str, request: Request) -> Response:
    async with state(request).sessions() as s:
        return json_response(group_view(await services.groups.by_name(s, item_id)))


@router.delete("/groups/{item_id}")
async def delete_group(item_id: str, request: Request) -> Response:
    async with state(request).sessions() as s:
        await services.groups.delete(s, actor(request), await services.groups.by_name(s, item_id))
    return json_response({"id": item_id, "deleted": True})
