"""Routes of the OpenAI (/v1), GenStudio M×N (/maas) and user (/api) surfaces, and health."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Literal

from fastapi import APIRouter, Query, Request
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.responses import Response

from mxn import metrics
from mxn.errors import ModelNotFound, NotFound, ServiceUnavailable
from mxn.gateway import fast, pipeline, responses, stored, views
from mxn.gateway.auth import api_principal
from mxn.gateway.body import validate
from mxn.gateway.openapi import PUBLIC, request_body
from mxn.gateway.protocols import MESSAGES
from mxn.gateway.state import AppState
from mxn.protocol.anthropic import CountTokensRequest
from mxn.protocol.maas import ModelDetailsRequest, TokenCountRequest
from mxn.store.models import StoredResponse
from mxn.wire import json_response

router = APIRouter()
_STARTED = int(time.time())


def _state(request: Request) -> AppState:
    state: AppState = request.app.state.mxn
    return state


def _generation(route: fast.Route) -> Callable[..., Awaitable[Response]]:
    """The framework's endpoint of a generation route; `fast.FastRoutes` answers these paths before it is reached."""
    if route.path.startswith(fast.MAAS):

        async def on_cell(model: str, chip: str, request: Request) -> Response:
            return await pipeline.handle(route.protocol, request, (model, chip))

        return on_cell

    async def by_model(request: Request) -> Response:
        return await pipeline.handle(route.protocol, request)

    return by_model


for _route in fast.GENERATION:
    router.add_api_route(
        _route.path,
        _generation(_route),
        methods=["POST"],
        name=_route.name,
        tags=[_route.tag],
        openapi_extra=_route.body,
    )


# --- OpenAI form: the chip is chosen by routing, or named as `model@chip` ---
@router.get("/v1/models", tags=["openai"])
async def v1_models(request: Request) -> Response:
    principal = await api_principal(request)
    state = _state(request)
    data = views.model_list(
        state.catalog, _STARTED, include_private=principal.is_admin, state_of=state.router.cell_state
    )
    return json_response({"object": "list", "data": data})


# --- OpenAI Responses: stored responses, each visible only to the user who made it ---
async def _stored_response(request: Request, response_id: str) -> StoredResponse:
    principal = await api_principal(request)
    row = await stored.find(_state(request), principal.user_id, response_id)
    if row is None:
        raise NotFound(f"Response with id '{response_id}' not found.", param="response_id")
    return row


@router.get("/v1/responses/{response_id}", tags=["openai"])
async def v1_response(response_id: str, request: Request) -> Response:
    return json_response((await _stored_response(request, response_id)).response)


@router.delete("/v1/responses/{response_id}", tags=["openai"])
async def v1_response_delete(response_id: str, request: Request) -> Response:
    principal = await api_principal(request)
    if not await stored.remove(_state(request), principal.user_id, response_id):
        raise NotFound(f"Response with id '{response_id}' not found.", param="response_id")
    return json_response({"id": response_id, "object": "response.deleted", "deleted": True})


@router.get("/v1/responses/{response_id}/input_items", tags=["openai"])
async def v1_response_input_items(
    response_id: str,
    request: Request,
    limit: int = Query(20, ge=1, le=100),
    order: Literal["asc", "desc"] = "desc",
    after: str | None = None,
) -> Response:
    row = await _stored_response(request, response_id)
    return json_response(stored.item_page(row.input, limit, order, after))


# --- GenStudio M×N form: one exact cell per base URL ---
@router.post("/maas/{model}/{chip}/token_count", tags=["maas"], openapi_extra=request_body(TokenCountRequest))
async def maas_token_count(model: str, chip: str, request: Request) -> Response:
    _principal, raw, cell = await pipeline.begin(request, (model, chip))
    req = validate(TokenCountRequest, raw)
    return json_response(
        {"model": cell.model.name, "prompt": req.prompt, "token_count": cell.model.tokenizer.count(req.prompt)}
    )


@router.post("/maas/{model}/{chip}/get_model_details", tags=["maas"], openapi_extra=request_body(ModelDetailsRequest))
async def maas_model_details(model: str, chip: str, request: Request) -> Response:
    principal, raw, cell = await pipeline.begin(request, (model, chip))
    validate(ModelDetailsRequest, raw)
    tok = cell.model.tokenizer
    hardware = cell.disclosure
    pinned = principal.pinned_endpoint if principal.is_admin else None
    endpoint = next((e for e in cell.endpoints if e.id == pinned), None)
    if endpoint is not None:
        # An admin key pinned to an endpoint measures that endpoint alone (`mxn bench --endpoint`): its own hardware,
        # or the cell's declaration when the endpoint has none of its own.
        hardware = {**(endpoint.hardware or cell.disclosure), "endpoint": endpoint.id}
    return json_response(
        {
            "model": cell.model.name,
            "chiptype": cell.chip.id,
            "context_length": cell.model.context_length,
            "tokenizer": tok.name,
            "tokenizer_note": tok.fallback_note,
            "state": _state(request).router.cell_state(cell),
            "hardware": hardware,
        }
    )


@router.get("/maas/{model}/{chip}/models", tags=["maas"])
async def maas_models(model: str, chip: str, request: Request) -> Response:
    principal = await api_principal(request)
    cell = _state(request).catalog.cell(model, chip)
    if not (cell.model.public or principal.is_admin):
        raise ModelNotFound(f"The model '{model}' does not exist.", param="model")
    principal.check_cell(cell.model.name, cell.chip.id)
    entry = views.model_object(cell.model, _STARTED)
    cell_entry = views.model_object(cell.model, _STARTED, cell, _state(request).router.cell_state)
    return json_response({"object": "list", "data": [entry, cell_entry]})


# --- Anthropic's token count, on /v1 (the cell in `model`) and on a cell's base URL; errors in Anthropic's shape ---
async def _count_tokens(request: Request, ref: pipeline.CellRef) -> Response:
    async def count() -> Response:
        _principal, raw, cell = await pipeline.begin(request, ref)
        return json_response({"input_tokens": MESSAGES.count_tokens(raw, cell)})

    return await responses.rendered(request, count(), MESSAGES.error_response)


_COUNT_BODY = request_body(CountTokensRequest)


@router.post(
    "/v1/messages/count_tokens", tags=["anthropic"], openapi_extra=request_body(CountTokensRequest, require=("model",))
)
async def v1_count_tokens(request: Request) -> Response:
    return await _count_tokens(request, None)


@router.post("/maas/{model}/{chip}/messages/count_tokens", tags=["maas"], openapi_extra=_COUNT_BODY)
async def maas_count_tokens(model: str, chip: str, request: Request) -> Response:
    return await _count_tokens(request, (model, chip))


@router.post("/maas/{model}/{chip}/v1/messages/count_tokens", tags=["maas"], openapi_extra=_COUNT_BODY)
async def maas_v1_count_tokens(model: str, chip: str, request: Request) -> Response:
    return await _count_tokens(request, (model, chip))


# --- GenStudio console API: the filterable M×N catalogue ---
@router.get("/api/maas/user/v2/model/list", tags=["api"])
async def genstudio_model_list(
    request: Request, family: str | None = None, chip: str | None = None, kind: str | None = None
) -> Response:
    principal = await api_principal(request)
    catalog = _state(request).catalog
    entries = []
    for model in catalog.models.values():
        if (family and model.family != family) or (kind and model.kind != kind):
            continue
        if not (model.public or principal.is_admin):
            continue
        cells = [c for c in catalog.cells_of(model.name) if not chip or c.chip.id == chip]
        if cells:
            entries.append(views.genstudio_entry(model, cells, _state(request).router.cell_state))
    return json_response({"code": 0, "message": "success", "data": {"model_list": entries, "total": len(entries)}})


# --- health ---
@router.get("/healthz", tags=["health"], openapi_extra=PUBLIC)
async def healthz() -> Response:
    return json_response({"status": "ok"})


@router.get("/readyz", tags=["health"], openapi_extra=PUBLIC)
async def readyz(request: Request) -> Response:
    """Whether this replica can take requests: 503 only while its own engines load. A shared dependency that is
    away (the store, Redis) makes it `degraded`, not unready: every replica shares it, and taking them all out of a
    load balancer would refuse even what they still serve (cached keys with held balances, limits in memory)."""
    state = _state(request)
    await state.check_store()
    cells = state.catalog.cells.values()
    loading = [c.name for c in cells for e in c.endpoints if not e.engine.ready]
    if loading:
        raise ServiceUnavailable(f"loading models: {', '.join(sorted(set(loading)))}", code="not_ready")
    running = sum(state.router.cell_state(c) == "running" for c in cells)
    deps = (state.store_health, *state.dependencies)
    body: dict[str, object] = {"status": "ready", "deployments": len(cells), "running": running}
    if down := [d for d in deps if not d.up]:
        body["status"] = "degraded"
        body["down"] = "; ".join(f"{d.name} is not reachable ({d.error})" for d in down)
    body["dependencies"] = {d.name: d.snapshot() for d in deps}
    return json_response(body)


@router.get("/metrics", tags=["health"], openapi_extra=PUBLIC)
async def prometheus_metrics() -> Response:
    return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)
