"""OpenAI Chat Completions: the internal request and answer themselves."""

from __future__ import annotations

from typing import Any

from mxn.catalog.registry import Cell
from mxn.gateway.body import UnknownFields, validate
from mxn.gateway.params import Prepared, prepare_chat
from mxn.gateway.protocols.base import Protocol, need_generative
from mxn.protocol.openai import ChatCompletionRequest


class ChatCompletions(Protocol):
    name = "chat/completions"
    route = "chat/completions"
    kind = "chat"

    def prepare(self, raw: dict[str, Any], cell: Cell, unknown: UnknownFields) -> Prepared:
        need_generative(cell)
        return prepare_chat(validate(ChatCompletionRequest, raw, unknown), raw, cell)


CHAT = ChatCompletions()
