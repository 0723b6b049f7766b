"""The embedded engine's stream: a job's events as OpenAI-shaped chunks."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from mxn.engines.base import ChunkStream
from mxn.engines.local.scheduler import DELTA, ERROR, FINISH, Job
from mxn.engines.local.tools import ToolCall, ToolPlan, ToolSplitter
from mxn.errors import UpstreamError
from mxn.wire import usage as _usage


class LocalStream(ChunkStream):
    """OpenAI-shaped chunks from a job's events, as they happen; closing it cancels the job.

    With tools, each choice's text passes a `ToolSplitter`: text goes on as it comes (less a possible tag's
    beginning), a call goes as two `tool_calls` deltas once its block is closed: its id and name, then its arguments.
    """

    def __init__(self, job: Job, prompt_tokens: int, chat: bool, tools: ToolPlan | None = None) -> None:
        self.job, self.prompt_tokens, self.chat = job, prompt_tokens, chat
        self.splitters = {s.index: ToolSplitter(tools.prefix) for s in job.seqs} if tools is not None else {}
        self.calls: dict[int, int] = {}  # per choice, the index of its last call

    def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        return self._chunks()

    def _choice(self, index: int, text: str | None, finish: str | None) -> dict[str, Any]:
        if self.chat:
            delta = {"content": text} if text is not None else {}
            return {"index": index, "delta": delta, "finish_reason": finish}
        return {"index": index, "text": text or "", "finish_reason": finish}

    async def _chunks(self) -> AsyncIterator[dict[str, Any]]:
        done: dict[int, int] = {}
        started: set[int] = set()
        while len(done) < len(self.job.seqs):
            kind, index, payload = await self.job.events.get()
            if self.chat and kind in (DELTA, FINISH) and index not in started:
                # The role arrives with the first real output, not before the prompt has been read: the
                # first chunk is then the first token (honest TTFT), and a failure before it can fail over.
                started.add(index)
                yield {
                    "choices": [{"index": index, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]
                }
            if kind == DELTA:
                if index in self.splitters:
                    for chunk in self._parts(index, self.splitters[index].feed(payload)):
                        yield chunk
                else:
                    yield {"choices": [self._choice(index, payload, None)]}
            elif kind == FINISH:
                reason, count = payload
                done[index] = count
                if index in self.splitters:
                    splitter = self.splitters[index]
                    for chunk in self._parts(index, splitter.finish()):
                        yield chunk
                    reason = "tool_calls" if splitter.calls and reason == "stop" else reason
                yield {"choices": [self._choice(index, None, reason)]}
            elif kind == ERROR:
                raise UpstreamError(payload)
        yield {"choices": [], "usage": _usage(self.prompt_tokens, sum(done.values()))}

    def _parts(self, index: int, parts: list[str | ToolCall]) -> list[dict[str, Any]]:
        chunks = []
        for part in parts:
            if isinstance(part, str):
                chunks.append({"choices": [self._choice(index, part, None)]})
                continue
            self.calls[index] = k = self.calls.get(index, -1) + 1
            head = {"index": k, "id": part.id, "type": "function", "function": {"name": part.name, "arguments": ""}}
            args = {"index": k, "function": {"arguments": part.arguments}}
            for call in (head, args):
                chunks.append({"choices": [{"index": index, "delta": {"tool_calls": [call]}, "finish_reason": None}]})
        return chunks

    async def aclose(self) -> None:
        self.job.cancelled = True
