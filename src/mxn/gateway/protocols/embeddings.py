"""OpenAI Embeddings: no stream, no completion tokens."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mxn.catalog.registry import Cell
from mxn.errors import InvalidRequest
from mxn.gateway import normalize
from mxn.gateway.body import UnknownFields, validate
from mxn.gateway.params import Prepared
from mxn.gateway.protocols.base import Protocol
from mxn.protocol.openai import EmbeddingRequest

if TYPE_CHECKING:
    from mxn.gateway.pipeline import Call


class Embeddings(Protocol):
    name = "embeddings"
    route = "embeddings"
    kind = "embedding"

    def prepare(self, raw: dict[str, Any], cell: Cell, unknown: UnknownFields) -> Prepared:
        if cell.model.kind != "embedding":
            raise InvalidRequest(
                f"'{cell.model.name}' is not an embedding model", param="model", code="wrong_model_kind"
            )
        req = validate(EmbeddingRequest, raw, unknown)
        req.check()
        inputs = req.input if isinstance(req.input, list) else [req.input]
        tok = cell.model.tokenizer
        prompt_tokens = sum(
            tok.count(x) if isinstance(x, str) else (len(x) if isinstance(x, list) else 1) for x in inputs
        )
        return Prepared(dict(raw, model=cell.model.name), prompt_tokens, 0, False, False)

    def normalized(self, data: dict[str, Any], call: Call) -> dict[str, Any]:
        return normalize.embeddings(data, model=call.cell.model.name, prompt_tokens=call.prepared.prompt_tokens)


EMBEDDINGS = Embeddings()
