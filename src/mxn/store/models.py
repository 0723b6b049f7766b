"""SQLAlchemy tables. Alembic migrations in `migrations/` are the schema's source of truth."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
    event,
    func,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class KV(Base):
    """Small settings the store keeps for every replica (e.g. the generated secret)."""

    __tablename__ = "kv"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str | None] = mapped_column(String(256))
    role: Mapped[str] = mapped_column(String(16), default="user")
    group: Mapped[str] = mapped_column("group_name", String(64), default="default")
    quota: Mapped[int | None] = mapped_column(BigInteger)
    # The balance when it was last set or topped up, and the share of it already alerted on (0, 80, 100).
    quota_granted: Mapped[int | None] = mapped_column(BigInteger)
    quota_alerted: Mapped[int] = mapped_column(Integer, default=0)
    # Moves on whenever the balance is set outright: amounts replicas hold from an older epoch are void.
    quota_epoch: Mapped[int] = mapped_column(Integer, default=0)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class ApiKey(Base):
    __tablename__ = "api_keys"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(64), default="")
    # First characters of the key, so that a user can tell keys apart; never enough to use.
    prefix: Mapped[str] = mapped_column(String(16))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    models: Mapped[list[str] | None] = mapped_column(JSON)
    chips: Mapped[list[str] | None] = mapped_column(JSON)
    ips: Mapped[list[str] | None] = mapped_column(JSON)
    rpm: Mapped[int | None] = mapped_column(Integer)
    rpd: Mapped[int | None] = mapped_column(Integer)
    tpm: Mapped[int | None] = mapped_column(Integer)
    concurrency: Mapped[int | None] = mapped_column(Integer)
    quota: Mapped[int | None] = mapped_column(BigInteger)
    quota_granted: Mapped[int | None] = mapped_column(BigInteger)
    quota_alerted: Mapped[int] = mapped_column(Integer, default=0)
    quota_epoch: Mapped[int] = mapped_column(Integer, default=0)


@event.listens_for(User.quota, "set")
@event.listens_for(ApiKey.quota, "set")
def _granted(target: User | ApiKey, value: int | None, _old: Any, _initiator: Any) -> None:
    """Setting a balance (not spending it: that is a conditional UPDATE) starts a new grant for alerts, and a new
    epoch: what replicas hold of the old balance (`accounts.holds`) is not given back to the new one."""
    target.quota_granted, target.quota_alerted = value, 0
    target.quota_epoch = (target.quota_epoch or 0) + 1


class Group(Base):
    """A tier (OneAPI): a price multiplier, per-key default limits, and optional per-user totals."""

    __tablename__ = "groups"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    multiplier: Mapped[float] = mapped_column(Float, default=1.0)
    rpm: Mapped[int | None] = mapped_column(Integer)
    rpd: Mapped[int | None] = mapped_column(Integer)
    tpm: Mapped[int | None] = mapped_column(BigInteger)
    concurrency: Mapped[int | None] = mapped_column(Integer)
    user_rpm: Mapped[int | None] = mapped_column(Integer)
    user_rpd: Mapped[int | None] = mapped_column(Integer)
    user_tpm: Mapped[int | None] = mapped_column(BigInteger)
    user_concurrency: Mapped[int | None] = mapped_column(Integer)
    max_keys: Mapped[int] = mapped_column(Integer, default=5)


class Code(Base):
    """A redemption code, stored as an HMAC like keys; redeemed at most once (a conditional UPDATE)."""

    __tablename__ = "codes"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    code_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    quota: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    redeemed_by: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    redeemed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class Usage(Base):
    """One row per request that reached the request path after authentication."""

    __tablename__ = "usage"
    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    user_id: Mapped[int | None] = mapped_column(Integer, index=True)
    key_id: Mapped[int | None] = mapped_column(Integer, index=True)
    model: Mapped[str] = mapped_column(String(128))
    chip: Mapped[str] = mapped_column(String(32))
    endpoint_id: Mapped[int | None] = mapped_column(Integer)
    route: Mapped[str] = mapped_column(String(32))
    prompt_tokens: Mapped[int] = mapped_column(Integer, default=0)
    completion_tokens: Mapped[int] = mapped_column(Integer, default=0)
    ttft_ms: Mapped[float | None] = mapped_column(Float)
    latency_ms: Mapped[float] = mapped_column(Float)
    status: Mapped[int] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(String(64))
    cost: Mapped[int] = mapped_column(BigInteger, default=0)
    # Given when the record is journaled: moving a batch again (after a crash) never counts it twice.
    record_id: Mapped[str | None] = mapped_column(String(64), unique=True, index=True)
    # The id the client saw (`x-request-id`), and the replica's holds the request was paid from (QuotaHold.id).
    request_id: Mapped[str | None] = mapped_column(String(32), index=True)
    user_hold: Mapped[str | None] = mapped_column(String(48), index=True)
    key_hold: Mapped[str | None] = mapped_column(String(48), index=True)


class QuotaHold(Base):
    """A chunk of a balance that a replica took to serve requests from memory (`accounts.holds`), leased: while
    the row is here the chunk is out of the balance; whoever ends the hold gives back what was not spent."""

    __tablename__ = "quota_holds"
    id: Mapped[str] = mapped_column(String(48), primary_key=True)
    replica: Mapped[str] = mapped_column(String(32), index=True)  # the replica, as its usage journals name it
    journal: Mapped[str] = mapped_column(String(32))  # the journal directory it writes (`usage.journal.directory_id`)
    balance: Mapped[str] = mapped_column(String(16))  # "users" or "api_keys"
    ident: Mapped[int] = mapped_column(Integer)
    epoch: Mapped[int] = mapped_column(Integer)
    taken: Mapped[int] = mapped_column(BigInteger)  # units taken from the balance in all
    lease_until: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)


class StoredResponse(Base):
    """A response of the Responses API kept for its user (`store`), until it expires (`gateway/stored.py`)."""

    __tablename__ = "responses"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    model: Mapped[str] = mapped_column(String(128))
    # The input items as the model saw them (what `previous_response_id` brought, then the client's own), and the
    # Response object as it was answered (its output and usage included).
    input: Mapped[list[Any]] = mapped_column(JSON)
    response: Mapped[dict[str, Any]] = mapped_column(JSON)


class Session(Base):
    """A console login: the cookie holds a random token, the store only its HMAC."""

    __tablename__ = "sessions"
    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Chip(Base):
    __tablename__ = "chips"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(64))
    alias: Mapped[str | None] = mapped_column(String(64))


class Model(Base):
    __tablename__ = "models"
    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    family: Mapped[str | None] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(16), default="chat")
    context_length: Mapped[int] = mapped_column(Integer, default=4096)
    tokenizer: Mapped[str | None] = mapped_column(String(256))
    public: Mapped[bool] = mapped_column(Boolean, default=True)
    defaults: Mapped[dict[str, Any] | None] = mapped_column(JSON)


class Deployment(Base):
    __tablename__ = "deployments"
    __table_args__ = (UniqueConstraint("model", "chip"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model: Mapped[str] = mapped_column(ForeignKey("models.name", ondelete="CASCADE"))
    chip: Mapped[str] = mapped_column(ForeignKey("chips.id", ondelete="CASCADE"))
    moderation: Mapped[bool] = mapped_column(Boolean, default=True)
    price_input: Mapped[float] = mapped_column(Float, default=0.0)
    price_output: Mapped[float] = mapped_column(Float, default=0.0)
    # Limits for the whole cell (all users together), unset = none.
    rpm: Mapped[int | None] = mapped_column(Integer)
    rpd: Mapped[int | None] = mapped_column(Integer)
    tpm: Mapped[int | None] = mapped_column(BigInteger)
    concurrency: Mapped[int | None] = mapped_column(Integer)
    disclosure: Mapped[dict[str, Any] | None] = mapped_column(JSON)


class Endpoint(Base):
    __tablename__ = "endpoints"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    deployment_id: Mapped[int] = mapped_column(ForeignKey("deployments.id", ondelete="CASCADE"), index=True)
    # "catalog" endpoints are owned by the catalogue file (re-applying it updates or
    # removes them); "admin" ones were added through /admin and survive re-applies.
    source: Mapped[str] = mapped_column(String(16), default="admin")
    engine: Mapped[str] = mapped_column(String(32), default="openai")
    url: Mapped[str | None] = mapped_column(String(512))
    path: Mapped[str | None] = mapped_column(String(512))
    upstream_model: Mapped[str | None] = mapped_column(String(256))
    api_key: Mapped[str | None] = mapped_column(String(512))
    stream_format: Mapped[str] = mapped_column(String(16), default="sse")
    weight: Mapped[int] = mapped_column(Integer, default=1)
    priority: Mapped[int] = mapped_column(Integer, default=0)
    state: Mapped[str] = mapped_column(String(16), default="running")
    health_path: Mapped[str] = mapped_column(String(256), default="/models")
    timeouts: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    max_concurrency: Mapped[int | None] = mapped_column(Integer)
    supports: Mapped[list[str] | None] = mapped_column(JSON)
    options: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # The replica number of a managed deployment's endpoint (`source='managed'`); None for the others.
    replica: Mapped[int | None] = mapped_column(Integer)
    managed_id: Mapped[int | None] = mapped_column(ForeignKey("managed_deployments.id", ondelete="CASCADE"))
    # This endpoint's own disclosure: declared in the catalogue, or detected from a managed engine (engine and
    # version, chip model, count, dtype, ...); the cell's disclosure speaks for the cell as a whole.
    hardware: Mapped[dict[str, Any] | None] = mapped_column(JSON)


class ManagedDeployment(Base):
    """A deployment whose replicas mxn launches (`mxn deploy`) and registers as its endpoints."""

    __tablename__ = "managed_deployments"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # One per engine of a cell: vLLM, llama.cpp and the embedded engine may serve the same model@chip side by side.
    __table_args__ = (UniqueConstraint("deployment_id", "engine", name="uq_managed_deployments_cell_engine"),)
    deployment_id: Mapped[int] = mapped_column(ForeignKey("deployments.id", ondelete="CASCADE"))
    engine: Mapped[str] = mapped_column(String(32))  # a launch recipe: vllm, sglang, llamacpp, ollama, mxn
    source: Mapped[str] = mapped_column(String(512))  # what the engine loads: a path or a hub id
    replicas: Mapped[int] = mapped_column(Integer)
    devices: Mapped[int] = mapped_column(Integer, default=1)  # per replica (tensor-parallel size)
    memory_fraction: Mapped[float] = mapped_column(Float, default=0.9)
    # deploying → running; removing while `mxn undeploy` is carried out
    state: Mapped[str] = mapped_column(String(16), default="deploying")
    created_cell: Mapped[bool] = mapped_column(Boolean, default=False)  # undeploy removes the cell it made
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class ModerationRule(Base):
    """A rule set: global (no deployment) or one deployment's own, added to the global ones."""

    __tablename__ = "moderation_rules"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    deployment_id: Mapped[int | None] = mapped_column(ForeignKey("deployments.id", ondelete="CASCADE"), index=True)
    # "catalog" rule sets belong to the catalogue file (re-applying it replaces them); "admin" ones survive.
    source: Mapped[str] = mapped_column(String(16), default="admin")
    name: Mapped[str] = mapped_column(String(64), default="")
    keywords: Mapped[list[str]] = mapped_column(JSON, default=list)
    regexes: Mapped[list[str]] = mapped_column(JSON, default=list)
    classifier: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class Audit(Base):
    """Who did what, when, from where: admin actions and key events."""

    __tablename__ = "audit"
    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    actor: Mapped[str] = mapped_column(String(128))
    action: Mapped[str] = mapped_column(String(64), index=True)
    target: Mapped[str] = mapped_column(String(256), default="")
    ip: Mapped[str | None] = mapped_column(String(64))
    details: Mapped[dict[str, Any] | None] = mapped_column(JSON)


class Alert(Base):
    __tablename__ = "alerts"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    kind: Mapped[str] = mapped_column(String(32), index=True)
    user_id: Mapped[int | None] = mapped_column(Integer, index=True)
    key_id: Mapped[int | None] = mapped_column(Integer)
    message: Mapped[str] = mapped_column(String(512))
    details: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # One alert per occurrence, however many replicas notice it.
    dedupe: Mapped[str] = mapped_column(String(160), unique=True)
    # Webhook delivery: attempts so far, when to try next (None once delivered or given up).
    delivered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), index=True)
    last_error: Mapped[str | None] = mapped_column(String(256))


class KeyAddress(Base):
    """The client addresses each key has been used from (for new-address alerts)."""

    __tablename__ = "key_addresses"
    key_id: Mapped[int] = mapped_column(ForeignKey("api_keys.id", ondelete="CASCADE"), primary_key=True)
    ip: Mapped[str] = mapped_column(String(64), primary_key=True)
    first_seen: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
