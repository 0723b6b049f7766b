"""Settings: every option is an env var `MXN_*` and, for `mxn serve`, a flag."""

from __future__ import annotations

from functools import lru_cache

from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///./mxn.db"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MXN_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    catalog: str | None = None
    database_url: str = DEFAULT_DATABASE_URL
    redis_url: str | None = None
    admin_key: str | None = None
    secret: str | None = None
    # Request bodies above this size get 413 before any parsing.
    max_body_bytes: int = 8 * 1024 * 1024
    # JSON nested deeper than this gets 400 (a cheap guard against parser bombs).
    max_json_depth: int = 32
    log_level: str = "info"
    # Seconds between re-reads of the catalogue from the store, so that admin
    # edits made through one replica reach the others.
    catalog_refresh: float = 5.0
    # Quota unit: "tokens" (prompt + completion), or "credits" (micro-credits: per-1M-token prices of the
    # deployment times the group's multiplier).
    quota_unit: str = "tokens"
    # Active health checks of every running endpoint (GET url + health_path), seconds apart.
    health_interval: float = 10.0
    # Circuit breaker: open after this many failures in a row, probe again after the cooldown.
    breaker_failures: int = 5
    breaker_cooldown: float = 10.0
    # On SIGTERM, open requests and streams get this long to finish before the process exits.
    shutdown_grace: float = 30.0
    # Where mxn keeps files of its own (the demo model).
    data_dir: str = ".mxn"
    # With no catalogue and an empty store, serve the embedded demo chat model and MiniLM embeddings.
    demo: bool = True


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
