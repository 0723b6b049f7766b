"""What a front-end protocol is to the request chain, and the OpenAI wire format most of them share."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from starlette.responses import Response

from mxn.catalog.registry import Cell
from mxn.errors import InvalidRequest, MxnError
from mxn.gateway import normalize
from mxn.gateway.body import UnknownFields
from mxn.gateway.normalize import StreamNormalizer
from mxn.gateway.params import Prepared
from mxn.wire import DONE, error_response, sse

if TYPE_CHECKING:
    from mxn.gateway.pipeline import Call


class Protocol:
    """One front-end protocol. The internal request is an OpenAI chat or text completion (or an embedding) body;
    the internal answer is an OpenAI response, or a stream of normalised OpenAI chunks."""

    name: ClassVar[str]  # as usage records and metrics name it
    route: ClassVar[str]  # the internal route: the OpenAI path an engine is called on
    kind: ClassVar[Literal["chat", "text", "embedding"]]  # what the internal answer looks like

    async def recall(self, call: Call) -> None:
        """Before `prepare`: fetch what the request refers to in the store (a previous response, say) into
        `call.raw`. Most protocols refer to nothing."""

    def prepare(self, raw: dict[str, Any], cell: Cell, unknown: UnknownFields) -> Prepared:
        """The internal request, filled from the model's defaults and checked against its context."""
        raise NotImplementedError

    def normalized(self, data: dict[str, Any], call: Call) -> dict[str, Any]:
        """The engine's complete answer in OpenAI's shape, with what it left out filled in."""
        return normalize.response(
            data,
            kind=self.kind,
            model=call.cell.model.name,
            prompt_tokens=call.prepared.prompt_tokens,
            tok=call.cell.model.tokenizer,
        )

    def answer(self, body: dict[str, Any], call: Call) -> dict[str, Any]:
        """The client's body for a complete internal answer (already normalised and moderated)."""
        return body

    async def keep(self, out: dict[str, Any], call: Call) -> None:
        """After a complete answer is settled: keep what the protocol stores of it (a stream's `events` does this
        itself at its end). Most protocols keep nothing."""

    async def events(self, chunks: AsyncIterator[dict[str, Any]], call: Call) -> AsyncIterator[bytes]:
        """The client's stream, one piece per internal chunk; after the last, whatever closes a finished answer."""
        async for chunk in chunks:
            yield sse(chunk)
        if call.prepared.include_usage:
            yield sse(call.norm.usage_chunk())

    def stream_error(self, exc: MxnError) -> bytes:
        """An error once the stream has begun is data, in the protocol's own shape."""
        return sse(exc.body())

    def stream_end(self) -> bytes:
        return DONE

    def error_response(self, exc: MxnError) -> Response:
        """An error before anything was sent, in the protocol's own shape."""
        return error_response(exc)

    def normalizer(self, call: Call) -> StreamNormalizer:
        assert self.kind != "embedding"
        return StreamNormalizer(
            kind=self.kind,
            model=call.cell.model.name,
            prompt_tokens=call.prepared.prompt_tokens,
            tok=call.cell.model.tokenizer,
        )


def need_generative(cell: Cell) -> None:
    if cell.model.kind == "embedding":
        raise InvalidRequest(
            f"'{cell.model.name}' is an embedding model; use /v1/embeddings", param="model", code="wrong_model_kind"
        )
