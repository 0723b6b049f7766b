"""OpenAI (legacy) Completions: text in, text out."""

from __future__ import annotations

from typing import Any

from mxn.catalog.registry import Cell
from mxn.gateway.body import UnknownFields, validate
from mxn.gateway.params import Prepared, prepare_completion
from mxn.gateway.protocols.base import Protocol, need_generative
from mxn.protocol.openai import CompletionRequest


class Completions(Protocol):
    name = "completions"
    route = "completions"
    kind = "text"

    def prepare(self, raw: dict[str, Any], cell: Cell, unknown: UnknownFields) -> Prepared:
        need_generative(cell)
        return prepare_completion(validate(CompletionRequest, raw, unknown), raw, cell)


COMPLETIONS = Completions()
