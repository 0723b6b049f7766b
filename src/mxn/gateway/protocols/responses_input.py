"""The Responses request as the internal chat request: input items (and those `previous_response_id` brought) as
chat messages, function tools as chat tools, `text.format` as a `response_format`. Anything a chat completion
cannot carry is refused with a 400 naming it."""

from __future__ import annotations

from typing import Any

from mxn.errors import InvalidRequest
from mxn.protocol.responses import FIELDS, ResponsesRequest, message_item, new_id

ROLES = {"user": "user", "assistant": "assistant", "system": "system", "developer": "system"}
TEXT_PARTS = {"input_text", "output_text", "text"}
NO_VISION = "no model served here takes images or files: send text"


def chat_body(req: ResponsesRequest, history: list[Any]) -> dict[str, Any]:
    body: dict[str, Any] = {k: v for k, v in (req.model_extra or {}).items() if k not in FIELDS}
    messages = [{"role": "system", "content": req.instructions}] if req.instructions is not None else []
    messages += chat_messages(history, "previous_response_id")
    items: list[Any] = [{"role": "user", "content": req.input}] if isinstance(req.input, str) else req.input
    messages = chat_messages(items, "input", messages)
    if not any(m["role"] != "system" for m in messages):
        raise InvalidRequest("'input' has nothing for the model to answer: give at least one item", param="input")
    body["model"] = req.model
    body["messages"] = messages
    for name, value in (
        ("max_tokens", req.max_output_tokens),
        ("temperature", req.temperature),
        ("top_p", req.top_p),
        ("user", req.user),
        ("stream", req.stream),
    ):
        if value is not None:
            body[name] = value
    if req.tools:
        body["tools"] = chat_tools(req.tools)
        if req.tool_choice is not None:
            body["tool_choice"] = chat_tool_choice(req.tool_choice)
        if req.parallel_tool_calls is not None:
            body["parallel_tool_calls"] = req.parallel_tool_calls
    if req.text is not None and (fmt := response_format(req.text.format)) is not None:
        body["response_format"] = fmt
    return body


def chat_messages(items: list[Any], where: str, messages: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Input items as chat messages; a function_call joins the assistant message before it (its tool_calls)."""
    out = messages if messages is not None else []
    for i, item in enumerate(items):
        at = f"{where}[{i}]"
        if not isinstance(item, dict):
            raise InvalidRequest(f"{at}: an input item is an object", param=at)
        kind = item.get("type", "message")
        if kind == "message":
            role = ROLES.get(item.get("role"))  # type: ignore[arg-type]
            if role is None:
                raise InvalidRequest(
                    f"{at}.role: one of 'user', 'assistant', 'system', 'developer'", param=f"{at}.role"
                )
            out.append({"role": role, "content": _text(item.get("content"), f"{at}.content")})
        elif kind == "function_call":
            call = {
                "id": _string(item, "call_id", at),
                "type": "function",
                "function": {"name": _string(item, "name", at), "arguments": _string(item, "arguments", at)},
            }
            if out and out[-1]["role"] == "assistant":
                out[-1].setdefault("tool_calls", []).append(call)
            else:
                out.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            output = item.get("output")
            text = output if isinstance(output, str) else _text(output, f"{at}.output")
            out.append({"role": "tool", "tool_call_id": _string(item, "call_id", at), "content": text})
        elif kind == "reasoning":
            continue  # a reasoning item (another provider's) carries nothing a model served here reads
        else:
            raise InvalidRequest(f"{at}.type: input items of type '{kind}' are not supported", param=f"{at}.type")
    return out


def _text(content: Any, at: str) -> str:
    """A message's content as text: a string, or text parts joined; images and files are refused."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise InvalidRequest(f"{at}: a string or a list of content parts", param=at)
    texts = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in TEXT_PARTS and isinstance(part.get("text"), str):  # type: ignore[union-attr]
            texts.append(part["text"])  # type: ignore[index]
        elif kind == "refusal" and isinstance(part.get("refusal"), str):  # type: ignore[union-attr]
            texts.append(part["refusal"])  # type: ignore[index]
        elif kind in ("input_image", "input_file", "input_audio"):
            raise InvalidRequest(f"{at}[{j}]: '{kind}' is not supported: {NO_VISION}", param=f"{at}[{j}].type")
        else:
            raise InvalidRequest(f"{at}[{j}]: a content part with a 'type' and its text", param=f"{at}[{j}]")
    return "\n".join(texts)


def _string(item: dict[str, Any], name: str, at: str) -> str:
    value = item.get(name)
    if not isinstance(value, str):
        raise InvalidRequest(f"{at}.{name}: a string is required", param=f"{at}.{name}")
    return value


def chat_tools(tools: list[Any]) -> list[dict[str, Any]]:
    """Responses' flat function tools as chat tools; any other kind (built-in tools mxn does not run) → 400."""
    out = []
    for i, tool in enumerate(tools):
        at = f"tools[{i}]"
        kind = tool.get("type") if isinstance(tool, dict) else None
        if kind != "function":
            raise InvalidRequest(
                f"tools of type '{kind}' are not supported: only 'function' tools (run by the client) are",
                param=f"{at}.type",
                code="unsupported_tool",
            )
        fn: dict[str, Any] = {"name": _string(tool, "name", at)}  # type: ignore[arg-type]
        for name in ("description", "parameters", "strict"):
            if tool.get(name) is not None:  # type: ignore[union-attr]
                fn[name] = tool[name]  # type: ignore[index]
        out.append({"type": "function", "function": fn})
    return out


def chat_tool_choice(choice: str | dict[str, Any]) -> str | dict[str, Any]:
    if isinstance(choice, str):
        if choice not in ("none", "auto", "required"):
            raise InvalidRequest("'tool_choice': 'none', 'auto', 'required' or a function", param="tool_choice")
        return choice
    if choice.get("type") == "function" and isinstance(choice.get("name"), str):
        return {"type": "function", "function": {"name": choice["name"]}}
    raise InvalidRequest(
        f"'tool_choice' of type '{choice.get('type')}' is not supported: name a function", param="tool_choice"
    )


def response_format(fmt: dict[str, Any] | None) -> dict[str, Any] | None:
    """`text.format` as chat's `response_format`; plain text is the default and needs none."""
    kind = (fmt or {}).get("type", "text")
    if fmt is None or kind == "text":
        return None
    if kind == "json_object":
        return {"type": "json_object"}
    if kind == "json_schema":
        if not isinstance(fmt.get("name"), str) or not isinstance(fmt.get("schema"), dict):
            raise InvalidRequest("'text.format' of type json_schema needs a 'name' and a 'schema'", param="text.format")
        schema = {k: fmt[k] for k in ("name", "description", "schema", "strict") if fmt.get(k) is not None}
        return {"type": "json_schema", "json_schema": schema}
    raise InvalidRequest(f"'text.format' of type '{kind}' is not supported", param="text.format.type")


# --- items as they are stored (and listed by GET /v1/responses/{id}/input_items) ---
def input_items(raw_input: str | list[Any]) -> list[dict[str, Any]]:
    """The client's input as items with ids, in the shapes OpenAI lists them in (already checked by `prepare`)."""
    items = [{"role": "user", "content": raw_input}] if isinstance(raw_input, str) else raw_input
    out = []
    for item in items:
        kind = item.get("type", "message")
        if kind == "message":
            content = item["content"]
            role = item["role"]
            if role == "assistant":
                text = content if isinstance(content, str) else _text(content, "input")
                out.append(message_item(_id(item, "msg"), text, "completed"))
                continue
            parts = [{"type": "input_text", "text": content}] if isinstance(content, str) else content
            out.append({"id": _id(item, "msg"), "type": "message", "role": role, "status": "completed",
                        "content": [{"type": "input_text", "text": p.get("text", "")} for p in parts]})  # fmt: skip
        elif kind in ("function_call", "function_call_output"):
            prefix = "fc" if kind == "function_call" else "fco"
            out.append({**item, "id": _id(item, prefix), "status": item.get("status") or "completed"})
    return out


def _id(item: dict[str, Any], prefix: str) -> str:
    """The item's own id (a client may send items back with theirs), or a new one."""
    given = item.get("id")
    return given if isinstance(given, str) and given else new_id(prefix)
