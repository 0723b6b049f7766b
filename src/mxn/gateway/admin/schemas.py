"""The bodies /admin accepts; like the CLI's options, they forbid what they do not know."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from mxn.catalog.schema import CellLimits, ClassifierSpec, EndpointSpec, ModerationSpec, Price, Timeouts, compiling
from mxn.deploy.service import MAX_REPLICAS


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Limits(Body):
    """A key's (or a group's per-key) rate limits; unset: none of its own."""

    rpm: int | None = Field(default=None, ge=0)
    rpd: int | None = Field(default=None, ge=0)
    tpm: int | None = Field(default=None, ge=0)
    concurrency: int | None = Field(default=None, ge=0)


class GroupLimits(Limits):
    """A group's limits: per key, and on each user's total (`user_*`)."""

    user_rpm: int | None = Field(default=None, ge=0)
    user_rpd: int | None = Field(default=None, ge=0)
    user_tpm: int | None = Field(default=None, ge=0)
    user_concurrency: int | None = Field(default=None, ge=0)


class UserCreate(Body):
    name: str
    password: str | None = Field(default=None, min_length=8)
    admin: bool = False
    group: str | None = None
    quota: int | None = Field(default=None, ge=0)


class UserPatch(Body):
    password: str | None = Field(default=None, min_length=8)
    enabled: bool | None = None
    group: str | None = None
    quota: int | None = Field(default=None, ge=0)
    role: str | None = Field(default=None, pattern="^(admin|user)$")


class KeyCreate(Limits):
    # /api has a KeyCreate too, so the OpenAPI document names both by module; this keeps the name it has had.
    __module__ = "mxn.gateway.admin"

    user: str
    name: str = Field(default="", max_length=64)
    models: list[str] | None = None
    chips: list[str] | None = None
    expires: str | None = None
    ips: list[str] | None = None
    quota: int | None = Field(default=None, ge=0)


class KeyPatch(Limits):
    name: str | None = Field(default=None, max_length=64)
    enabled: bool | None = None
    models: list[str] | None = None
    chips: list[str] | None = None
    quota: int | None = Field(default=None, ge=0)


class GroupBody(GroupLimits):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    multiplier: float = Field(default=1.0, ge=0)
    max_keys: int = Field(default=5, ge=1, le=1000)


class GroupPatch(GroupLimits):
    multiplier: float | None = Field(default=None, ge=0)
    max_keys: int | None = Field(default=None, ge=1, le=1000)


class CodesCreate(Body):
    quota: int = Field(gt=0)
    count: int = Field(default=1, ge=1, le=10_000)


class ChipPatch(Body):
    name: str | None = None
    alias: str | None = None


class ModelPatch(Body):
    context_length: int | None = Field(default=None, ge=1)
    tokenizer: str | None = None
    kind: str | None = Field(default=None, pattern="^(chat|completion|embedding)$")
    family: str | None = None
    public: bool | None = None
    defaults: dict[str, Any] | None = None


class DeploymentPatch(Body):
    price: Price | None = None
    limits: CellLimits | None = None
    disclosure: dict[str, Any] | None = None
    moderation: bool | None = None
    # Turning moderation off must be confirmed in the same request (SPEC §4).
    confirm: bool = False

    def changes(self) -> dict[str, Any]:
        """What `services.deployments.update` stores: price and limits whole (a limit left out is cleared)."""
        out: dict[str, Any] = {}
        if self.price is not None:
            out["price"] = self.price.model_dump()
        if self.limits is not None:
            out["limits"] = self.limits.model_dump()
        if "disclosure" in self.model_fields_set:
            out["disclosure"] = self.disclosure
        if self.moderation is not None:
            out["moderation"] = self.moderation
        return out


class EndpointCreate(EndpointSpec):
    deployment: str


class EndpointPatch(Body):
    url: str | None = None
    upstream_model: str | None = None
    api_key: str | None = None
    stream_format: str | None = Field(default=None, pattern="^(sse|jsonl)$")
    weight: int | None = Field(default=None, ge=0, le=1000)
    priority: int | None = None
    state: str | None = Field(default=None, pattern="^(running|unhealthy|stopped|deploying)$")
    health_path: str | None = None
    timeouts: Timeouts | None = None
    max_concurrency: int | None = Field(default=None, ge=1)
    supports: list[str] | None = None
    hardware: dict[str, Any] | None = None

    def changes(self) -> dict[str, Any]:
        """The columns to set; `timeouts` stored without its unset parts."""
        out = self.model_dump(exclude_unset=True)
        if self.timeouts is not None:
            out["timeouts"] = self.timeouts.model_dump(exclude_none=True)
        return out


class RuleSetCreate(ModerationSpec):
    deployment: str | None = None  # model@chip; unset = global

    @model_validator(mode="after")
    def _no_server_files(self) -> RuleSetCreate:
        if self.keyword_files:
            raise ValueError("keyword_files are read from catalogue files only; send `keywords` here")
        return self


class RuleSetPatch(Body):
    name: str | None = Field(default=None, max_length=64)
    keywords: list[str] | None = None
    regexes: list[str] | None = None
    classifier: ClassifierSpec | None = None

    @field_validator("regexes")
    @classmethod
    def _compiles(cls, v: list[str] | None) -> list[str] | None:
        return v if v is None else compiling(v)

    def changes(self) -> dict[str, Any]:
        """The fields sent, a classifier as a whole dict (its defaults filled in)."""
        out: dict[str, Any] = {}
        for name in self.model_fields_set:
            value = getattr(self, name)
            out[name] = value.model_dump() if isinstance(value, BaseModel) else value
        return out


class ScaleBody(Body):
    replicas: int = Field(ge=0, le=MAX_REPLICAS)
