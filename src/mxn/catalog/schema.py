"""The catalogue file's shape (SPEC §9). Admin API bodies reuse these models."""

from __future__ import annotations

import re
from typing import Any, Literal

import regex
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

CHIP_TYPES: dict[str, str] = {
    "nvidia": "NVIDIA",
    "amd": "AMD",
    "ascend": "Huawei Ascend",
    "iluvatar": "Iluvatar CoreX",
    "metax": "MetaX",
    "moorethreads": "Moore Threads",
    "biren": "Biren",
    "enflame": "Enflame",
    "cpu": "CPU",
}
ENDPOINT_STATES = ("running", "unhealthy", "stopped", "deploying")
# Parameters a model's `defaults:` may set: the sampling parameters of SPEC §2.
DEFAULTABLE = frozenset(
    {
        "temperature",
        "top_p",
        "top_k",
        "min_p",
        "max_tokens",
        "presence_penalty",
        "frequency_penalty",
        "repetition_penalty",
        "length_penalty",
        "stop",
        "seed",
        "n",
    }
)
_ID = r"^[a-z0-9][a-z0-9_.-]{0,31}$"
_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.:/-]{0,127}$"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ChipSpec(Strict):
    id: str = Field(pattern=_ID)
    name: str | None = Field(default=None, max_length=64)
    alias: str | None = Field(default=None, max_length=64)


class ModelSpec(Strict):
    name: str = Field(pattern=_NAME)
    context_length: int = Field(default=4096, ge=1, le=10_000_000)
    tokenizer: str | None = Field(default=None, max_length=256)
    kind: Literal["chat", "completion", "embedding"] = "chat"
    family: str | None = Field(default=None, max_length=64)
    public: bool = True
    defaults: dict[str, Any] | None = None

    @field_validator("name")
    @classmethod
    def _no_at(cls, v: str) -> str:
        if "@" in v:
            raise ValueError("a model name may not contain '@' (it separates model and chip)")
        return v

    @field_validator("tokenizer")
    @classmethod
    def _known_tokenizer(cls, v: str | None) -> str | None:
        if v and v.startswith("tiktoken:"):
            from mxn.tokens import known_encodings

            if v.removeprefix("tiktoken:") not in known_encodings():
                raise ValueError(f"unknown tiktoken encoding '{v}'; known: {', '.join(known_encodings())}")
        return v

    @field_validator("defaults")
    @classmethod
    def _known_defaults(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        unknown = sorted(set(v or {}) - DEFAULTABLE)
        if unknown:
            raise ValueError(f"unknown default parameter(s): {', '.join(unknown)}")
        return v


class Timeouts(Strict):
    connect: float | None = Field(default=None, gt=0)
    first_token: float | None = Field(default=None, gt=0)
    between_tokens: float | None = Field(default=None, gt=0)
    total: float | None = Field(default=None, gt=0)


class EndpointSpec(Strict):
    engine: str = Field(default="openai", max_length=32)
    url: str | None = Field(default=None, max_length=512)
    path: str | None = Field(default=None, max_length=512)
    upstream_model: str | None = Field(default=None, max_length=256)
    api_key: str | None = Field(default=None, max_length=512)
    stream_format: Literal["sse", "jsonl"] = "sse"
    weight: int = Field(default=1, ge=0, le=1000)
    priority: int = 0
    state: Literal["running", "unhealthy", "stopped", "deploying"] = "running"
    health_path: str = Field(default="/models", max_length=256)
    timeouts: Timeouts | None = None
    max_concurrency: int | None = Field(default=None, ge=1)
    supports: list[str] | None = None
    # This endpoint's own hardware disclosure (engine and version, chip_model, count, dtype, ...), for a cell whose
    # endpoints differ; `mxn bench --endpoint` reports it. Managed endpoints have theirs detected.
    hardware: dict[str, Any] | None = None
    # Engine options of the embedded engine: device (auto, cpu, cuda:0), dtype (auto, float32, bfloat16),
    # max_batch, max_waiting.
    options: dict[str, Any] | None = None

    @field_validator("options")
    @classmethod
    def _known_options(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        unknown = sorted(set(v or {}) - {"device", "dtype", "max_batch", "max_waiting"})
        if unknown:
            raise ValueError(f"unknown engine option(s): {', '.join(unknown)}")
        if v and v.get("dtype", "auto") not in ("auto", "float32", "bfloat16", "float16"):
            raise ValueError("options.dtype is auto, float32, bfloat16 or float16")
        if v and not re.fullmatch(r"auto|cpu|cuda(:\d+)?|npu(:\d+)?", str(v.get("device", "auto"))):
            raise ValueError("options.device is auto, cpu, cuda, cuda:N, npu or npu:N")
        for name in ("max_batch", "max_waiting"):
            if v and name in v and (not isinstance(v[name], int) or v[name] < 1):
                raise ValueError(f"options.{name} is a positive integer")
        return v

    @model_validator(mode="after")
    def _target(self) -> EndpointSpec:
        if self.engine == "openai":
            if not self.url or not re.match(r"^https?://", self.url):
                raise ValueError("an OpenAI-compatible endpoint needs `url: http(s)://...`")
        elif self.engine == "local":
            if not self.path:
                raise ValueError("`engine: local` needs `path:` (a model directory)")
        return self


class Price(Strict):
    input: float = Field(default=0.0, ge=0)
    output: float = Field(default=0.0, ge=0)


class CellLimits(Strict):
    """Limits on a whole cell, all users together (e.g. a small accelerator pool)."""

    rpm: int | None = Field(default=None, ge=1)
    rpd: int | None = Field(default=None, ge=1)
    tpm: int | None = Field(default=None, ge=1)
    concurrency: int | None = Field(default=None, ge=1)


class ClassifierSpec(Strict):
    url: str
    timeout: float = Field(default=0.5, gt=0)
    fail: Literal["open", "closed"] = "open"


class ModerationSpec(Strict):
    name: str = Field(default="", max_length=64)
    keywords: list[str] = []
    keyword_files: list[str] = []
    regexes: list[str] = []
    classifier: ClassifierSpec | None = None

    @field_validator("regexes")
    @classmethod
    def _compiles(cls, v: list[str]) -> list[str]:
        return compiling(v)


def compiling(patterns: list[str]) -> list[str]:
    for pattern in patterns:
        try:
            regex.compile(pattern)
        except regex.error as exc:
            raise ValueError(f"regex {pattern!r} does not compile: {exc}")
    return patterns


class DeploymentSpec(Strict):
    model: str
    # `auto`: the chip this machine's torch sees (for deployments served by the embedded engine).
    chip: str = Field(pattern=_ID)
    # On unless turned off with confirmation; a rules block turns it on with rules of this deployment's own.
    moderation: bool | ModerationSpec = True
    moderation_off_confirmed: bool = False
    price: Price = Price()
    limits: CellLimits = CellLimits()
    disclosure: dict[str, Any] | None = None
    endpoints: list[EndpointSpec] = []

    @model_validator(mode="after")
    def _moderation_off_needs_confirmation(self) -> DeploymentSpec:
        if self.moderation is False and not self.moderation_off_confirmed:
            raise ValueError("`moderation: false` needs `moderation_off_confirmed: true` beside it")
        return self

    @property
    def moderated(self) -> bool:
        return self.moderation is not False

    @property
    def own_rules(self) -> ModerationSpec | None:
        return self.moderation if isinstance(self.moderation, ModerationSpec) else None


class CatalogFile(Strict):
    chips: list[ChipSpec] = []
    models: list[ModelSpec] = []
    deployments: list[DeploymentSpec] = []
    moderation: ModerationSpec | None = None
