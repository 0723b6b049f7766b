"""Fill a request from the model's defaults, check it against the context, and shape it per endpoint."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from mxn.catalog.registry import Cell, EndpointInfo
from mxn.errors import ContextLengthExceeded, InvalidRequest
from mxn.protocol.openai import ChatCompletionRequest, CompletionRequest

# Parameters an upstream may not take; an endpoint with `supports:` gets only those it lists.
OPTIONAL_PARAMS = frozenset(
    {
        "top_k",
        "min_p",
        "repetition_penalty",
        "length_penalty",
        "ignore_eos",
        "use_beam_search",
        "best_of",
        "presence_penalty",
        "frequency_penalty",
        "seed",
        "logprobs",
        "top_logprobs",
        "response_format",
        "tools",
        "tool_choice",
        "stream_options",
        "max_completion_tokens",
        "user",
        "n",
    }
)


# Of those, the ones a request may set whatever its engine takes: mxn provides them (usage is counted when an engine
# sends none; `max_completion_tokens` becomes `max_tokens`), or they are hints (`user` is a label; `ignore_eos` only
# asks a benchmark's answers to run to `max_tokens`). Every other one must be taken, or the request gets a 400.
PROVIDED = frozenset({"stream_options", "max_completion_tokens", "user", "ignore_eos"})


@dataclass(slots=True)
class Prepared:
    body: dict[str, Any]
    prompt_tokens: int
    max_tokens: int | None
    stream: bool
    include_usage: bool
    choices: int = 1  # completions the request asks for: n, times the prompts of a batch completion
    # Optional parameters the client set itself (not a model default): an endpoint must take each of them.
    asked: frozenset[str] = frozenset()

    def capped(self, cap: int | None) -> Prepared:
        """This request with its generation capped at `cap` tokens (what the balance affords); itself when None."""
        if cap is None:
            return self
        body = {k: v for k, v in self.body.items() if k != "max_completion_tokens"}
        body["max_tokens"] = cap
        return replace(self, body=body, max_tokens=cap)


def prepare_chat(
    req: ChatCompletionRequest, raw: dict[str, Any], cell: Cell, prompt_tokens: int | None = None
) -> Prepared:
    """`prompt_tokens`: when the caller (another protocol's adapter) has counted them already."""
    req.check()
    if prompt_tokens is None:
        messages = [m.model_dump(exclude_none=True) for m in req.messages]
        prompt_tokens = chat_prompt_tokens(cell, messages, req.tools, req.tool_choice)
    return _prepare(req, raw, cell, prompt_tokens, prompt_tokens, req.n or 1)


def chat_prompt_tokens(cell: Cell, messages: list[dict[str, Any]], tools: Any, tool_choice: Any) -> int:
    """Prompt tokens of a chat request: its messages, and the tools the template shows the model (none under
    `tool_choice: "none"`)."""
    return cell.model.tokenizer.count_messages(messages, tools if tool_choice != "none" else None)


def prepare_completion(req: CompletionRequest, raw: dict[str, Any], cell: Cell) -> Prepared:
    req.check()  # first: the rules are what make the prompt countable (an empty list has nothing to count)
    tok = cell.model.tokenizer
    prompt = req.prompt
    if isinstance(prompt, str):
        counts = [tok.count(prompt)]
    elif prompt and isinstance(prompt[0], int):
        counts = [len(prompt)]
    else:
        counts = [tok.count(p) for p in prompt if isinstance(p, str)]
    return _prepare(req, raw, cell, sum(counts), max(counts), (req.n or 1) * len(counts))


def _prepare(
    req: ChatCompletionRequest | CompletionRequest,
    raw: dict[str, Any],
    cell: Cell,
    prompt_tokens: int,
    longest: int,
    choices: int,
) -> Prepared:
    body = dict(raw)
    for name, value in cell.model.defaults.items():
        if body.get(name) is None:
            body[name] = value
    body["model"] = cell.model.name
    _check_sampling(body)
    max_tokens = body.get("max_tokens") or body.get("max_completion_tokens")
    context = cell.model.context_length
    if max_tokens is not None and longest + max_tokens > context:
        raise ContextLengthExceeded(
            f"This model's maximum context length is {context} tokens. However, you requested "
            f"{longest + max_tokens} tokens ({longest} in the messages, {max_tokens} in the completion).",
            param="messages",
        )
    if max_tokens is None:
        if longest >= context:
            raise ContextLengthExceeded(
                f"This model's maximum context length is {context} tokens. However, your messages resulted in "
                f"{longest} tokens.",
                param="messages",
            )
        if cell.model.tokenizer.fallback_note is None:
            # Up to the context limit, as vLLM does; only when our count is the model's own.
            max_tokens = body["max_tokens"] = context - longest
    asked = frozenset(k for k in OPTIONAL_PARAMS - PROVIDED - {"n"} if raw.get(k) not in (None, False))
    if (raw.get("n") or 1) > 1:
        asked |= {"n"}  # an engine that cannot give several choices would quietly give one
    return Prepared(body, prompt_tokens, max_tokens, bool(req.stream), req.include_usage, choices, asked)


def able(prepared: Prepared, candidates: list[EndpointInfo], cell: Cell) -> list[EndpointInfo]:
    """The candidates whose engines take every optional parameter the client set; none: 400 naming one."""
    if not prepared.asked:
        return candidates
    fit = [e for e in candidates if not _lacks(e, prepared.asked)]
    if fit or not candidates:
        return fit
    # No candidate fits, so each lacks one of them (its `supports` list, or its engine says so): name the first the
    # first one lacks.
    name = min(_lacks(candidates[0], prepared.asked))
    raise InvalidRequest(
        f"'{name}' is not supported by the engine serving {cell.name}", param=name, code="unsupported_parameter"
    )


def _lacks(endpoint: EndpointInfo, asked: frozenset[str]) -> frozenset[str]:
    """The parameters asked for that this endpoint does not take."""
    missing = asked & endpoint.engine.unsupported
    return missing | (asked - endpoint.supports) if endpoint.supports is not None else missing


def _check_sampling(body: dict[str, Any]) -> None:
    n = body.get("n") or 1
    if n > 1 and not body.get("use_beam_search") and body.get("temperature") == 0:
        raise InvalidRequest("'n' greater than 1 needs sampling ('temperature' above 0) or beam search", param="n")


def for_endpoint(prepared: Prepared, endpoint: EndpointInfo) -> dict[str, Any]:
    """The body one endpoint gets: its own model name, and only the parameters it takes."""
    body = dict(prepared.body)
    if endpoint.upstream_model:
        body["model"] = endpoint.upstream_model
    if prepared.stream:
        # Ask for usage so that accounting is exact; the client sees it only if it asked too.
        body["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
    if endpoint.supports is not None:
        if "max_completion_tokens" in body and "max_completion_tokens" not in endpoint.supports:
            body.setdefault("max_tokens", body["max_completion_tokens"])
        for name in OPTIONAL_PARAMS - endpoint.supports:
            body.pop(name, None)
    return body
