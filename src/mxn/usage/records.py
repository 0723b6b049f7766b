"""A usage record: one per request, the columns it fills in the `usage` table."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

COLUMNS = (
    "created_at",
    "user_id",
    "key_id",
    "model",
    "chip",
    "endpoint_id",
    "route",
    "prompt_tokens",
    "completion_tokens",
    "ttft_ms",
    "latency_ms",
    "status",
    "error",
    "cost",
    "request_id",
)


def record(**values: Any) -> dict[str, Any]:
    values.setdefault("created_at", datetime.now(UTC))
    return values
