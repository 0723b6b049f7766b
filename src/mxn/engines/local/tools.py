"""Tool calling on the embedded engine, in the Hermes/Qwen format.

Tools go to the model through its chat template (`apply_chat_template(..., tools=...)`); the model calls one by
writing `<tool_call>\n{"name": ..., "arguments": {...}}\n</tool_call>`, several times if it likes. Those blocks
become OpenAI `tool_calls`; the text around them stays the answer's content. A block that is not such a JSON object
stays text: the client sees what the model wrote rather than a call that was never made.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from typing import Any

from mxn.errors import InvalidRequest

OPEN, CLOSE = "<tool_call>", "</tool_call>"
_PROBE = "mxn_probe_tool"


@dataclass(frozen=True, slots=True)
class ToolCall:
    id: str
    name: str
    arguments: str  # a JSON object, as text (what OpenAI sends)

    def openai(self) -> dict[str, Any]:
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}


def parse_call(body: str) -> ToolCall | None:
    """The call a `<tool_call>` block holds, or None when it is not a JSON object with a name and arguments."""
    try:
        data = json.loads(body)
    except ValueError:
        return None
    if not isinstance(data, dict) or not isinstance(data.get("name"), str) or not data["name"]:
        return None
    args = data.get("arguments", {})
    if isinstance(args, str):  # some models write the arguments as a JSON string, as OpenAI sends them
        try:
            args = json.loads(args)
        except ValueError:
            return None
    if not isinstance(args, dict):
        return None
    return ToolCall(f"call_{secrets.token_hex(12)}", data["name"], json.dumps(args, ensure_ascii=False))


def _partial_tag(text: str) -> int:
    """Length of the longest end of `text` that could begin a `<tool_call>` tag."""
    for n in range(min(len(OPEN) - 1, len(text)), 0, -1):
        if text.endswith(OPEN[:n]):
            return n
    return 0


class ToolSplitter:
    """Splits a model's growing output into text and whole tool calls, as it streams.

    Text leaves as soon as it cannot be the start of a `<tool_call>` tag (a partial tag is held back); a call leaves
    once its block is closed and its body parsed. Whitespace at the end of the text waits for more text, so the
    blank lines around calls do not become content; the same splitter makes the non-stream answer, so both agree.
    """

    def __init__(self, prefix: str = "") -> None:
        self.buffer = ""
        self.inside = False
        self.space = ""  # trailing whitespace held back
        self.calls = 0
        self.pending: list[str | ToolCall] = []
        self.feed(prefix)  # a forced call's opening (tool_choice names a function): no text comes of it

    def feed(self, delta: str) -> list[str | ToolCall]:
        """What of the output so far can be sent: texts and calls, in order."""
        self.buffer += delta
        while True:
            if not self.inside:
                start = self.buffer.find(OPEN)
                if start == -1:
                    keep = len(self.buffer) - _partial_tag(self.buffer)
                    self._text(self.buffer[:keep])
                    self.buffer = self.buffer[keep:]
                    break
                self._text(self.buffer[:start])
                self.buffer, self.inside = self.buffer[start + len(OPEN) :], True
            else:
                end = self.buffer.find(CLOSE)
                if end == -1:
                    break
                body, self.buffer, self.inside = self.buffer[:end], self.buffer[end + len(CLOSE) :], False
                call = parse_call(body)
                if call is None:
                    self._text(OPEN + body + CLOSE)
                else:
                    self.calls += 1
                    self.pending.append(call)
        out, self.pending = self.pending, []
        return out

    def finish(self) -> list[str | ToolCall]:
        """The rest, once the output has ended: an unclosed block is text; held whitespace stays only in an
        answer without calls (where it is the model's text as written)."""
        rest = (OPEN if self.inside else "") + self.buffer
        self.buffer, self.inside = "", False
        self._text(rest)
        if self.space and not self.calls:
            self.pending.append(self.space)
        self.space = ""
        out, self.pending = self.pending, []
        return out

    def _text(self, text: str) -> None:
        text = self.space + text
        kept = text.rstrip()
        self.space = text[len(kept) :]
        if kept:
            self.pending.append(kept)


def split(text: str) -> tuple[str | None, list[ToolCall]]:
    """A whole output's content (None when only calls remain) and its calls."""
    splitter = ToolSplitter()
    parts = splitter.feed(text) + splitter.finish()
    calls = [p for p in parts if isinstance(p, ToolCall)]
    content = "".join(p for p in parts if isinstance(p, str))
    return (content or None) if calls else content, calls


@dataclass(frozen=True, slots=True)
class ToolPlan:
    """What a request's `tools` and `tool_choice` ask of the prompt: tools for the template, and the opening of a
    call the answer is made to start with ('required', or a named function)."""

    tools: list[dict[str, Any]] | None
    prefix: str = ""


def plan(body: dict[str, Any]) -> ToolPlan:
    """Check `tools` and `tool_choice` and decide how to honour them. A small model cannot be trusted to call when
    told to, so 'required' and a named function are kept by writing the call's opening for it."""
    tools, choice = body.get("tools"), body.get("tool_choice")
    if not tools:
        if choice not in (None, "none", "auto"):
            raise InvalidRequest("'tool_choice' needs 'tools'", param="tool_choice")
        return ToolPlan(None)
    names = [_tool_name(t, i) for i, t in enumerate(tools)]
    if choice in (None, "auto"):
        return ToolPlan(tools)
    if choice == "none":
        return ToolPlan(None)
    if choice == "required":
        return ToolPlan(tools, OPEN + '\n{"name": "')
    name = (choice.get("function") or {}).get("name") if isinstance(choice, dict) else None
    if not isinstance(choice, dict) or choice.get("type") != "function" or not isinstance(name, str):
        raise InvalidRequest(
            "'tool_choice' is 'none', 'auto', 'required' or {'type': 'function', 'function': {'name': ...}}",
            param="tool_choice",
        )
    if name not in names:
        raise InvalidRequest(f"'tool_choice' names '{name}', which is not among the tools", param="tool_choice")
    # No space after the colon: a tokenizer joins it to what follows (` {"`), as the model was trained to write it.
    return ToolPlan(tools, OPEN + "\n" + json.dumps({"name": name}, ensure_ascii=False)[:-1] + ', "arguments":')


def _tool_name(tool: Any, index: int) -> str:
    function = tool.get("function") if isinstance(tool, dict) else None
    if not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(function, dict):
        raise InvalidRequest(f"tools[{index}] must be {{'type': 'function', 'function': {{...}}}}", param="tools")
    name = function.get("name")
    if not isinstance(name, str) or not name:
        raise InvalidRequest(f"tools[{index}].function needs a 'name'", param="tools")
    return name


def template_message(message: dict[str, Any]) -> dict[str, Any]:
    """A message as chat templates expect it: a call's arguments as an object, not OpenAI's JSON text."""
    calls = message.get("tool_calls")
    if not isinstance(calls, list):
        return message
    out = []
    for call in calls:
        function = call.get("function") if isinstance(call, dict) else None
        if isinstance(function, dict) and isinstance(function.get("arguments"), str):
            try:
                function = {**function, "arguments": json.loads(function["arguments"])}
            except ValueError:
                pass  # the template gets the text as it came
            call = {**call, "function": function}
        out.append(call)
    return {**message, "tool_calls": out}


def renders_tools(tokenizer: Any) -> bool:
    """Whether the model's chat template shows tools to the model: rendered with a probe tool, it must name it."""
    if not tokenizer.chat_template:
        return False
    messages = [{"role": "user", "content": "hi"}]
    probe = {"type": "function", "function": {"name": _PROBE, "parameters": {"type": "object", "properties": {}}}}
    try:
        text = tokenizer.apply_chat_template(messages, tools=[probe], tokenize=False, add_generation_prompt=True)
    except Exception:  # a template that fails on tools does not support them either
        return False
    return isinstance(text, str) and _PROBE in text
