"""Make whatever an upstream sent into OpenAI's shapes (SPEC §3), filling what it left out."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from mxn.tokens import Tokenizer

# Ids and the envelope live in mxn.wire, which the embedded engine's server shares; new_id and request_id stay
# importable from here.
from mxn.wire import completion_id, envelope, finish_reason, object_name
from mxn.wire import new_id as new_id
from mxn.wire import request_id as request_id
from mxn.wire import usage as _usage

USAGE_DETAILS = ("prompt_tokens_details", "completion_tokens_details")


def settle_usage(upstream: Any, prompt_tokens: int, completion_tokens: Callable[[], int]) -> dict[str, Any]:
    """The upstream's usage when it is complete; our own count for whatever it omitted (`completion_tokens` counts
    the answer's text, only when needed). Its details (cached prompt tokens, reasoning tokens) pass through as the
    engine gave them."""
    if isinstance(upstream, dict):
        prompt = upstream.get("prompt_tokens")
        completion = upstream.get("completion_tokens")
        prompt = prompt if isinstance(prompt, int) else prompt_tokens
        completion = completion if isinstance(completion, int) else completion_tokens()
        usage: dict[str, Any] = _usage(prompt, completion)
        for name in USAGE_DETAILS:
            if isinstance(upstream.get(name), dict):
                usage[name] = upstream[name]
        return usage
    return _usage(prompt_tokens, completion_tokens())


def response(data: dict[str, Any], *, kind: str, model: str, prompt_tokens: int, tok: Tokenizer) -> dict[str, Any]:
    """A complete (non-stream) chat or text completion."""
    chat = kind == "chat"
    # In place: the upstream's own fields keep their places, ours follow in OpenAI's order.
    data.update(envelope(data.get("id") or completion_id(chat), chat, model, data.get("created") or None))
    texts = []
    choices = data.get("choices") or []
    for i, choice in enumerate(choices):
        choice.setdefault("index", i)
        choice.setdefault("logprobs", None)
        choice["finish_reason"] = finish_reason(choice.get("finish_reason")) or "stop"
        if chat:
            message = choice.setdefault("message", {})
            message.setdefault("role", "assistant")
            message.setdefault("content", None)
            message.setdefault("refusal", None)
            text = message.get("content")
        else:
            text = choice.setdefault("text", "")
        if isinstance(text, str):
            texts.append(text)
    data["choices"] = choices
    data["usage"] = settle_usage(data.get("usage"), prompt_tokens, lambda: sum(map(tok.count, texts)))
    return data


class StreamNormalizer:
    """Fixes one stream chunk at a time; keeps the stream's id and created, and counts its text."""

    def __init__(self, *, kind: str, model: str, prompt_tokens: int, tok: Tokenizer) -> None:
        self.chat = kind == "chat"
        self.model = model
        self.prompt_tokens = prompt_tokens
        self.tok = tok
        self.id: str | None = None
        self.created: int | None = None
        self.texts: dict[int, list[str]] = {}
        self.upstream_usage: dict[str, Any] | None = None
        self.finished = False

    def chunk(self, c: dict[str, Any]) -> dict[str, Any] | None:
        """The chunk to send on, or None when it carried nothing for the client (a usage-only chunk)."""
        if self.id is None:
            self.id = c.get("id") or completion_id(self.chat)
            self.created = c.get("created") or int(time.time())
        usage = c.pop("usage", None)
        if isinstance(usage, dict):
            self.upstream_usage = usage
        choices = c.get("choices") or []
        if not choices:
            return None
        c["id"] = self.id
        c["object"] = object_name(self.chat, chunk=True)
        c["created"] = self.created
        c["model"] = self.model
        for i, choice in enumerate(choices):
            index = choice.setdefault("index", i)
            choice.setdefault("logprobs", None)
            choice["finish_reason"] = finish_reason(choice.get("finish_reason"))
            if choice["finish_reason"] is not None:
                self.finished = True
            if self.chat:
                text = (choice.setdefault("delta", {}) or {}).get("content")
            else:
                text = choice.setdefault("text", "")
            if isinstance(text, str) and text:
                self.texts.setdefault(index, []).append(text)
        return c

    def usage(self) -> dict[str, Any]:
        def counted() -> int:
            return sum(self.tok.count("".join(parts)) for parts in self.texts.values())

        return settle_usage(self.upstream_usage, self.prompt_tokens, counted)

    def _envelope(self, choices: list[dict[str, Any]]) -> dict[str, Any]:
        head = envelope(self.id or completion_id(self.chat), self.chat, self.model, self.created or None, chunk=True)
        return {**head, "choices": choices}

    def text_chunk(self, texts: dict[int, str], finish_reason: str | None = None) -> dict[str, Any]:
        """A chunk of our own: these texts per choice, or (with a finish_reason) the end of every choice."""
        indices = sorted(texts) if finish_reason is None else sorted(set(self.texts) | {0})
        choices = []
        for i in indices:
            text = texts.get(i, "")
            body = {"delta": {"content": text} if text else {}} if self.chat else {"text": text}
            choices.append({"index": i, **body, "logprobs": None, "finish_reason": finish_reason})
        return self._envelope(choices)

    def usage_chunk(self) -> dict[str, Any]:
        """OpenAI's closing chunk for `stream_options.include_usage`: no choices, the usage."""
        return {**self._envelope([]), "usage": self.usage()}


def embeddings(data: dict[str, Any], *, model: str, prompt_tokens: int) -> dict[str, Any]:
    items = data.get("data") or []
    for i, item in enumerate(items):
        item.setdefault("object", "embedding")
        item.setdefault("index", i)
    usage = data.get("usage")
    prompt = usage.get("prompt_tokens") if isinstance(usage, dict) else None
    prompt = prompt if isinstance(prompt, int) else prompt_tokens
    return {"object": "list", "data": items, "model": model, "usage": {"prompt_tokens": prompt, "total_tokens": prompt}}
