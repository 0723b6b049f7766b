"""Routes of the OpenAI (/v1), GenStudio M×N (/maas) and user (/api) surfaces, and health."""

from __future__ import annotations

import time

from fastapi import APIRouter, Request
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.responses import Response

from mxn import metrics
from mxn.errors import ModelNotFound, ServiceUnavailable
from mxn.gateway import pipeline, views
from mxn.gateway.auth import api_principal
from mxn.gateway.body import validate
from mxn.gateway.openapi import PUBLIC, request_body
from mxn.gateway.responses import json_response
from mxn.gateway.state import AppState
from mxn.protocol.maas import ModelDetailsRequest, TokenCountRequest
from mxn.protocol.openai import ChatCompletionRequest, CompletionRequest, EmbeddingRequest

router = APIRouter()
# Bodies as /docs shows them; the /v1 form names its cell in `model`, a /maas path names it instead.
CHAT, COMPLETION = request_body(ChatCompletionRequest), request_body(CompletionRequest)
V1_CHAT, V1_COMPLETION, V1_EMBEDDING = (
    request_body(m, require=("model",)) for m in (ChatCompletionRequest, CompletionRequest, EmbeddingRequest)
)
_STARTED = int(time.time())


def _state(request: Request) -> AppState:
    state: AppState = request.app.state.mxn
    return state


# --- OpenAI form: the chip is chosen by routing, or named as `model@chip` ---
@router.post("/v1/chat/completions", tags=["openai"], openapi_extra=V1_CHAT)
async def v1_chat(request: Request) -> Response:
    return await pipeline.chat_completions(request)


@router.post("/v1/completions", tags=["openai"], openapi_extra=V1_COMPLETION)
async def v1_completions(request: Request) -> Response:
    return await pipeline.completions(request)


@router.post("/v1/embeddings", tags=["openai"], openapi_extra=V1_EMBEDDING)
async def v1_embeddings(request: Request) -> Response:
    return await pipeline.embeddings(request)


@router.get("/v1/models", tags=["openai"])
async def v1_models(request: Request) -> Response:
    principal = await api_principal(request)
    state = _state(request)
    data = views.model_list(
        state.catalog, _STARTED, include_private=principal.is_admin, state_of=state.router.cell_state
    )
    return json_response({"object": "list", "data": data})


# --- GenStudio M×N form: one exact cell per base URL ---
@router.post("/maas/{model}/{chip}/chat/completions", tags=["maas"], openapi_extra=CHAT)
async def maas_chat(model: str, chip: str, request: Request) -> Response:
    return await pipeline.chat_completions(request, (model, chip))


@router.post("/maas/{model}/{chip}/completions", tags=["maas"], openapi_extra=COMPLETION)
async def maas_completions(model: str, chip: str, request: Request) -> Response:
    return await pipeline.completions(request, (model, chip))


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
    state = _state(request)
    try:
        async with state.sessions() as s:
            await s.connection()
    except Exception:
        raise ServiceUnavailable("the store is not reachable", code="not_ready")
    cells = state.catalog.cells.values()
    loading = [c.name for c in cells for e in c.endpoints if not getattr(e.engine, "ready", True)]
    if loading:
        raise ServiceUnavailable(f"loading models: {', '.join(sorted(set(loading)))}", code="not_ready")
    running = sum(state.router.cell_state(c) == "running" for c in cells)
    return json_response({"status": "ready", "deployments": len(cells), "running": running})


@router.get("/metrics", tags=["health"], openapi_extra=PUBLIC)
async def prometheus_metrics() -> Response:
    return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)
