"""The embedded engine: a HuggingFace model directory served in-process (SPEC §8, `engine: local`)."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mxn.engines.base import EndpointConfig, Engine
from mxn.engines.local import loader
from mxn.engines.local.sampling import SamplingParams
from mxn.engines.local.scheduler import DELTA, ERROR, FINISH, Job, Scheduler, Seq, generator_for, new_job
from mxn.engines.local.stream import LocalStream
from mxn.engines.local.text import Detokenizer, StopMatcher
from mxn.engines.local.tools import ToolCall, ToolPlan, ToolSplitter, plan, renders_tools, template_message
from mxn.errors import ContextLengthExceeded, InvalidRequest, ServiceUnavailable, UpstreamError
from mxn.paths import resolve_path
from mxn.wire import usage as _usage

log = logging.getLogger("mxn.local")
_UNSUPPORTED = {"response_format": "response_format", "use_beam_search": "beam search"}


@dataclass
class CausalLM:
    model: Any
    tokenizer: Any
    scheduler: Scheduler
    context_length: int
    eos_ids: frozenset[int]
    defaults: dict[str, Any]
    has_template: bool
    tools: bool  # its chat template shows tools to the model
    warned_template: bool = False  # the model has no chat template: said once, in the log


@dataclass
class Encoder:
    model: Any
    tokenizer: Any
    device: torch.device
    max_length: int
    # One thread runs every forward pass of this model: torch keeps a thread pool per calling thread.
    worker: ThreadPoolExecutor


def _is_causal(path: Path) -> bool:
    config = json.loads((path / "config.json").read_text())
    return any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in config.get("architectures") or [])


class LocalEngine(Engine):
    """The model loads in a thread from construction on; `close()` frees it once its running requests are done."""

    def __init__(self, config: EndpointConfig) -> None:
        self.config = config
        self.options = dict(config.options)
        self.device = loader.detect_device(self.options.get("device"))
        self.dtype = loader.pick_dtype(self.device, self.options.get("dtype"))
        self._hardware = loader.hardware(self.device, self.dtype)
        self._loaded: Future[CausalLM | Encoder] = Future()
        self._closed = False
        # The thread is given its future: close() replaces the engine's own while a load may still be going on.
        threading.Thread(target=self._load, args=(self._loaded,), name=f"mxn-load-{config.id}", daemon=True).start()

    def _load(self, loaded: Future[CausalLM | Encoder]) -> None:
        try:
            path = resolve_path(self.config.path or "")
            if _is_causal(path):
                loaded.set_result(self._load_causal(path))
            else:
                model, tok = loader.load_encoder(path, self.device, self.dtype)
                limit = min(int(getattr(tok, "model_max_length", 512) or 512), 512)
                worker = ThreadPoolExecutor(1, thread_name_prefix=f"mxn-encoder-{self.config.id}")
                loaded.set_result(Encoder(model, tok, self.device, limit, worker))
            log.info("endpoint %s: loaded %s on %s (%s)", self.config.id, path, self.device, self._hardware["dtype"])
        except Exception as exc:
            log.error("endpoint %s: cannot load %s: %s", self.config.id, self.config.path, exc)
            loaded.set_exception(exc)

    def _load_causal(self, path: Path) -> CausalLM:
        model, tok = loader.load_causal_lm(path, self.device, self.dtype)
        gen = model.generation_config
        eos = gen.eos_token_id if gen.eos_token_id is not None else tok.eos_token_id
        eos_ids = frozenset([eos] if isinstance(eos, int) else (eos or []))
        defaults = (
            {
                k: getattr(gen, k)
                for k in ("temperature", "top_p", "top_k", "repetition_penalty")
                if getattr(gen, k, None) is not None
            }
            if gen.do_sample
            else {"temperature": 0.0}
        )
        scheduler = Scheduler(
            model,
            self.device,
            max_batch=int(self.options.get("max_batch", 16)),
            max_waiting=int(self.options.get("max_waiting", 64)),
        )
        context = int(getattr(model.config, "max_position_embeddings", 0) or tok.model_max_length)
        with loader.LOAD_LOCK:  # the probe's first template render imports lazily, as loads do
            tools = renders_tools(tok)
        return CausalLM(model, tok, scheduler, context, eos_ids, defaults, bool(tok.chat_template), tools)

    @property
    def ready(self) -> bool:
        return self._loaded.done()

    @property
    def hardware(self) -> dict[str, Any]:
        return self._hardware

    @property
    def failed(self) -> bool:
        return self._loaded.done() and self._loaded.exception() is not None

    @property
    def unsupported(self) -> frozenset[str]:
        if not self._loaded.done() or self._loaded.exception() is not None:
            return frozenset()  # not known yet: a request that comes first is refused by _start
        rt = self._loaded.result()
        return frozenset() if isinstance(rt, CausalLM) and rt.tools else frozenset({"tools"})

    def stats(self) -> dict[str, Any]:
        """Live state for /admin: sequences decoding now, waiting, decode steps taken."""
        if not self._loaded.done() or self._loaded.exception() is not None:
            return {"loaded": False}
        rt = self._loaded.result()
        if isinstance(rt, CausalLM):
            s = rt.scheduler
            return {"loaded": True, "running": len(s.running), "waiting": s.queued, "steps": s.steps}
        return {"loaded": True}

    async def health(self) -> bool:
        return not self.failed  # loading counts as healthy: requests wait for the model

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        # Forget the model here at once; its scheduler lets running requests finish, then lets it go.
        loaded, self._loaded = self._loaded, Future()
        self._loaded.set_exception(RuntimeError("the engine is closed"))
        loaded.add_done_callback(_release)  # runs now, or in the loading thread once a load under way ends

    async def _runtime(self) -> CausalLM | Encoder:
        try:
            rt = await asyncio.wrap_future(self._loaded)
        except Exception as exc:
            if self._closed:
                raise self._gone()
            raise ServiceUnavailable(
                f"endpoint {self.config.id} could not load its model: {exc}", code="engine_load_failed"
            )
        if self._closed:  # closed while this request waited for the load
            raise self._gone()
        return rt

    def _gone(self) -> ServiceUnavailable:
        return ServiceUnavailable(f"endpoint {self.config.id} was removed or changed", code="engine_closed")

    # --- generation ---
    async def _start(self, route: str, body: dict[str, Any]) -> tuple[Job, int, bool, ToolPlan | None]:
        rt = await self._runtime()
        if route == "embeddings" or not isinstance(rt, CausalLM):
            raise InvalidRequest(f"this endpoint serves {'embeddings' if isinstance(rt, Encoder) else 'generation'}")
        for name, what in _UNSUPPORTED.items():
            if body.get(name):
                raise InvalidRequest(f"the local engine does not support {what}", param=name)
        if body.get("logprobs"):
            raise InvalidRequest("the local engine does not return logprobs", param="logprobs")
        chat = route == "chat/completions"
        if chat and body.get("tools") and not rt.tools:
            raise InvalidRequest(
                "this model's chat template does not support tools", param="tools", code="unsupported_parameter"
            )
        tools = plan(body) if chat else ToolPlan(None)
        prompts = _prompts(rt, route, body, tools)
        # A forced call's opening is written for the model; it counts against the answer's max_tokens.
        opening = rt.tokenizer(tools.prefix, add_special_tokens=False)["input_ids"] if tools.prefix else []
        prompts = [ids + opening for ids in prompts]
        job = new_job()
        n = int(body.get("n") or 1)
        for p, ids in enumerate(prompts):
            for i in range(n):
                job.seqs.append(self._seq(rt, job, p * n + i, ids, body, i, len(opening)))
        rt.scheduler.submit(job)
        return job, sum(len(ids) for ids in prompts), chat, tools if tools.tools else None

    def _seq(
        self, rt: CausalLM, job: Job, index: int, ids: list[int], body: dict[str, Any], nth: int, written: int = 0
    ) -> Seq:
        room = rt.context_length - len(ids)
        wanted = body.get("max_tokens") or body.get("max_completion_tokens") or room + written
        wanted = max(1, wanted - written)
        if room <= 0 or wanted > room:
            raise ContextLengthExceeded(
                f"This model's maximum context length is {rt.context_length} tokens; the prompt has {len(ids)} and "
                f"{wanted} more were requested.",
                param="messages",
            )
        p = {**rt.defaults, **{k: v for k, v in body.items() if v is not None}}
        params = SamplingParams(
            temperature=float(p.get("temperature", 1.0)),
            top_p=float(p.get("top_p", 1.0)),
            top_k=int(p.get("top_k", -1) or -1),
            min_p=float(p.get("min_p", 0.0)),
            presence_penalty=float(p.get("presence_penalty", 0.0)),
            frequency_penalty=float(p.get("frequency_penalty", 0.0)),
            repetition_penalty=float(p.get("repetition_penalty", 1.0)),
            seed=p.get("seed"),
        )
        stop = body.get("stop") or []
        seed = None if params.seed is None else int(params.seed) + nth
        return Seq(
            job,
            index,
            torch.tensor(ids, dtype=torch.long),
            params,
            int(wanted),
            frozenset() if body.get("ignore_eos") else rt.eos_ids,
            Detokenizer(rt.tokenizer),
            StopMatcher([stop] if isinstance(stop, str) else list(stop)),
            generator_for(seed, self.device) if not params.greedy else None,
        )

    async def call(self, route: str, body: dict[str, Any]) -> dict[str, Any]:
        if route == "embeddings":
            return await self._embed(body)
        job, prompt_tokens, chat, tools = await self._start(route, body)
        texts: dict[int, list[str]] = {s.index: [] for s in job.seqs}
        finished: dict[int, tuple[str, int]] = {}
        try:
            while len(finished) < len(job.seqs):
                kind, index, payload = await job.events.get()
                if kind == DELTA:
                    texts[index].append(payload)
                elif kind == FINISH:
                    finished[index] = payload
                else:
                    raise UpstreamError(payload)
        finally:
            job.cancelled = len(finished) < len(job.seqs)
        choices = []
        for index in sorted(texts):
            text, reason = "".join(texts[index]), finished[index][0]
            if tools is not None:
                message, reason = _with_calls(text, tools, reason)
                content: dict[str, Any] = {"message": message}
            else:
                content = {"message": {"role": "assistant", "content": text}} if chat else {"text": text}
            choices.append({"index": index, **content, "finish_reason": reason})
        completion = sum(count for _, count in finished.values())
        return {"choices": choices, "usage": _usage(prompt_tokens, completion)}

    async def open_stream(self, route: str, body: dict[str, Any]) -> LocalStream:
        job, prompt_tokens, chat, tools = await self._start(route, body)
        return LocalStream(job, prompt_tokens, chat, tools)

    # --- embeddings ---
    async def _embed(self, body: dict[str, Any]) -> dict[str, Any]:
        rt = await self._runtime()
        if not isinstance(rt, Encoder):
            raise InvalidRequest("this endpoint serves a generative model, not embeddings", param="model")
        inputs = body.get("input")
        texts = [inputs] if isinstance(inputs, str) else inputs
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
            raise InvalidRequest(
                "the local engine embeds strings: 'input' is a string or a list of strings", param="input"
            )
        vectors, tokens = await asyncio.get_running_loop().run_in_executor(rt.worker, _encode, rt, texts)
        dims = body.get("dimensions")
        if dims is not None and dims != vectors.shape[1]:
            raise InvalidRequest(f"this model's embeddings have {vectors.shape[1]} dimensions", param="dimensions")
        as_base64 = body.get("encoding_format") == "base64"
        data = [
            {
                "object": "embedding",
                "index": i,
                "embedding": base64.b64encode(v.numpy().astype("<f4").tobytes()).decode() if as_base64 else v.tolist(),
            }
            for i, v in enumerate(vectors)
        ]
        return {"object": "list", "data": data, "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}


def _release(loaded: Future[CausalLM | Encoder]) -> None:
    """Let a closed engine's model go: the scheduler stops once its running sequences end, the encoder's thread
    once its queued work is done."""
    if loaded.exception() is not None:
        return
    rt = loaded.result()
    if isinstance(rt, CausalLM):
        rt.scheduler.close()
    else:
        rt.worker.shutdown(wait=False)


def _encode(rt: Encoder, texts: list[str]) -> tuple[torch.Tensor, int]:
    """Mean pooling over real tokens, then L2 normalisation (sentence-transformers' recipe for MiniLM)."""
    with torch.inference_mode():
        enc = rt.tokenizer(texts, padding=True, truncation=True, max_length=rt.max_length, return_tensors="pt")
        enc = {k: v.to(rt.device) for k, v in enc.items()}
        hidden = rt.model(**enc).last_hidden_state
        mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        vectors = torch.nn.functional.normalize(pooled.float(), dim=-1).cpu()
        return vectors, int(enc["attention_mask"].sum())


def _with_calls(text: str, tools: ToolPlan, reason: str) -> tuple[dict[str, Any], str]:
    """A whole answer's message with the calls its text holds; finish_reason `tool_calls` when it made any."""
    splitter = ToolSplitter(tools.prefix)
    parts = splitter.feed(text) + splitter.finish()
    calls = [p.openai() for p in parts if isinstance(p, ToolCall)]
    content = "".join(p for p in parts if isinstance(p, str))
    if not calls:
        return {"role": "assistant", "content": content}, reason
    reason = "tool_calls" if reason == "stop" else reason
    return {"role": "assistant", "content": content or None, "tool_calls": calls}, reason


def _prompts(rt: CausalLM, route: str, body: dict[str, Any], tools: ToolPlan) -> list[list[int]]:
    tok = rt.tokenizer
    if route == "chat/completions":
        messages = [template_message({**m, "content": _text(m.get("content"))}) for m in body.get("messages") or []]
        if rt.has_template:
            try:
                text = tok.apply_chat_template(messages, tools=tools.tools, tokenize=False, add_generation_prompt=True)
            except Exception as exc:  # jinja's TemplateError, or a template's raise_exception(): the messages
                raise InvalidRequest(f"the model's chat template refused the messages: {exc}", param="messages")
        else:
            # No template in the model directory: a plain transcript that any base model can continue.
            if not rt.warned_template:
                rt.warned_template = True
                log.warning("model %s has no chat template; using a plain 'role: text' transcript", tok.name_or_path)
            text = "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant:"
        return [tok(text, add_special_tokens=False)["input_ids"]]
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        return [tok(prompt)["input_ids"]]
    if isinstance(prompt, list) and prompt and all(isinstance(x, int) for x in prompt):
        return [list(prompt)]
    if isinstance(prompt, list) and prompt:
        return [tok(p)["input_ids"] if isinstance(p, str) else list(p) for p in prompt]
    raise InvalidRequest("'prompt' must be a string, a list of strings or a list of token ids", param="prompt")


def _text(content: Any) -> str:
    if isinstance(content, list):
        return "\n".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return content or ""


__all__ = ["ERROR", "LocalEngine", "LocalStream"]
