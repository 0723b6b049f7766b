"""OpenAI Responses: the request, fields in the order of OpenAI's docs, and the items and Response object mxn sends.

Unknown request fields are forwarded to the engine, as on /v1/chat/completions. Input items and tools are checked
where they are translated (`gateway/protocols/responses.py`), so that each rejection names its place
(`input[2].content[0]`). Fields mxn accepts and does not act on are listed in README's "Responses API".
"""

from __future__ import annotations

import secrets
import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr

from mxn.errors import InvalidRequest
from mxn.protocol.openai import Number


class ResponseText(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)
    format: dict[str, Any] | None = None
    verbosity: StrictStr | None = None


class ResponsesRequest(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)

    model: StrictStr | None = None
    input: StrictStr | list[Any]
    background: StrictBool | None = None
    conversation: Any = None
    include: list[StrictStr] | None = None
    instructions: StrictStr | None = None
    max_output_tokens: StrictInt | None = Field(default=None, ge=1)
    max_tool_calls: StrictInt | None = Field(default=None, ge=0)
    metadata: dict[str, StrictStr] | None = Field(default=None, max_length=16)
    parallel_tool_calls: StrictBool | None = None
    previous_response_id: StrictStr | None = None
    prompt: Any = None
    prompt_cache_key: StrictStr | None = None
    reasoning: dict[str, Any] | None = None  # accepted and ignored: no reasoning items are made
    safety_identifier: StrictStr | None = None
    service_tier: StrictStr | None = None
    store: StrictBool | None = None
    stream: StrictBool | None = None
    stream_options: dict[str, Any] | None = None
    temperature: Number | None = Field(default=None, ge=0, le=2)
    text: ResponseText | None = None
    tool_choice: StrictStr | dict[str, Any] | None = None
    tools: list[Any] | None = None
    top_logprobs: StrictInt | None = Field(default=None, ge=0, le=20)
    top_p: Number | None = Field(default=None, gt=0, le=1)
    truncation: Literal["auto", "disabled"] | None = None
    user: StrictStr | None = None

    def check(self) -> None:
        """What mxn does not do is refused by name, never quietly dropped."""
        for name, what in (
            ("background", "background mode"),
            ("conversation", "the Conversations API (use previous_response_id)"),
            ("prompt", "prompt templates"),
        ):
            if getattr(self, name) not in (None, False):
                raise InvalidRequest(f"'{name}' is not supported here: mxn has no {what}", param=name)
        if self.top_logprobs:
            raise InvalidRequest("'top_logprobs' is not supported on /v1/responses", param="top_logprobs")
        if self.stream_options is not None and not self.stream:
            raise InvalidRequest("'stream_options' is only allowed when 'stream' is true", param="stream_options")


# The fields of a Responses request that are its own: never forwarded to the engine as they are.
FIELDS = frozenset(ResponsesRequest.model_fields)


def new_id(prefix: str) -> str:
    """OpenAI's form: `resp_...`, `msg_...`, `fc_...`; random, since a stored response is fetched by its id."""
    return f"{prefix}_{secrets.token_hex(24 if prefix == 'resp' else 12)}"


def output_text(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def message_item(item_id: str, text: str | None, status: str) -> dict[str, Any]:
    """The assistant's message; `text` None while it is being streamed (its part comes in an event of its own)."""
    content = [] if text is None else [output_text(text)]
    return {"id": item_id, "type": "message", "status": status, "role": "assistant", "content": content}


def function_call_item(item_id: str, call_id: str, name: str, arguments: str, status: str) -> dict[str, Any]:
    return {
        "id": item_id,
        "type": "function_call",
        "status": status,
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
    }


def usage(chat_usage: dict[str, Any]) -> dict[str, Any]:
    """A chat completion's usage in the Responses form."""
    prompt, completion = chat_usage.get("prompt_tokens", 0), chat_usage.get("completion_tokens", 0)
    cached = (chat_usage.get("prompt_tokens_details") or {}).get("cached_tokens")
    reasoning = (chat_usage.get("completion_tokens_details") or {}).get("reasoning_tokens")
    return {
        "input_tokens": prompt,
        "input_tokens_details": {
            "cached_tokens": cached if isinstance(cached, int) else 0,
            "cache_write_tokens": 0,
        },
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": reasoning if isinstance(reasoning, int) else 0},
        "total_tokens": prompt + completion,
    }


def outcome(finish_reason: str | None, blocked: str | None) -> tuple[str, dict[str, Any] | None]:
    """The response's status and incomplete_details for how its generation ended."""
    if blocked or finish_reason == "content_filter":
        return "incomplete", {"reason": "content_filter"}
    if finish_reason == "length":
        return "incomplete", {"reason": "max_output_tokens"}
    return "completed", None


def response_object(
    req: dict[str, Any],
    sampling: dict[str, Any],
    *,
    response_id: str,
    created_at: int,
    model: str,
    status: str,
    output: list[dict[str, Any]],
    usage: dict[str, Any] | None = None,
    incomplete: dict[str, Any] | None = None,
    error: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A Response: what was made, and the request's own settings echoed as OpenAI echoes them.

    `req` is the client's request; `sampling` the internal one (the model's defaults filled in)."""
    text = req.get("text") or {}
    body: dict[str, Any] = {
        "id": response_id,
        "object": "response",
        "created_at": created_at,
        "status": status,
        "background": False,
        "completed_at": int(time.time()) if status == "completed" else None,
        "error": error,
        "incomplete_details": incomplete,
        "instructions": req.get("instructions"),
        "max_output_tokens": req.get("max_output_tokens"),
        "max_tool_calls": req.get("max_tool_calls"),
        "model": model,
        "output": output,
        "parallel_tool_calls": req.get("parallel_tool_calls", True) is not False,
        "previous_response_id": req.get("previous_response_id"),
        "reasoning": None,
        "store": req.get("store", True) is not False,
        "temperature": sampling.get("temperature", 1.0),
        "text": {**text, "format": text.get("format") or {"type": "text"}},
        "tool_choice": req.get("tool_choice") or "auto",
        "tools": [_echo_tool(t) for t in req.get("tools") or []],
        "top_p": sampling.get("top_p", 1.0),
        "truncation": req.get("truncation") or "disabled",
        "metadata": req.get("metadata") or {},
    }
    if usage is not None:  # not nullable in OpenAI's schema: absent until the response is done
        body["usage"] = usage
    if req.get("user") is not None:
        body["user"] = req["user"]
    return body


def _echo_tool(tool: dict[str, Any]) -> dict[str, Any]:
    """A function tool as OpenAI echoes it: `parameters` and `strict` always present."""
    return {"type": "function", "parameters": None, "strict": None, **tool}
