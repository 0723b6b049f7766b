"""Continuous batching on one model: sequences join and leave the running batch between decode steps.

The model runs on its own thread (a forward pass blocks); requests arrive from the event loop through
`submit` and their tokens go back through `loop.call_soon_threadsafe`, once per step for the whole batch.
The running batch shares one KV cache, left-padded: a joining group is prefilled on its own, then its
cache is padded to the batch's length and stacked under it; a leaving sequence's row is dropped, and
columns that only padding still uses are cut off.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from mxn.engines.local.sampling import SamplingParams, apply_penalties, sample_row
from mxn.engines.local.text import Detokenizer, StopMatcher
from mxn.errors import RateLimited, ServiceUnavailable

log = logging.getLogger("mxn.local")

# Event kinds sent back to a job: (kind, choice index, payload).
DELTA, FINISH, ERROR = "delta", "finish", "error"


@dataclass(eq=False)
class Job:
    """One API request: one or more sequences (n > 1, or several prompts) and where their events go."""

    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue[tuple[str, int, Any]]
    seqs: list[Seq] = field(default_factory=list)
    cancelled: bool = False


@dataclass(eq=False)
class Seq:
    job: Job
    index: int
    prompt: torch.Tensor  # 1-D token ids
    params: SamplingParams
    max_tokens: int
    stop_ids: frozenset[int]
    detok: Detokenizer
    stops: StopMatcher
    generator: torch.Generator | None = None
    output: list[int] = field(default_factory=list)
    finished: str | None = None


class Scheduler:
    def __init__(
        self,
        model: Any,
        device: torch.device,
        *,
        max_batch: int = 16,
        max_waiting: int = 64,
        max_prefill_tokens: int = 16384,
    ) -> None:
        self.model = model
        self.device = device
        self.max_batch = max_batch
        self.max_waiting = max_waiting
        self.max_prefill_tokens = max_prefill_tokens
        self.inbox: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self.waiting: deque[Seq] = deque()
        self.running: list[Seq] = []
        self.prefilling: list[Seq] = []
        self.cache: Any = None
        self.mask: torch.Tensor | None = None
        self.queued = 0  # sequences submitted and not yet running; both threads change it, under _lock
        self._lock = threading.Lock()
        self.steps = 0
        self._out: list[tuple[Job, tuple[str, int, Any]]] = []
        self._closing = False  # set by close(): no new jobs; the thread ends once the running ones have
        self._thread = threading.Thread(target=self._run, name="mxn-local-engine", daemon=True)
        self._thread.start()

    # --- the event loop's side ---
    def submit(self, job: Job) -> None:
        with self._lock:
            if self._closing:
                raise ServiceUnavailable("the local engine is shutting down", code="engine_closed")
            if self.queued + len(job.seqs) > self.max_waiting:
                raise RateLimited(
                    "the local engine's queue is full; retry shortly",
                    code="engine_overloaded",
                    headers={"retry-after": "1"},
                )
            self.queued += len(job.seqs)
        self.inbox.put(job)

    def _dequeued(self, count: int) -> None:
        with self._lock:
            self.queued -= count

    def close(self) -> None:
        """Take no more jobs; the model thread finishes those it has, then ends and lets the model go."""
        with self._lock:
            if self._closing:
                return
            self._closing = True
        self.inbox.put(None)

    @property
    def in_flight(self) -> int:
        return len(self.running) + len(self.waiting)

    # --- the model thread's side ---
    def _run(self) -> None:
        torch.set_grad_enabled(False)
        stopping = False
        while True:
            stopping = self._take(block=not (self.running or self.waiting or stopping)) or stopping
            if stopping and not (self.running or self.waiting):
                break
            try:
                self._drop_cancelled()
                if self.waiting and len(self.running) < self.max_batch:
                    self._prefill()
                if self.running:
                    self._decode()
                    self.steps += 1
            except Exception as exc:  # a failed step fails its sequences, not the thread
                log.exception("local engine step failed")
                self._fail_all(f"local engine error: {type(exc).__name__}")
            self._deliver()
        self.model = self.cache = self.mask = None  # the thread was the last to use them

    def _take(self, block: bool) -> bool:
        """Move submitted jobs to the waiting line; True once close() has been called."""
        while True:
            try:
                job = self.inbox.get(block=block)
            except queue.Empty:
                return False
            if job is None:
                return True
            self.waiting.extend(job.seqs)
            block = False

    def _emit(self, seq: Seq, kind: str, payload: Any) -> None:
        self._out.append((seq.job, (kind, seq.index, payload)))

    def _deliver(self) -> None:
        if not self._out:
            return
        out, self._out = self._out, []
        loop = out[0][0].loop
        loop.call_soon_threadsafe(_put_all, out)

    def _drop_cancelled(self) -> None:
        dropped = [s for s in self.waiting if s.job.cancelled]
        for s in dropped:
            self.waiting.remove(s)
        self._dequeued(len(dropped))
        if any(s.job.cancelled for s in self.running):
            self._keep([i for i, s in enumerate(self.running) if not s.job.cancelled])

    def _prefill(self) -> None:
        group: list[Seq] = []
        tokens = 0
        while self.waiting and len(self.running) + len(group) < self.max_batch:
            size = len(self.waiting[0].prompt)
            if group and tokens + size > self.max_prefill_tokens:
                break
            group.append(self.waiting.popleft())
            tokens += size
        self._dequeued(len(group))
        self.prefilling = group  # if the forward pass fails, these fail with the rest
        length = max(len(s.prompt) for s in group)
        ids = torch.zeros((len(group), length), dtype=torch.long)
        mask = torch.zeros((len(group), length), dtype=torch.long)
        for row, s in enumerate(group):
            ids[row, length - len(s.prompt) :] = s.prompt
            mask[row, length - len(s.prompt) :] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True)
        self._merge(out.cache, mask)
        self.running.extend(group)
        self.prefilling = []
        self._advance(group, out.logits[:, -1, :])

    def _decode(self) -> None:
        assert self.mask is not None
        last = torch.tensor([[s.output[-1]] for s in self.running], device=self.device)
        positions = self.mask.sum(-1, keepdim=True)
        self.mask = torch.cat([self.mask, torch.ones_like(last)], dim=-1)
        out = self.model(
            input_ids=last,
            attention_mask=self.mask,
            position_ids=positions,
            cache=self.cache,  # transformers' cache API (`past_key_values` goes in 5.40)
            use_cache=True,
        )
        self.cache = out.cache
        self._advance(self.running, out.logits[:, -1, :])

    def _advance(self, seqs: list[Seq], logits: torch.Tensor) -> None:
        """Sample one token for each sequence, stream its text, retire those that are done."""
        logits = logits.float()
        if all(s.params.greedy and not s.params.penalised for s in seqs):
            picks = logits.argmax(-1).tolist()
        else:
            picks = []
            for row, s in enumerate(seqs):
                scores = logits[row]
                if s.params.penalised:
                    scores = apply_penalties(scores.clone(), s.params, s.prompt.to(logits.device), s.output)
                picks.append(sample_row(scores, s.params, s.generator))
        for s, token in zip(seqs, picks, strict=True):
            self._accept(s, token)
        if any(s.finished for s in self.running):
            self._keep([i for i, s in enumerate(self.running) if not s.finished])

    def _accept(self, s: Seq, token: int) -> None:
        s.output.append(token)
        if token in s.stop_ids:
            text, s.finished = s.stops.feed(s.detok.flush(), final=True), "stop"
        else:
            text = s.stops.feed(s.detok.add(token))
            if s.stops.hit:
                s.finished = "stop"
            elif len(s.output) >= s.max_tokens:
                text += s.stops.feed(s.detok.flush(), final=True)
                s.finished = "stop" if s.stops.hit else "length"
        if text:
            self._emit(s, DELTA, text)
        if s.finished:
            self._emit(s, FINISH, (s.finished, len(s.output)))

    # --- the shared cache ---
    def _layers(self, cache: Any) -> list[Any]:
        return list(cache.layers)

    def _merge(self, cache: Any, mask: torch.Tensor) -> None:
        if self.cache is None or self.mask is None:
            self.cache, self.mask = cache, mask
            return
        have, new = self.mask.shape[1], mask.shape[1]
        width = max(have, new)
        for old_layer, new_layer in zip(self._layers(self.cache), self._layers(cache), strict=True):
            for name in ("keys", "values"):
                a = F.pad(getattr(old_layer, name), (0, 0, width - have, 0))
                b = F.pad(getattr(new_layer, name), (0, 0, width - new, 0))
                setattr(old_layer, name, torch.cat([a, b], dim=0))
        self.mask = torch.cat([F.pad(self.mask, (width - have, 0)), F.pad(mask, (width - new, 0))], dim=0)

    def _keep(self, rows: list[int]) -> None:
        self.running = [self.running[i] for i in rows]
        if not self.running:
            self.cache = self.mask = None
            return
        assert self.mask is not None
        index = torch.tensor(rows, device=self.device)
        self.mask = self.mask[index]
        used = (self.mask.sum(0) > 0).nonzero()
        start = int(used[0]) if len(used) else 0
        self.mask = self.mask[:, start:]
        for layer in self._layers(self.cache):
            layer.keys = layer.keys[index, :, start:, :]
            layer.values = layer.values[index, :, start:, :]

    def _fail_all(self, message: str) -> None:
        running = {id(s) for s in self.running}
        for s in [*self.running, *(s for s in self.prefilling if id(s) not in running), *self.waiting]:
            self._emit(s, ERROR, message)
        self._dequeued(len(self.waiting))
        self.running, self.waiting, self.prefilling = [], deque(), []
        self.cache = self.mask = None


def _put_all(out: list[tuple[Job, tuple[str, int, Any]]]) -> None:
    for job, event in out:
        job.events.put_nowait(event)


def new_job() -> Job:
    return Job(asyncio.get_running_loop(), asyncio.Queue())


def generator_for(seed: int | None, device: torch.device) -> torch.Generator | None:
    if seed is None:
        return None
    g = torch.Generator(device=device)
    g.manual_seed(seed)
    return g
