"""Anthropic Messages: a request becomes the internal OpenAI chat request, the answer an Anthropic message (or
Anthropic's stream of events), an error Anthropic's `{"type": "error", "error": {"type", "message"}}`.

`max_tokens` is required, as Anthropic requires it, and is a ceiling: clients such as Claude Code send one large
value (32000) whatever the model, so a ceiling above what the context leaves is lowered to it rather than refused
(a prompt that does not fit at all is still refused).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from typing import TYPE_CHECKING, Any, ClassVar

import orjson
from starlette.responses import Response

from mxn.catalog.registry import Cell
from mxn.errors import InvalidRequest, MxnError, UpstreamError
from mxn.gateway.body import UnknownFields, validate
from mxn.gateway.params import Prepared, chat_prompt_tokens, prepare_chat
from mxn.gateway.protocols.base import Protocol, need_generative
from mxn.protocol import anthropic as a
from mxn.protocol.openai import ChatCompletionRequest
from mxn.wire import json_response, request_id, sse_event

if TYPE_CHECKING:
    from mxn.gateway.pipeline import Call

# Fields an Anthropic client might send through `extra_body` that would change the answer's shape, or Anthropic
# features mxn does not have: refused by name rather than forwarded.
REFUSED = frozenset(
    {"n", "logprobs", "top_logprobs", "stream_options", "response_format", "max_completion_tokens", "best_of",
     "use_beam_search", "echo", "stop", "functions", "function_call", "container", "mcp_servers"}
)  # fmt: skip
NO_MEDIA = "{} blocks are not supported: no model served here reads images or documents"
# Anthropic's error type for each status; a 4xx not listed is the client's mistake, a 5xx not listed the server's.
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    503: "overloaded_error",
    504: "timeout_error",
    529: "overloaded_error",
}
STOP_REASONS = {"length": "max_tokens", "tool_calls": "tool_use", "content_filter": "refusal"}
REFUSAL = {"type": "refusal", "category": None, "explanation": "The answer was cut by content moderation."}


# --- the request ---
def _text(blocks: Iterable[a.TextBlock | a.MediaBlock], where: str) -> str:
    parts = []
    for i, block in enumerate(blocks):
        if isinstance(block, a.MediaBlock):
            raise InvalidRequest(f"{where}.{i}: " + NO_MEDIA.format(block.type), param=f"{where}.{i}")
        parts.append(block.text)
    return "\n".join(parts)


def _user(content: list[Any], where: str) -> list[dict[str, Any]]:
    """A user turn: its tool results as `tool` messages (first, as Anthropic requires them), then its text."""
    out: list[dict[str, Any]] = []
    texts: list[a.TextBlock | a.MediaBlock] = []
    for i, block in enumerate(content):
        if isinstance(block, a.ToolResultBlock):
            result = block.content
            text = result if isinstance(result, str) else _text(result or (), f"{where}.{i}.content")
            if block.is_error:
                text = f"Error: {text}"
            out.append({"role": "tool", "tool_call_id": block.tool_use_id, "content": text})
        elif isinstance(block, a.TextBlock | a.MediaBlock):
            texts.append(block)
        elif isinstance(block, a.ToolUseBlock):
            raise InvalidRequest(f"{where}.{i}: tool_use blocks belong to assistant turns", param=f"{where}.{i}")
    if texts:
        out.append({"role": "user", "content": _text(texts, where)})
    return out


def _assistant(content: list[Any], where: str) -> dict[str, Any]:
    """An assistant turn: its text, and its tool uses as `tool_calls`; thinking blocks are dropped."""
    texts: list[a.TextBlock | a.MediaBlock] = []
    calls = []
    for i, block in enumerate(content):
        if isinstance(block, a.ToolUseBlock):
            arguments = orjson.dumps(block.input).decode()
            calls.append({"id": block.id, "type": "function", "function": {"name": block.name, "arguments": arguments}})
        elif isinstance(block, a.TextBlock | a.MediaBlock):
            texts.append(block)
        elif isinstance(block, a.ToolResultBlock):
            raise InvalidRequest(f"{where}.{i}: tool_result blocks belong to user turns", param=f"{where}.{i}")
    message: dict[str, Any] = {"role": "assistant", "content": _text(texts, where) if texts else None}
    if calls:
        message["tool_calls"] = calls
    return message


def chat_messages(req: a.CountTokensRequest) -> list[dict[str, Any]]:
    system = req.system if isinstance(req.system, str) or req.system is None else _text(req.system, "system")
    messages: list[dict[str, Any]] = [{"role": "system", "content": system}] if system else []
    for i, m in enumerate(req.messages):
        if isinstance(m.content, str):
            messages.append({"role": m.role, "content": m.content})
        elif m.role == "user":
            messages += _user(m.content, f"messages.{i}.content")
        else:
            messages.append(_assistant(m.content, f"messages.{i}.content"))
    return messages


def chat_tools(req: a.CountTokensRequest) -> dict[str, Any]:
    """`tools` and `tool_choice` in OpenAI's shape (nothing when there are no tools)."""
    if not req.tools:
        return {}
    tools = []
    for i, tool in enumerate(req.tools):
        if tool.type not in (None, "custom"):
            raise InvalidRequest(
                f"tools.{i}: server tools ('{tool.type}') are not supported; send tools with an input_schema",
                param=f"tools.{i}.type",
            )
        if tool.input_schema is None or tool.input_schema.get("type") != "object":
            what = "Field required" if tool.input_schema is None else "must be a JSON schema of type 'object'"
            raise InvalidRequest(f"tools.{i}.input_schema: {what}", param=f"tools.{i}.input_schema")
        function = {
            "name": tool.name, "description": tool.description, "parameters": tool.input_schema, "strict": tool.strict
        }  # fmt: skip
        tools.append({"type": "function", "function": {k: v for k, v in function.items() if v is not None}})
    out: dict[str, Any] = {"tools": tools}
    choice = req.tool_choice
    if choice is None:
        return out
    if choice.type == "tool":
        if not any(t.name == choice.name for t in req.tools):
            raise InvalidRequest(f"tool_choice.name: no tool is named {choice.name!r}", param="tool_choice.name")
        out["tool_choice"] = {"type": "function", "function": {"name": choice.name}}
    else:
        out["tool_choice"] = {"auto": "auto", "any": "required", "none": "none"}[choice.type]
    if choice.disable_parallel_tool_use:
        out["parallel_tool_calls"] = False
    return out


def prompt_tokens(messages: list[dict[str, Any]], tools: dict[str, Any], cell: Cell) -> int:
    """As /v1 chat counts them (`params.chat_prompt_tokens`)."""
    return chat_prompt_tokens(cell, messages, tools.get("tools"), tools.get("tool_choice"))


def _forwarded(req: a.MessagesRequest, unknown: UnknownFields) -> dict[str, Any]:
    """Unknown fields, forwarded as /v1 chat forwards them; those that would change the answer's shape refused."""
    extra = req.model_extra or {}
    for name in extra:
        if name in REFUSED:
            raise InvalidRequest(f"{name}: Extra inputs are not permitted on the Messages API", param=name)
    if extra:
        unknown.note(extra)
    return dict(extra)


def _output_config(req: a.CountTokensRequest) -> None:
    if req.output_config and req.output_config.get("format") is not None:
        raise InvalidRequest("output_config.format: structured outputs are not supported", param="output_config")


# --- the answer ---
def _stop(finish: str | None, matched: Any, stops: list[str], called: bool) -> tuple[str, str | None]:
    """Anthropic's stop_reason and stop_sequence for an OpenAI finish_reason (vLLM names the stop string matched)."""
    reason = STOP_REASONS.get(finish or "stop", "end_turn")
    if called and reason == "end_turn":
        return "tool_use", None
    if reason == "end_turn" and isinstance(matched, str) and matched in stops:
        return "stop_sequence", matched
    return reason, None


def _usage(usage: dict[str, Any], prompt: str = "input_tokens") -> dict[str, Any]:
    """Anthropic's usage: input_tokens leave out what the engine read from its prompt cache."""
    details = usage.get("prompt_tokens_details")
    cached = details.get("cached_tokens") if isinstance(details, dict) else None
    cached = cached if isinstance(cached, int) and 0 < cached <= usage["prompt_tokens"] else 0
    out = {prompt: usage["prompt_tokens"] - cached, "output_tokens": usage.get("completion_tokens", 0)}
    if cached:
        out["cache_read_input_tokens"] = cached
    return out


def _input(arguments: Any) -> dict[str, Any]:
    """A tool call's arguments as the object Anthropic's `input` is; an engine that sent anything else failed."""
    if arguments in (None, ""):
        return {}
    try:
        parsed = orjson.loads(arguments) if isinstance(arguments, str | bytes) else arguments
    except orjson.JSONDecodeError:
        parsed = None
    if not isinstance(parsed, dict):
        raise UpstreamError("the model called a tool with arguments that are not a JSON object")
    return parsed


class _Blocks:
    """A stream's content blocks, opened and closed in order as text and tool-call deltas arrive."""

    def __init__(self) -> None:
        self.index = -1
        self.open: str | None = None  # "text", or the OpenAI index of the tool call being streamed
        self.called = False

    def _start(self, key: str, block: dict[str, Any]) -> list[bytes]:
        out = self.close()
        self.index += 1
        self.open = key
        return [*out, sse_event("content_block_start", {"type": "content_block_start", "index": self.index,
                                                    "content_block": block})]  # fmt: skip

    def _delta(self, delta: dict[str, Any]) -> bytes:
        return sse_event("content_block_delta", {"type": "content_block_delta", "index": self.index, "delta": delta})

    def text(self, text: str) -> list[bytes]:
        out = [] if self.open == "text" else self._start("text", {"type": "text", "text": ""})
        return [*out, self._delta({"type": "text_delta", "text": text})]

    def tool(self, call: dict[str, Any]) -> list[bytes]:
        key = f"tool:{call.get('index', 0)}"
        out: list[bytes] = []
        function = call.get("function") or {}
        if self.open != key:
            if not (call.get("id") or function.get("name")):
                raise UpstreamError("the upstream streamed a tool call's arguments after another call began")
            self.called = True
            tool_id = call.get("id") or f"toolu_{request_id()}"
            block: dict[str, Any] = {"type": "tool_use", "id": tool_id, "name": function.get("name") or "", "input": {}}
            out = self._start(key, block)
        piece = function.get("arguments")
        if isinstance(piece, str) and piece:
            out.append(self._delta({"type": "input_json_delta", "partial_json": piece}))
        return out

    def close(self) -> list[bytes]:
        if self.open is None:
            return []
        self.open = None
        return [sse_event("content_block_stop", {"type": "content_block_stop", "index": self.index})]


class Messages(Protocol):
    name = "messages"
    route = "chat/completions"
    kind = "chat"
    ping: ClassVar[bytes] = sse_event("ping", {"type": "ping"})

    def prepare(self, raw: dict[str, Any], cell: Cell, unknown: UnknownFields) -> Prepared:
        need_generative(cell)
        req = validate(a.MessagesRequest, raw, None)
        _output_config(req)
        chat: dict[str, Any] = _forwarded(req, unknown)
        messages = chat_messages(req)
        tools = chat_tools(req)
        chat.update(messages=messages, **tools, stream=bool(req.stream))
        for name in ("temperature", "top_p", "top_k"):
            if getattr(req, name) is not None:
                chat[name] = getattr(req, name)
        if req.stop_sequences:
            if len(req.stop_sequences) > 4:
                raise InvalidRequest("stop_sequences: at most 4 are supported here", param="stop_sequences")
            chat["stop"] = req.stop_sequences
        prompt = prompt_tokens(messages, tools, cell)
        room = cell.model.context_length - prompt
        chat["max_tokens"] = min(req.max_tokens, room) if room > 0 else req.max_tokens
        return prepare_chat(validate(ChatCompletionRequest, chat), chat, cell, prompt)

    def count_tokens(self, raw: dict[str, Any], cell: Cell) -> int:
        need_generative(cell)
        req = validate(a.CountTokensRequest, raw)
        messages = chat_messages(req)
        return prompt_tokens(messages, chat_tools(req), cell)

    def normalized(self, data: dict[str, Any], call: Call) -> dict[str, Any]:
        body = super().normalized(data, call)
        # Checked before settlement, so that an answer the client cannot be given is not charged.
        for choice in body["choices"]:
            for tool_call in (choice.get("message") or {}).get("tool_calls") or ():
                _input((tool_call.get("function") or {}).get("arguments"))
        return body

    def answer(self, body: dict[str, Any], call: Call) -> dict[str, Any]:
        choice = body["choices"][0]
        message = choice.get("message") or {}
        content: list[dict[str, Any]] = []
        if isinstance(message.get("content"), str) and message["content"]:
            content.append({"type": "text", "text": message["content"]})
        for tool_call in message.get("tool_calls") or ():
            function = tool_call.get("function") or {}
            tool_id = tool_call.get("id") or f"toolu_{request_id()}"
            content.append(
                {"type": "tool_use", "id": tool_id, "name": function.get("name") or "",
                 "input": _input(function.get("arguments"))}
            )  # fmt: skip
        stops = call.raw.get("stop_sequences") or []
        called = bool(message.get("tool_calls"))
        reason, sequence = _stop(choice.get("finish_reason"), choice.get("stop_reason"), stops, called)
        out = {
            "id": f"msg_{call.admission.request_id}",
            "type": "message",
            "role": "assistant",
            "model": body["model"],
            "content": content,
            "stop_reason": reason,
            "stop_sequence": sequence,
            "usage": _usage(body["usage"]),
        }
        if reason == "refusal":
            out["stop_details"] = REFUSAL
        return out

    async def events(self, chunks: AsyncIterator[dict[str, Any]], call: Call) -> AsyncIterator[bytes]:
        message: dict[str, Any] = {
            "id": f"msg_{call.admission.request_id}",
            "type": "message",
            "role": "assistant",
            "model": call.cell.model.name,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": call.prepared.prompt_tokens, "output_tokens": 0},
        }
        yield sse_event("message_start", {"type": "message_start", "message": message})
        yield self.ping
        blocks = _Blocks()
        finish: str | None = None
        matched: Any = None
        async for chunk in chunks:
            choice = chunk["choices"][0]  # one choice: `n` is refused
            delta = choice.get("delta") or {}
            if isinstance(delta.get("content"), str) and delta["content"]:
                for piece in blocks.text(delta["content"]):
                    yield piece
            for tool_call in delta.get("tool_calls") or ():
                for piece in blocks.tool(tool_call):
                    yield piece
            if choice.get("finish_reason") is not None:
                finish, matched = choice["finish_reason"], choice.get("stop_reason")
        for piece in blocks.close():
            yield piece
        reason, sequence = _stop(finish, matched, call.raw.get("stop_sequences") or [], blocks.called)
        stopped: dict[str, Any] = {"stop_reason": reason, "stop_sequence": sequence}
        if reason == "refusal":
            stopped["stop_details"] = REFUSAL
        usage = _usage(call.norm.usage())
        yield sse_event("message_delta", {"type": "message_delta", "delta": stopped, "usage": usage})
        yield sse_event("message_stop", {"type": "message_stop"})

    def stream_error(self, exc: MxnError) -> bytes:
        return sse_event("error", error_body(exc)[1])

    def stream_end(self) -> bytes:
        return b""  # Anthropic's stream has no [DONE]: message_stop, or an error event, is its end

    def error_response(self, exc: MxnError) -> Response:
        status, body = error_body(exc)
        return json_response(body, status, exc.headers)


def error_body(exc: MxnError) -> tuple[int, dict[str, Any]]:
    """Anthropic's status and error for an mxn error. Input refused by moderation is a 400, as Anthropic's own."""
    status = 400 if exc.code == "content_filter" else exc.status
    kind = ERROR_TYPES.get(status) or ("invalid_request_error" if status < 500 else "api_error")
    body: dict[str, Any] = {"type": "error", "error": {"type": kind, "message": exc.message}}
    rid = exc.headers.get("x-request-id")
    if rid:
        body["request_id"] = rid
    return status, body


MESSAGES = Messages()
