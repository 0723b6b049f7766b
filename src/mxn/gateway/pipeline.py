"""The request path for generation: authenticate → parse → resolve the cell → prepare → admit → moderate the
input → dispatch → normalise (and moderate the output) → settle."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, TypeVar

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from mxn.accounts.service import Principal
from mxn.catalog.registry import Cell, EndpointInfo
from mxn.errors import ClientGone, InvalidRequest, ModelNotFound, MxnError
from mxn.gateway import dispatch, normalize
from mxn.gateway.admit import Admission, admit
from mxn.gateway.auth import api_principal
from mxn.gateway.body import read_json, validate
from mxn.gateway.params import Prepared, able, prepare_chat, prepare_completion
from mxn.gateway.responses import json_response
from mxn.gateway.state import AppState
from mxn.moderation import check as moderation
from mxn.protocol.openai import ChatCompletionRequest, CompletionRequest, EmbeddingRequest

T = TypeVar("T")
SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}
# A cell is `(model, chip)` from a /maas path, or None: the body's `model` (`name` or `name@chip`).
CellRef = tuple[str, str] | None


async def begin(request: Request, ref: CellRef) -> tuple[Principal, dict[str, Any], Cell]:
    """The steps every generation route starts with."""
    state: AppState = request.app.state.mxn
    principal = await api_principal(request)
    if principal.key_id:
        await state.alerts.key_used(
            principal.key_id, principal.user_id, request.client.host if request.client else None
        )
    raw = await read_json(request, state.settings.max_body_bytes, state.settings.max_json_depth)
    cell = resolve_cell(state, ref, raw.get("model"))
    if not (cell.model.public or principal.is_admin):
        # A private model is invisible to other users: the same answer as for a model that does not exist.
        raise ModelNotFound(f"The model '{cell.model.name}' does not exist.", param="model")
    principal.check_cell(cell.model.name, cell.chip.id)
    return principal, raw, cell


def resolve_cell(state: AppState, ref: CellRef, model: Any) -> Cell:
    if ref is not None:
        return state.catalog.cell(*ref)
    if not isinstance(model, str) or not model:
        raise InvalidRequest("you must provide a model parameter", param="model", code="missing_model")
    return state.catalog.resolve(model, state.router.cell_state)


def _candidates(request: Request, cell: Cell, principal: Principal, prepared: Prepared) -> list[EndpointInfo]:
    state: AppState = request.app.state.mxn
    found = state.router.candidates(cell, principal.pinned_endpoint if principal.is_admin else None)
    return able(prepared, found, cell)


def _need_generative(cell: Cell) -> None:
    if cell.model.kind == "embedding":
        raise InvalidRequest(
            f"'{cell.model.name}' is an embedding model; use /v1/embeddings", param="model", code="wrong_model_kind"
        )


async def chat_completions(request: Request, ref: CellRef = None) -> Response:
    principal, raw, cell = await begin(request, ref)
    _need_generative(cell)
    req = validate(ChatCompletionRequest, raw)
    return await _generate(request, cell, principal, prepare_chat(req, raw, cell), "chat", "chat/completions")


async def completions(request: Request, ref: CellRef = None) -> Response:
    principal, raw, cell = await begin(request, ref)
    _need_generative(cell)
    req = validate(CompletionRequest, raw)
    return await _generate(request, cell, principal, prepare_completion(req, raw, cell), "text", "completions")


async def _generate(
    request: Request, cell: Cell, principal: Principal, prepared: Prepared, kind: str, route: str
) -> Response:
    state: AppState = request.app.state.mxn
    able(prepared, cell.endpoints, cell)  # a parameter no engine of the cell takes is refused before admission
    adm = await admit(state, principal, cell, prepared, route)
    tok = cell.model.tokenizer
    try:
        if cell.rules is not None:
            await moderation.check_input(state.http, cell.rules, prepared.body, cell.name)
        # Chosen after admission and with no await before the first attempt starts, so that the router's
        # in-flight counts, concurrency caps and half-open probes see every request that is under way.
        candidates = _candidates(request, cell, principal, prepared)
        if prepared.stream:
            endpoint, stream = await dispatch.open_stream(state.router, cell, candidates, route, prepared)
        else:
            endpoint, data = await until_disconnected(
                request, dispatch.call(state.router, cell, candidates, route, prepared)
            )
            body = normalize.response(
                data, kind=kind, model=cell.model.name, prompt_tokens=prepared.prompt_tokens, tok=tok
            )
            if cell.rules is not None:
                await moderation.check_output(state.http, cell.rules, body, kind == "chat")
    except BaseException as exc:
        await _failed(adm, exc)
        raise
    if not prepared.stream:
        usage = body["usage"]
        blocked = "content_filter" if body.get("blocked") else None
        await adm.finish(200, usage["prompt_tokens"], usage["completion_tokens"], endpoint.id, blocked)
        return json_response(body, headers=adm.headers)
    adm.first_token()
    norm = normalize.StreamNormalizer(kind=kind, model=cell.model.name, prompt_tokens=prepared.prompt_tokens, tok=tok)
    guard = moderation.StreamGuard(cell.rules, state.http) if cell.rules is not None else None

    async def finish(status: int, error: str | None) -> None:
        used = norm.usage()
        await adm.finish(status, used["prompt_tokens"], used["completion_tokens"], endpoint.id, error)

    return StreamingResponse(
        dispatch.sse_events(stream, norm, prepared.include_usage, finish, guard),
        media_type="text/event-stream",
        headers={**SSE_HEADERS, **adm.headers},
    )


async def _failed(adm: Admission, exc: BaseException) -> None:
    """Nothing reached the client: give everything back, and record why."""
    if isinstance(exc, MxnError):
        await adm.finish(exc.status, 0, 0, error=exc.code)
        exc.headers = {**adm.headers, **exc.headers}
    elif isinstance(exc, asyncio.CancelledError):
        await adm.finish(ClientGone.status, 0, 0, error=ClientGone.default_code)
    else:
        await adm.finish(500, 0, 0, error="internal_error")


async def until_disconnected(request: Request, work: Awaitable[T]) -> T:
    """Await `work` here, cancelling it if the client disconnects first (uvicorn does not cancel the handler).

    One watcher task per request; the work itself runs in the handler's own task.
    """
    handler = asyncio.current_task()
    assert handler is not None
    gone = False

    async def watch() -> None:
        nonlocal gone
        # The body has been read, so the next message on the channel can only be the disconnect.
        while (await request.receive())["type"] != "http.disconnect":
            pass
        gone = True
        handler.cancel()

    watcher = asyncio.create_task(watch())
    try:
        return await work
    except asyncio.CancelledError:
        if not gone:
            raise
        handler.uncancel()
        raise ClientGone("the client went away before the answer was ready")
    finally:
        watcher.cancel()


async def embeddings(request: Request) -> Response:
    principal, raw, cell = await begin(request, None)
    if cell.model.kind != "embedding":
        raise InvalidRequest(f"'{cell.model.name}' is not an embedding model", param="model", code="wrong_model_kind")
    req = validate(EmbeddingRequest, raw)
    req.check()
    inputs = req.input if isinstance(req.input, list) else [req.input]
    tok = cell.model.tokenizer
    prompt_tokens = sum(tok.count(x) if isinstance(x, str) else (len(x) if isinstance(x, list) else 1) for x in inputs)
    prepared = Prepared(dict(raw, model=cell.model.name), prompt_tokens, 0, False, False)
    state: AppState = request.app.state.mxn
    adm = await admit(state, principal, cell, prepared, "embeddings")
    try:
        candidates = _candidates(request, cell, principal, prepared)
        endpoint, data = await until_disconnected(
            request, dispatch.call(state.router, cell, candidates, "embeddings", prepared)
        )
        out = normalize.embeddings(data, model=cell.model.name, prompt_tokens=prompt_tokens)
    except BaseException as exc:
        await _failed(adm, exc)
        raise
    await adm.finish(200, out["usage"]["prompt_tokens"], 0, endpoint.id)
    return json_response(out, headers=adm.headers)
