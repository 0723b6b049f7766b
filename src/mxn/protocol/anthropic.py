"""Anthropic Messages API request models (`POST /v1/messages`, `/v1/messages/count_tokens`), fields in the order of
Anthropic's docs.

Blocks keep what they do not name (`cache_control`, `citations`): accepted and ignored. Unknown top-level fields are
kept, as on /v1 chat, and forwarded to the engine (SDK users send `extra_body`); Anthropic's own fields that mean
nothing to an OpenAI-speaking engine are named below and dropped.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr

Number = StrictFloat | StrictInt


class Block(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)


class TextBlock(Block):
    type: Literal["text"]
    text: StrictStr


class MediaBlock(Block):
    """An image or a document: refused, since no model in mxn's catalogue reads them."""

    type: Literal["image", "document"]


class ToolUseBlock(Block):
    type: Literal["tool_use"]
    id: StrictStr
    name: StrictStr
    input: dict[str, Any]


class ToolResultBlock(Block):
    type: Literal["tool_result"]
    tool_use_id: StrictStr
    content: StrictStr | list[Annotated[TextBlock | MediaBlock, Field(discriminator="type")]] | None = None
    is_error: StrictBool | None = None


class ThinkingBlock(Block):
    """A previous turn's thinking, sent back by clients such as Claude Code: dropped (mxn's engines return none)."""

    type: Literal["thinking", "redacted_thinking"]


ContentBlock = Annotated[
    TextBlock | MediaBlock | ToolUseBlock | ToolResultBlock | ThinkingBlock, Field(discriminator="type")
]


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    role: Literal["user", "assistant"]
    content: StrictStr | list[ContentBlock]


class Tool(BaseModel):
    """A client tool. Server tools (`web_search_...`, `bash_...`) have a `type` of their own and are refused."""

    model_config = ConfigDict(extra="allow", strict=True)
    name: StrictStr = Field(min_length=1, max_length=128)
    description: StrictStr | None = None
    input_schema: dict[str, Any] | None = None
    type: StrictStr | None = None
    strict: bool | None = None  # the input is checked against input_schema: an engine's `strict` function


class ToolChoice(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    type: Literal["auto", "any", "tool", "none"]
    name: StrictStr | None = None
    disable_parallel_tool_use: StrictBool | None = None


class CountTokensRequest(BaseModel):
    """`POST /v1/messages/count_tokens`: a message request without its sampling parameters."""

    model_config = ConfigDict(extra="allow", strict=True)

    model: StrictStr | None = None
    messages: list[Message] = Field(min_length=1)
    system: StrictStr | list[TextBlock] | None = None
    tool_choice: ToolChoice | None = None
    tools: list[Tool] | None = None

    # --- Anthropic's own, accepted and ignored: hints and features with no meaning to an OpenAI engine ---
    cache_control: Any = None
    thinking: Any = None
    output_config: dict[str, Any] | None = None
    speed: Any = None


class MessagesRequest(CountTokensRequest):
    max_tokens: StrictInt = Field(ge=1)
    metadata: dict[str, Any] | None = None
    stop_sequences: list[StrictStr] | None = None
    stream: StrictBool | None = None
    temperature: Number | None = Field(default=None, ge=0, le=1)
    top_k: StrictInt | None = Field(default=None, ge=1)
    top_p: Number | None = Field(default=None, gt=0, le=1)

    # --- Anthropic's own, accepted and ignored ---
    service_tier: Any = None
    inference_geo: Any = None
    context_management: Any = None
    diagnostics: Any = None
