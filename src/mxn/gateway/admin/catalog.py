"""/admin/catalog, /admin/chips, /admin/models: the catalogue, whole or a piece at a time. Every change serves at
once: the running catalogue is reloaded after it."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from mxn import services
from mxn.catalog.loader import CatalogError, parse_catalog
from mxn.catalog.schema import CatalogFile, ChipSpec, ModelSpec
from mxn.errors import InvalidRequest
from mxn.gateway.admin.common import actor, state
from mxn.gateway.admin.schemas import ChipPatch, ModelPatch
from mxn.gateway.admin.views import chip_view, model_view
from mxn.gateway.body import validate
from mxn.gateway.openapi import request_body
from mxn.wire import json_response

router = APIRouter()


@router.post("/catalog", openapi_extra=request_body(CatalogFile, "application/yaml"))
async def apply_catalog_file(request: Request) -> Response:
    """Apply a catalogue YAML document (the request body), exactly as `mxn serve --catalog` does."""
    st = state(request)
    text = (await request.body()).decode("utf-8", errors="replace")
    try:
        spec = parse_catalog(text, "request body")
    except CatalogError as exc:
        raise InvalidRequest(str(exc), code="invalid_catalog")
    async with st.sessions() as s:
        counts = await services.catalog.apply(s, actor(request), spec)
    await st.reload_catalog()
    return json_response({"applied": counts})


@router.post("/chips", status_code=201)
async def create_chip(body: ChipSpec, request: Request) -> Response:
    st = state(request)
    async with st.sessions() as s:
        chip = await services.chips.create(s, actor(request), body)
        await st.reload_catalog()
        return json_response(chip_view(chip), 201)


@router.patch("/chips/{chip_id}")
async def patch_chip(chip_id: str, body: ChipPatch, request: Request) -> Response:
    st = state(request)
    async with st.sessions() as s:
        chip = await services.chips.by_id(s, chip_id)
        await services.chips.update(s, actor(request), chip, body.model_dump(exclude_unset=True))
        await st.reload_catalog()
        return json_response(chip_view(chip))


@router.post("/models", status_code=201)
async def create_model(body: ModelSpec, request: Request) -> Response:
    st = state(request)
    async with st.sessions() as s:
        model = await services.models.create(s, actor(request), body)
        await st.reload_catalog()
        return json_response(model_view(model), 201)


@router.patch("/models/{name}")
async def patch_model(name: str, body: ModelPatch, request: Request) -> Response:
    st = state(request)
    async with st.sessions() as s:
        model = await services.models.by_name(s, name)
        # The patch is checked as the whole model it makes, with the catalogue's own rules.
        merged = validate(ModelSpec, {**model_view(model), **body.model_dump(exclude_unset=True)})
        await services.models.update(s, actor(request), model, merged)
        await st.reload_catalog()
        return json_response(model_view(model))


@router.get("/chips")
async def list_chips(request: Request) -> Response:
    async with state(request).sessions() as s:
        return json_response({"data": [chip_view(c) for c in await services.chips.every(s)]})


@router.get("/chips/{item_id}")
async def get_chip(item_id: str, request: Request) -> Response:
    async with state(request).sessions() as s:
        return json_response(chip_view(await services.chips.by_id(s, item_id)))


@router.delete("/chips/{item_id}")
async def delete_chip(item_id: str, request: Request) -> Response:
    st = state(request)
    async with st.sessions() as s:
        await services.chips.delete(s, actor(request), await services.chips.by_id(s, item_id))
        await st.reload_catalog()
    return json_response({"id": item_id, "deleted": True})


@router.get("/models")
async def list_models(request: Request) -> Response:
    async with state(request).sessions() as s:
        return json_response({"data": [model_view(m) for m in await services.models.every(s)]})


@router.get("/models/{item_id}")
async def get_model(item_id: str, request: Request) -> Response:
    async with state(request).sessions() as s:
        return json_response(model_view(await services.models.by_name(s, item_id)))


@router.delete("/models/{item_id}")
async def delete_model(item_id: str, request: Request) -> Response:
    st = state(request)
    async with st.sessions() as s:
        await services.models.delete(s, actor(request), await services.models.by_name(s, item_id))
        await st.reload_catalog()
    return json_response({"id": item_id, "deleted": True})
