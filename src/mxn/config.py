"""Settings: every option is an env var `MXN_*` and, for `mxn serve`, a flag."""

from __future__ import annotations

from functools import lru_cache
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///./mxn.db"
# Settings that take one of a few words are Literals: a misspelt value stops `mxn serve` with the words it takes,
# instead of quietly meaning something else.
QuotaUnit = Literal["tokens", "credits"]
# uvicorn's levels; it reads them in any case, and so do we.
LogLevel = Literal["critical", "error", "warning", "info", "debug", "trace"]


class Settings(BaseSettings):
    # An empty variable means unset, as `${MXN_ADMIN_KEY:-}` in a compose file gives it: never an empty admin key.
    model_config = SettingsConfigDict(env_prefix="MXN_", extra="ignore", env_ignore_empty=True)

    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    catalog: str | None = None
    database_url: str = DEFAULT_DATABASE_URL
    redis_url: str | None = None
    # While Redis is unreachable, rate limits are: "local", enforced by each replica in memory with its share of
    # each limit (the limit divided by the replicas last seen alive); "open", not enforced; "closed", every
    # request refused with 503 limiter_unavailable.
    limits_when_redis_down: Literal["local", "open", "closed"] = "local"
    admin_key: str | None = None
    secret: str | None = None
    # Request bodies above this size get 413 before any parsing.
    max_body_bytes: int = 8 * 1024 * 1024
    # JSON nested deeper than this gets 400 (a cheap guard against parser bombs).
    max_json_depth: int = 32
    log_level: LogLevel = "info"
    # Seconds between re-reads of the catalogue from the store, so that admin
    # edits made through one replica reach the others.
    catalog_refresh: float = 5.0
    # Quota unit: "tokens" (prompt + completion), or "credits" (micro-credits: per-1M-token prices of the
    # deployment times the group's multiplier).
    quota_unit: QuotaUnit = "tokens"
    # Active health checks of every running endpoint (GET url + health_path), seconds apart.
    health_interval: float = 10.0
    # Circuit breaker: open after this many failures in a row, probe again after the cooldown.
    breaker_failures: int = 5
    breaker_cooldown: float = 10.0
    # On SIGTERM, open requests and streams get this long to finish before the process exits.
    shutdown_grace: float = 30.0
    # How often each replica looks for changes to users, keys and groups made elsewhere (the CLI, another
    # replica), seconds; changes made through a replica apply there at once.
    auth_refresh: float = 1.0
    # A replica holds chunks of large balances (up to this many reservations each) so that most requests
    # reserve and settle quota in memory (`accounts.holds`); 0: every request reserves in the store.
    quota_hold: int = 256
    # After this many failed authentications (unknown key, wrong admin key or password) from one client address
    # within the window (seconds), its every attempt gets 429 until the window ends; 0 turns this off.
    auth_fail_limit: int = 10
    auth_fail_window: float = 60.0
    # Addresses of reverse proxies whose X-Forwarded-For / X-Forwarded-Proto are believed (comma-separated, or
    # "*"); empty: none, the client address is the TCP peer's.
    forwarded_allow_ips: str = ""
    # Origins that browsers may call the API from (comma-separated, e.g. https://app.example.com); empty: no
    # CORS headers at all, and preflights are refused.
    cors_origins: Annotated[list[str], NoDecode] = []
    cors_allow_credentials: bool = False
    # Where mxn keeps files of its own (the demo model).
    data_dir: str = ".mxn"
    # Usage records are durable in journals here (a file per replica, a subdirectory per store) before they reach
    # the store; replicas sharing it take over the journals of those that died. A local disk (it relies on flock).
    # Unset: <data_dir>/usage.
    usage_journal_dir: str | None = None
    # When a usage record counts as kept. `interval`: written to the OS before the answer goes out (a killed or
    # crashed process loses nothing), synced to disk every 0.2 s (a machine that loses power may lose the last
    # 0.2 s). `always`: synced to disk before the answer (group commit; about 0.5 ms more per request here).
    usage_fsync: Literal["interval", "always"] = "interval"
    # Responses API: a stored response (`store`, the default) is kept this many seconds, then is gone.
    responses_ttl: float = Field(default=30 * 86400.0, gt=0)
    # With no catalogue and an empty store, serve the embedded demo chat model and MiniLM embeddings.
    demo: bool = True
    # Alerts go to this URL (POST, JSON) signed with HMAC-SHA256 under the secret; unset = stored and listed only.
    alert_webhook: str | None = None
    alert_webhook_secret: str | None = None
    # Deliveries are tried this many times, backing off from alert_backoff seconds, doubling.
    alert_retries: int = 6
    alert_backoff: float = 2.0
    # A usage spike: a key's tokens in the last window ≥ factor × its average window over the `baseline`
    # windows before, and at least min_tokens. Checked every alert_interval seconds.
    alert_spike_window: float = 3600.0
    alert_spike_baseline: int = 24
    alert_spike_factor: float = 5.0
    alert_spike_min_tokens: int = 10_000
    alert_interval: float = 60.0
    # Managed deployments (`mxn deploy`): replicas run on this machine, or on the Ray cluster at this address
    # (`host:port` of its head from a node of the cluster, `ray://head:10001` from outside it); one gateway at
    # a time places them, checking every deploy_interval seconds.
    ray_address: str | None = None
    deploy_interval: float = 2.0
    # A replica that is not healthy this many seconds after its engine started is started again.
    deploy_start_timeout: float = 600.0
    # Engines in virtual environments of their own (`make engines`): `<engines_dir>/<engine>/bin/python` runs a
    # recipe's `{engine_python}`; an engine without one runs with the `python3` on PATH.
    engines_dir: str = ".engines"
    # CPU cores the engines started on this machine may run on ("0", "0-3", "0,2"; unset: all). On a small
    # machine an engine kept to some cores leaves the rest to the gateway: vLLM's CPU build spins on every core
    # it has, and on two cores here it stalled every other process for up to 2 s at a time.
    engine_cpus: str | None = None

    @field_validator("engine_cpus")
    @classmethod
    def _cpu_list(cls, value: str | None) -> str | None:
        if value is not None and value.strip():
            cpu_set(value)
            return value
        return None

    @model_validator(mode="after")
    def _webhook_needs_secret(self) -> Settings:
        if self.alert_webhook and not self.alert_webhook_secret:
            raise ValueError("MXN_ALERT_WEBHOOK needs MXN_ALERT_WEBHOOK_SECRET, the key its signatures use")
        return self

    @field_validator("log_level", mode="before")
    @classmethod
    def _any_case(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        return [x.strip() for x in value.split(",") if x.strip()] if isinstance(value, str) else value


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()


def cpu_set(spec: str) -> set[int]:
    """CPU numbers of a list like `0-3,6` (as taskset and cpusets write them); ValueError if it is not one."""
    cpus: set[int] = set()
    for part in spec.replace(" ", "").split(","):
        first, _, last = part.partition("-")
        if not first.isdigit() or (last and not last.isdigit()) or int(last or first) < int(first):
            raise ValueError(f"not a CPU list like 0-3,6: {spec!r}")
        cpus.update(range(int(first), int(last or first) + 1))
    return cpus
