"""Content moderation as the request chain uses it: an input step, and a check or transform of the answer.

Each is a no-op for a cell with moderation off (its `rules` are None)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from mxn.moderation import check
from mxn.moderation.check import StreamGuard, moderate_chunk

if TYPE_CHECKING:
    from mxn.gateway.pipeline import Call


async def check_input(call: Call) -> None:
    """Refuse (403 content_filter) a request whose text hits a rule or a classifier."""
    rules = call.cell.rules
    if rules is None or call.protocol.kind == "embedding":
        return
    await check.check_input(call.state.upstream, rules, call.prepared.body, call.cell.name)


async def check_output(call: Call, body: dict[str, Any]) -> None:
    """Cut a complete answer before its first hit."""
    rules = call.cell.rules
    if rules is None or call.protocol.kind == "embedding":
        return
    await check.check_output(call.state.upstream, rules, body, call.protocol.kind == "chat")
    if body.get("blocked"):
        call.blocked = "content_filter"


def output_stream(call: Call, chunks: AsyncIterator[dict[str, Any]]) -> AsyncIterator[dict[str, Any]]:
    """A stream's text held back while it may still become a hit, and cut at the first."""
    rules = call.cell.rules
    if rules is None:
        return chunks
    return _guarded(call, StreamGuard(rules, call.state.upstream), chunks)


async def _guarded(
    call: Call, guard: StreamGuard, chunks: AsyncIterator[dict[str, Any]]
) -> AsyncIterator[dict[str, Any]]:
    norm = call.norm
    async for chunk in chunks:
        if await moderate_chunk(guard, chunk, norm.chat):  # a chunk whose text is all held back for now is not sent
            yield chunk
        if guard.blocked:
            break
    else:
        if guard.held():
            # The upstream ended without a finish_reason: what was held back still goes out (or is cut).
            yield norm.text_chunk({i: await guard.feed(i, "", True) for i in guard.held()})
    if guard.blocked:
        # Generation stops here (closing the stream cancels it upstream); the client is told why.
        call.blocked = "content_filter"
        yield {**norm.text_chunk({}, "content_filter"), "blocked": True}
