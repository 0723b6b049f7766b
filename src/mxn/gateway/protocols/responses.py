"""OpenAI Responses: items in, items out, over the internal chat completion.

A request's input items (and those `previous_response_id` brings from the store) become chat messages, its
function tools chat tools, `text.format` a `response_format`. The answer becomes a Response with a message item
and function_call items; a stream becomes Responses' event sequence, numbered, ending in `response.completed`
(or `response.incomplete` when cut by length or moderation, `response.failed` after an error). A stored response
is kept before its last event goes out, so that the next turn finds it (`gateway/stored.py`).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from mxn.catalog.registry import Cell
from mxn.errors import ContextLengthExceeded, MxnError, NotFound, UpstreamError
from mxn.gateway import stored
from mxn.gateway.body import UnknownFields, validate
from mxn.gateway.params import Prepared, prepare_chat
from mxn.gateway.protocols.base import Protocol, need_generative
from mxn.gateway.protocols.responses_input import chat_body, input_items
from mxn.protocol.openai import ChatCompletionRequest
from mxn.protocol.responses import (
    ResponsesRequest,
    function_call_item,
    message_item,
    new_id,
    outcome,
    output_text,
    response_object,
    usage,
)
from mxn.wire import sse_event

if TYPE_CHECKING:
    from mxn.gateway.pipeline import Call

# Where `recall` puts the items of the previous response (a client's own value under this name is dropped first).
HISTORY = "__mxn_history__"


class Responses(Protocol):
    name = "responses"
    route = "chat/completions"
    kind = "chat"

    async def recall(self, call: Call) -> None:
        call.raw.pop(HISTORY, None)
        previous = call.raw.get("previous_response_id")
        if not isinstance(previous, str):
            return  # absent; a wrong type is the request model's to refuse
        found = await stored.find(call.state, call.principal.user_id, previous)
        if found is None:
            raise NotFound(f"Previous response with id '{previous}' not found.", param="previous_response_id")
        call.raw[HISTORY] = found.input + found.response["output"]

    def prepare(self, raw: dict[str, Any], cell: Cell, unknown: UnknownFields) -> Prepared:
        need_generative(cell)
        req = validate(ResponsesRequest, {k: v for k, v in raw.items() if k != HISTORY}, unknown)
        req.check()
        body = chat_body(req, raw.get(HISTORY) or [])
        try:
            return prepare_chat(validate(ChatCompletionRequest, body, unknown), body, cell)
        except ContextLengthExceeded as exc:
            exc.param = "input"
            raise

    def answer(self, body: dict[str, Any], call: Call) -> dict[str, Any]:
        choice = (body.get("choices") or [{}])[0]
        message = choice.get("message") or {}
        status, incomplete = outcome(choice.get("finish_reason"), call.blocked)
        item_status = "completed" if status == "completed" else "incomplete"
        output = []
        content, calls = message.get("content"), message.get("tool_calls") or []
        if content or not calls:
            output.append(message_item(new_id("msg"), content or "", item_status))
        for tc in calls:
            fn = tc.get("function") or {}
            output.append(
                function_call_item(
                    new_id("fc"),
                    tc.get("id") or new_id("call"),
                    fn.get("name") or "",
                    fn.get("arguments") or "",
                    "completed",
                )
            )
        used = usage(body["usage"])
        return _response(call, new_id("resp"), int(time.time()), status, output, usage=used, incomplete=incomplete)

    async def keep(self, out: dict[str, Any], call: Call) -> None:
        if not out["store"]:
            return
        items = (call.raw.get(HISTORY) or []) + input_items(call.raw["input"])
        if not await stored.keep(call.state, call.principal.user_id, out, items):
            out["store"] = False  # it could not be kept (the store is away): say so rather than 404 later

    async def events(self, chunks: AsyncIterator[dict[str, Any]], call: Call) -> AsyncIterator[bytes]:
        s = _Stream(call)
        yield s.event("response.created", response=s.snapshot()) + s.event(
            "response.in_progress", response=s.snapshot()
        )
        try:
            async for chunk in chunks:
                if piece := s.chunk(chunk):
                    yield piece
        except Exception as exc:
            # Rendered here, where the stream's state is: the chain's `stream_error` then adds nothing.
            err = (
                exc if isinstance(exc, MxnError) else UpstreamError("the upstream sent a stream that could not be read")
            )
            yield s.failed(err)
            raise
        closing = s.close()
        final = s.final()
        await self.keep(final, call)
        kind = "response.completed" if final["status"] == "completed" else "response.incomplete"
        yield closing + s.event(kind, response=final)

    def stream_error(self, exc: MxnError) -> bytes:
        return b""  # `events` has sent the `error` and `response.failed` events

    def stream_end(self) -> bytes:
        return b""  # Responses' streams end with their last event, no [DONE]


RESPONSES = Responses()


def _response(
    call: Call, response_id: str, created_at: int, status: str, output: list[dict[str, Any]], **fields: Any
) -> dict[str, Any]:
    """`response_object` for this call: its request echoed, the model's defaults filled in; `fields` the rest."""
    return response_object(
        call.raw, call.prepared.body, response_id=response_id, created_at=created_at, model=call.cell.model.name,
        status=status, output=output, **fields,
    )  # fmt: skip


class _Stream:
    """One streamed response: its items as they grow, and the numbered events that tell the client so."""

    def __init__(self, call: Call) -> None:
        self.call = call
        self.id = new_id("resp")
        self.created = int(time.time())
        self.seq = 0
        self.output: list[dict[str, Any]] = []
        self.text: dict[str, Any] | None = None  # the message item being written, while it is open
        self.parts: list[str] = []
        self.calls: dict[int, dict[str, Any]] = {}  # function_call items by the chat tool call's index
        self.finish: str | None = None

    def event(self, kind: str, **fields: Any) -> bytes:
        data = {"type": kind, "sequence_number": self.seq, **fields}
        self.seq += 1
        return sse_event(kind, data)

    def snapshot(self, status: str = "in_progress", **extra: Any) -> dict[str, Any]:
        return _response(self.call, self.id, self.created, status, list(self.output), **extra)

    def chunk(self, chunk: dict[str, Any]) -> bytes:
        out = b""
        for choice in chunk.get("choices") or []:
            if choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            text = delta.get("content")
            if isinstance(text, str) and text:
                out += self._text(text)
            for tc in delta.get("tool_calls") or []:
                out += self._tool_call(tc)
            if choice.get("finish_reason"):
                self.finish = choice["finish_reason"]
        return out

    def _open_text(self) -> bytes:
        self.text = message_item(new_id("msg"), None, "in_progress")
        self.parts = []
        self.output.append(self.text)
        index = len(self.output) - 1
        return self.event("response.output_item.added", output_index=index, item=self.text) + self.event(
            "response.content_part.added", item_id=self.text["id"], output_index=index, content_index=0,
            part=output_text(""),
        )  # fmt: skip

    def _text(self, text: str) -> bytes:
        out = self._open_text() if self.text is None else b""
        assert self.text is not None
        self.parts.append(text)
        where = {"item_id": self.text["id"], "output_index": self.output.index(self.text), "content_index": 0}
        return out + self.event("response.output_text.delta", **where, delta=text, logprobs=[])

    def _tool_call(self, tc: dict[str, Any]) -> bytes:
        out = b""
        index = tc.get("index", 0)
        fn = tc.get("function") or {}
        item = self.calls.get(index)
        if item is None:
            out += self._close_text()
            item = function_call_item(
                new_id("fc"), tc.get("id") or new_id("call"), fn.get("name") or "", "", "in_progress"
            )
            self.calls[index] = item
            self.output.append(item)
            out += self.event("response.output_item.added", output_index=len(self.output) - 1, item=item)
        args = fn.get("arguments")
        if isinstance(args, str) and args:
            item["arguments"] += args
            out += self.event(
                "response.function_call_arguments.delta", item_id=item["id"],
                output_index=self.output.index(item), delta=args,
            )  # fmt: skip
        return out

    def _item_status(self) -> str:
        return "completed" if outcome(self.finish, self.call.blocked)[0] == "completed" else "incomplete"

    def _close_text(self) -> bytes:
        if self.text is None:
            return b""
        item, self.text = self.text, None
        text = "".join(self.parts)
        index = self.output.index(item)
        where = {"item_id": item["id"], "output_index": index, "content_index": 0}
        item["content"] = [output_text(text)]
        item["status"] = self._item_status()
        return (
            self.event("response.output_text.done", **where, text=text, logprobs=[])
            + self.event("response.content_part.done", **where, part=output_text(text))
            + self.event("response.output_item.done", output_index=index, item=item)
        )

    def close(self) -> bytes:
        """The end of every item still open; a stream that made nothing still has its (empty) message."""
        out = self._open_text() if not self.output else b""
        out += self._close_text()
        for item in self.calls.values():
            if item["status"] != "in_progress":
                continue
            item["status"] = "completed" if self.finish != "length" else "incomplete"
            index = self.output.index(item)
            out += self.event(
                "response.function_call_arguments.done", item_id=item["id"], name=item["name"], output_index=index,
                arguments=item["arguments"],
            )  # fmt: skip
            out += self.event("response.output_item.done", output_index=index, item=item)
        return out

    def final(self) -> dict[str, Any]:
        status, incomplete = outcome(self.finish, self.call.blocked)
        return self.snapshot(status, usage=usage(self.call.norm.usage()), incomplete=incomplete)

    def failed(self, exc: MxnError) -> bytes:
        code = "rate_limit_exceeded" if exc.status == 429 else "server_error"
        error = {"code": code, "message": exc.message}
        body = exc.body()["error"]
        return self.event("error", code=body["code"], message=body["message"], param=body["param"]) + self.event(
            "response.failed", response=self.snapshot("failed", usage=usage(self.call.norm.usage()), error=error)
        )
