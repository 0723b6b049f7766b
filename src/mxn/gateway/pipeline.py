"""The request path: one chain of steps over one `Call`, the same for every front-end protocol.

    authenticate         gateway/auth.py        the key (or console session) → a Principal
    parse                gateway/body.py        the JSON body, bounded in size and depth
    resolve              gateway/pipeline.py    the cell: a /maas path, or the body's `model`
    recall, prepare      gateway/protocols/     what the request refers to in the store (a previous response);
                                                the protocol's request → the internal request (params.py)
    admit                gateway/admit.py       rate limits, then quota reserved
    moderate the input   gateway/moderate.py
    dispatch             gateway/dispatch.py    to an endpoint, failing over while nothing has been sent
    transform the answer gateway/stream.py      normalised (normalize.py), moderated (moderate.py), rendered in
                                                the protocol's own format (protocols/)
    settle               gateway/admit.py       quota to the real cost, limits, a usage record

A front-end protocol is an adapter (`protocols/`); a feature is a step or a transform of the answer, never a
branch inside another step.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from starlette.requests import Request
from starlette.responses import Response

from mxn.accounts.service import Principal
from mxn.catalog.registry import Cell, EndpointInfo
from mxn.errors import ClientGone, InvalidRequest, ModelNotFound, MxnError
from mxn.gateway import dispatch, moderate, stream
from mxn.gateway.admit import Admission, admit
from mxn.gateway.auth import api_principal, client_host
from mxn.gateway.normalize import StreamNormalizer
from mxn.gateway.params import Prepared, able
from mxn.gateway.protocols import Protocol
from mxn.gateway.state import AppState
from mxn.wire import json_response, read_json

T = TypeVar("T")
# A cell is `(model, chip)` from a /maas path, or None: the body's `model` (`name` or `name@chip`).
CellRef = tuple[str, str] | None


@dataclass(slots=True)
class Call:
    """One request on its way: filled in step by step."""

    request: Request
    state: AppState
    protocol: Protocol
    principal: Principal
    raw: dict[str, Any]
    cell: Cell
    prepared: Prepared = field(init=False)
    admission: Admission = field(init=False)
    norm: StreamNormalizer = field(init=False)  # a stream's normaliser: what streamed, for settlement
    blocked: str | None = None  # set by output moderation: the answer was cut ("content_filter")


async def handle(protocol: Protocol, request: Request, ref: CellRef = None) -> Response:
    """The whole chain for one request of a generation or embedding protocol."""
    principal, raw, cell = await begin(request, ref)
    call = Call(request, request.app.state.mxn, protocol, principal, raw, cell)
    await protocol.recall(call)
    call.prepared = protocol.prepare(call.raw, call.cell, call.state.unknown_fields)
    able(call.prepared, call.cell.endpoints, call.cell)  # a parameter no engine of the cell takes: refused now
    call.admission = await admit(call.state, call.principal, call.cell, call.prepared, protocol.name)
    call.prepared = call.prepared.capped(call.admission.cap)
    if call.prepared.stream:
        return await _stream(call)
    return await _complete(call)


async def begin(request: Request, ref: CellRef) -> tuple[Principal, dict[str, Any], Cell]:
    """Authenticate, parse and resolve: the steps every route on a cell starts with."""
    state: AppState = request.app.state.mxn
    principal = await api_principal(request)
    if principal.key_id:  # scheduled, never awaited here: noticing a new address must not slow or fail a request
        state.alerts.note_key_use(principal.key_id, principal.user_id, client_host(request))
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


def _candidates(call: Call) -> list[EndpointInfo]:
    # Chosen after admission and with no await before the first attempt starts, so that the router's in-flight
    # counts, concurrency caps and half-open probes see every request that is under way.
    principal = call.principal
    found = call.state.router.candidates(call.cell, principal.pinned_endpoint if principal.is_admin else None)
    return able(call.prepared, found, call.cell)


async def _complete(call: Call) -> Response:
    """Moderate the input, dispatch, normalise and moderate the answer, settle, answer in the protocol's shape."""
    try:
        await moderate.check_input(call)
        work = dispatch.call(call.state.router, call.cell, _candidates(call), call.protocol.route, call.prepared)
        endpoint, data = await until_disconnected(call.request, work)
        body = call.protocol.normalized(data, call)
        await moderate.check_output(call, body)
    except BaseException as exc:
        await _failed(call.admission, exc)
        raise
    usage = body["usage"]
    await call.admission.finish(
        200, usage["prompt_tokens"], usage.get("completion_tokens", 0), endpoint.id, call.blocked
    )
    out = call.protocol.answer(body, call)
    await call.protocol.keep(out, call)
    return json_response(out, headers=call.admission.headers)


async def _stream(call: Call) -> Response:
    """Moderate the input, open a stream whose first chunk has arrived; the rest is `stream.respond`'s."""
    try:
        await moderate.check_input(call)
        endpoint, opened = await dispatch.open_stream(
            call.state.router, call.cell, _candidates(call), call.protocol.route, call.prepared
        )
    except BaseException as exc:
        await _failed(call.admission, exc)
        raise
    call.admission.first_token()
    return stream.respond(call, endpoint, opened)


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
