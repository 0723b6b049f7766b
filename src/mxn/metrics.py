"""Prometheus metrics. Labels are model, chip and endpoint id: bounded by the catalogue, never by users."""

from __future__ import annotations

from functools import lru_cache
from typing import Any, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

M = TypeVar("M", Counter, Gauge, Histogram)

REGISTRY = CollectorRegistry()
_CELL = ("model", "chip")
_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

REQUESTS = Counter("mxn_requests_total", "Requests by cell and outcome", (*_CELL, "status"), registry=REGISTRY)
ROUTES = Counter(
    "mxn_route_requests_total",
    "Requests by front-end protocol (chat/completions, completions, embeddings, responses, messages) and outcome",
    ("route", "status"),
    registry=REGISTRY,
)
ERRORS = Counter("mxn_errors_total", "Failed requests by cell and error code", (*_CELL, "code"), registry=REGISTRY)
LATENCY = Histogram("mxn_request_seconds", "Request latency", _CELL, buckets=_LATENCY_BUCKETS, registry=REGISTRY)
TTFT = Histogram("mxn_ttft_seconds", "Time to first token", _CELL, buckets=_TTFT_BUCKETS, registry=REGISTRY)
TOKENS = Counter("mxn_tokens_total", "Tokens by cell and kind", (*_CELL, "kind"), registry=REGISTRY)
IN_FLIGHT = Gauge("mxn_in_flight", "Requests in flight per endpoint", (*_CELL, "endpoint"), registry=REGISTRY)
UPSTREAM = Counter(
    "mxn_upstream_attempts_total", "Calls to endpoints by result", (*_CELL, "endpoint", "result"), registry=REGISTRY
)
LIMITED = Counter("mxn_limiter_rejections_total", "Requests refused by a limit", ("scope", "limit"), registry=REGISTRY)
BREAKER = Gauge(
    "mxn_breaker_state",
    "Circuit breaker per endpoint: 0 closed, 1 half-open, 2 open",
    (*_CELL, "endpoint"),
    registry=REGISTRY,
)
HEALTHY = Gauge(
    "mxn_endpoint_healthy", "Last active health check: 1 passed, 0 failed", (*_CELL, "endpoint"), registry=REGISTRY
)


# Reservations that found this replica's hold of a balance short and waited for a top-up from the store
# (`accounts.holds`): holds are refilled ahead of need, so this stays near zero under steady load.
HOLD_WAITS = Counter(
    "mxn_quota_hold_waits_total", "Reservations that waited for a quota hold's top-up", registry=REGISTRY
)

# How late the event loop ran a timer (`gateway.state.watch_loop`): any step that holds the loop shows here.
LOOP_LAG = Histogram(
    "mxn_event_loop_lag_seconds",
    "How late the event loop woke a 50 ms timer",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
    registry=REGISTRY,
)


def render() -> bytes:
    return generate_latest(REGISTRY)


def series(metric: M, *labels: str) -> M:
    """`metric.labels(*labels)`, looked up once for each distinct set: labels here are bounded (the catalogue's cells
    and endpoints, status and error codes), and `labels()` takes a lock and checks its arguments on every call."""
    found: M = _series(metric, labels)
    return found


@lru_cache(maxsize=16384)
def _series(metric: Any, labels: tuple[str, ...]) -> Any:
    return metric.labels(*labels)


MODERATION = Counter(
    "mxn_moderation_total",
    "Moderation outcomes by stage (input, output, classifier)",
    ("stage", "outcome"),
    registry=REGISTRY,
)
ALERTS = Counter("mxn_alerts_total", "Alerts raised, by kind", ("kind",), registry=REGISTRY)
# Requests refused before any upstream call, by cause: rate_limit, quota, limiter_unavailable, store_unavailable.
REFUSED = Counter("mxn_refused_total", "Requests refused, by cause", ("cause",), registry=REGISTRY)
# Limit decisions taken without Redis, by MXN_LIMITS_WHEN_REDIS_DOWN: local (each replica alone, in memory),
# open (admitted unchecked), closed (refused with 503).
LIMITER_FALLBACK = Counter(
    "mxn_limiter_fallback_total", "Limit decisions taken while Redis is away, by mode", ("mode",), registry=REGISTRY
)
DEPENDENCY_UP = Gauge(
    "mxn_dependency_up", "1 while a dependency answers, 0 while its calls fail", ("dependency",), registry=REGISTRY
)
