"""OpenAI request models, fields in the order of OpenAI's docs; extras (vLLM, ModelArts) in one block.

`/v1` and `/maas` chat/completion requests accept unknown fields and forward them (SDK users send
`extra_body`). Numbers and booleans are strict: `"0.5"` for a float is a type error, as at OpenAI.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr

from mxn.errors import InvalidRequest

Number = StrictFloat | StrictInt


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)
    include_usage: StrictBool | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: StrictStr | list[dict[str, Any]] | None = None
    name: StrictStr | None = None


class SamplingFields(BaseModel):
    """Parameters shared by chat and text completions."""

    model_config = ConfigDict(extra="allow", strict=True)

    model: StrictStr | None = None
    frequency_penalty: Number | None = Field(default=None, ge=-2, le=2)
    logprobs: Any = None
    max_tokens: StrictInt | None = Field(default=None, ge=1)
    n: StrictInt | None = Field(default=None, ge=1, le=10)
    presence_penalty: Number | None = Field(default=None, ge=-2, le=2)
    seed: StrictInt | None = None
    stop: StrictStr | list[StrictStr] | None = Field(default=None)
    stream: StrictBool | None = None
    stream_options: StreamOptions | None = None
    temperature: Number | None = Field(default=None, ge=0, le=2)
    top_p: Number | None = Field(default=None, gt=0, le=1)
    user: StrictStr | None = None

    # --- extras: vLLM sampling parameters and ModelArts beam-search rules ---
    top_k: StrictInt | None = None
    min_p: Number | None = Field(default=None, ge=0, le=1)
    repetition_penalty: Number | None = Field(default=None, gt=0, le=2)
    length_penalty: Number | None = None
    ignore_eos: StrictBool | None = None
    use_beam_search: StrictBool | None = None
    best_of: StrictInt | None = Field(default=None, ge=1, le=20)

    def check(self) -> None:
        """Rules across fields; each rejection names its parameter."""
        if isinstance(self.stop, list) and len(self.stop) > 4:
            raise InvalidRequest("'stop' takes at most 4 sequences", param="stop")
        if self.top_k is not None and self.top_k != -1 and self.top_k < 1:
            raise InvalidRequest("'top_k' must be -1 (off) or at least 1", param="top_k")
        if self.stream_options is not None and not self.stream:
            raise InvalidRequest("'stream_options' is only allowed when 'stream' is true", param="stream_options")
        n = self.n or 1
        if self.best_of is not None and self.best_of < n:
            raise InvalidRequest(f"'best_of' ({self.best_of}) must be at least 'n' ({n})", param="best_of")
        if self.use_beam_search:
            self._check_beam_search(n)
        elif self.length_penalty is not None and self.length_penalty != 1:
            raise InvalidRequest("'length_penalty' is only used with beam search", param="length_penalty")

    def _check_beam_search(self, n: int) -> None:
        if n <= 1 and (self.best_of or 1) <= 1:
            raise InvalidRequest("beam search needs 'n' greater than 1", param="n")
        if self.temperature not in (None, 0):
            raise InvalidRequest("beam search needs 'temperature' 0", param="temperature")
        if self.top_p not in (None, 1):
            raise InvalidRequest("beam search needs 'top_p' 1", param="top_p")
        if self.top_k not in (None, -1):
            raise InvalidRequest("beam search needs 'top_k' -1", param="top_k")

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    logprobs: StrictBool | None = None
    max_completion_tokens: StrictInt | None = Field(default=None, ge=1)
    response_format: dict[str, Any] | None = None
    tool_choice: StrictStr | dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None
    top_logprobs: StrictInt | None = Field(default=None, ge=0, le=20)

    def check(self) -> None:
        super().check()
        if self.top_logprobs is not None and not self.logprobs:
            raise InvalidRequest("'top_logprobs' needs 'logprobs' true", param="top_logprobs")
        if self.max_tokens is not None and self.max_completion_tokens is not None:
            if self.max_tokens != self.max_completion_tokens:
                raise InvalidRequest("give 'max_tokens' or 'max_completion_tokens', not both", param="max_tokens")


class CompletionRequest(SamplingFields):
    prompt: StrictStr | list[StrictStr] | list[StrictInt] = Field()
    echo: StrictBool | None = None
    logprobs: StrictInt | None = Field(default=None, ge=0, le=5)
    suffix: StrictStr | None = None

    def check(self) -> None:
        super().check()
        if isinstance(self.prompt, list) and not self.prompt:
            raise InvalidRequest("'prompt' may not be empty", param="prompt")


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)
    model: StrictStr | None = None
    input: StrictStr | list[StrictStr] | list[StrictInt] | list[list[StrictInt]]
    encoding_format: Literal["float", "base64"] | None = None
    dimensions: StrictInt | None = Field(default=None, ge=1)
    user: StrictStr | None = None

    def check(self) -> None:
        if isinstance(self.input, list) and not self.input:
            raise InvalidRequest("'input' may not be empty", param="input")
        if isinstance(self.input, list) and len(self.input) > 2048:
            raise InvalidRequest("'input' takes at most 2048 items", param="input")
