"""Admission and settlement: limits and quota before the call; usage, tokens and refunds after it."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import anyio

from mxn import metrics
from mxn.accounts import quota
from mxn.accounts.service import Principal
from mxn.catalog.registry import Cell
from mxn.errors import RateLimited
from mxn.gateway import normalize
from mxn.gateway.params import Prepared
from mxn.gateway.state import AppState
from mxn.limits import CONCURRENT, REQUESTS, TOKENS, Rule, headers
from mxn.usage import record

log = logging.getLogger("mxn.admit")
_KINDS = {"rpm": (REQUESTS, 60.0), "rpd": (REQUESTS, 86400.0), "tpm": (TOKENS, 60.0), "concurrency": (CONCURRENT, 0.0)}


def rules_for(principal: Principal, cell: Cell) -> list[Rule]:
    """The key's limits, the user's totals where the group sets them, and the cell's own limits."""
    rules = []
    # A console session has no key of its own: its per-key limits count per user instead.
    key_scope = f"key:{principal.key_id}" if principal.key_id else f"console:{principal.user_id}"
    for scope, limits in (
        (key_scope, principal.key_limits),
        (f"user:{principal.user_id}", principal.user_limits),
        (f"cell:{cell.id}", cell.limits),
    ):
        for name, limit in limits:
            kind, window = _KINDS[name]
            rules.append(Rule(f"{scope}:{name}", kind, limit, window))
    return rules


@dataclass
class Admission:
    state: AppState
    principal: Principal
    cell: Cell
    route: str
    rules: list[Rule]
    request_id: str
    price: quota.Price
    reservation: quota.Reservation
    headers: dict[str, str]
    cap: int | None = None  # the completion tokens the balance affords, when fewer than asked
    started: float = field(default_factory=time.perf_counter)
    ttft_ms: float | None = None
    done: bool = False

    def first_token(self) -> None:
        if self.ttft_ms is None:
            self.ttft_ms = 1000 * (time.perf_counter() - self.started)

    async def finish(
        self, status: int, prompt: int, completion: int, endpoint_id: int | None = None, error: str | None = None
    ) -> None:
        """Settle once: quota to the real cost, completion tokens to the TPM rules, slots back, a usage record."""
        if self.done:
            return
        self.done = True
        cost = self.price.cost(prompt, completion)
        # Shielded: a client that goes away must not leave a reservation or a slot behind.
        with anyio.CancelScope(shield=True):
            slots = [r for r in self.rules if r.kind == CONCURRENT]
            try:
                await self.state.holds.settle(self.reservation, cost)
            finally:
                tokens = [r for r in self.rules if r.kind == TOKENS]
                await self.state.limiter.finish(tokens, slots, self.request_id, completion)
        if not self.reservation.empty and self.reservation.may_cross(cost):
            self.state.alerts.soon(self.state.alerts.quota_spent(self.reservation.user_id, self.reservation.key_id))
        p, model, chip = self.principal, self.cell.model.name, self.cell.chip.id
        latency = time.perf_counter() - self.started
        metrics.series(metrics.REQUESTS, model, chip, str(status)).inc()
        metrics.series(metrics.ROUTES, self.route, str(status)).inc()
        metrics.series(metrics.LATENCY, model, chip).observe(latency)
        if self.ttft_ms is not None:
            metrics.series(metrics.TTFT, model, chip).observe(self.ttft_ms / 1000)
        metrics.series(metrics.TOKENS, model, chip, "prompt").inc(prompt)
        metrics.series(metrics.TOKENS, model, chip, "completion").inc(completion)
        if error:
            metrics.series(metrics.ERRORS, model, chip, error).inc()
        await self.state.usage.add(
            record(
                user_id=p.user_id,
                key_id=p.key_id,
                model=self.cell.model.name,
                chip=self.cell.chip.id,
                endpoint_id=endpoint_id,
                route=self.route,
                prompt_tokens=prompt,
                completion_tokens=completion,
                ttft_ms=self.ttft_ms,
                latency_ms=1000 * (time.perf_counter() - self.started),
                status=status,
                error=error,
                cost=cost,
                request_id=self.request_id,
                **self.reservation.paid_from(),
            )
        )


async def _refused(
    state: AppState, principal: Principal, cell: Cell, route: str, request_id: str, error: str, scope: str, limit: str
) -> None:
    """A request turned away by a limit or the quota still gets its usage record (at no cost)."""
    metrics.series(metrics.LIMITED, scope, limit).inc()
    metrics.series(metrics.REQUESTS, cell.model.name, cell.chip.id, "429").inc()
    metrics.series(metrics.ROUTES, route, "429").inc()
    await state.usage.add(
        record(
            user_id=principal.user_id,
            key_id=principal.key_id,
            model=cell.model.name,
            chip=cell.chip.id,
            endpoint_id=None,
            route=route,
            prompt_tokens=0,
            completion_tokens=0,
            ttft_ms=None,
            latency_ms=0.0,
            status=429,
            error=error,
            cost=0,
            request_id=request_id,
        )
    )


async def admit(state: AppState, principal: Principal, cell: Cell, prepared: Prepared, route: str) -> Admission:
    rules = rules_for(principal, cell)
    request_id = normalize.request_id()
    decision = await state.limiter.acquire(rules, request_id, prepared.prompt_tokens)
    limit_headers = {"x-request-id": request_id, **headers(decision)}
    if not decision.allowed:
        denied = decision.denied_by
        what = f"{denied.key.rsplit(':', 1)[-1]} limit of {denied.limit}" if denied else "rate limit"
        scope = denied.key.split(":", 1)[0] if denied else "unknown"  # key, user or cell
        limit = denied.key.rsplit(":", 1)[-1] if denied else "unknown"  # rpm, rpd, tpm, concurrency
        await _refused(state, principal, cell, route, request_id, "rate_limit_exceeded", scope, limit)
        raise RateLimited(
            f"Rate limit reached: {what}. Retry after {limit_headers['retry-after']}s.", headers=limit_headers
        )
    price = quota.Price(
        state.settings.quota_unit == "credits", cell.price_input, cell.price_output, principal.multiplier
    )
    room = cell.model.context_length - prepared.prompt_tokens
    want = price.cost(prepared.prompt_tokens, (prepared.max_tokens or room) * prepared.choices)
    try:
        reservation = await state.holds.reserve(
            principal.user_id,
            principal.key_id,
            principal.user_limited,
            principal.key_limited,
            want,
            price.cost(prepared.prompt_tokens, 1),
        )
    except RateLimited as exc:
        await state.limiter.release([r for r in rules if r.kind == CONCURRENT], request_id)
        await _refused(state, principal, cell, route, request_id, exc.code or "insufficient_quota", "quota", "balance")
        minimum = price.cost(prepared.prompt_tokens, 1)
        state.alerts.soon(state.alerts.quota_spent(principal.user_id, principal.key_id or None, below=minimum))
        exc.headers = {**limit_headers, **exc.headers}
        raise
    cap = None
    if reservation.amount < want:
        # The balance affords less than asked: it caps the generation instead of refusing it.
        cap = max(1, price.completion_affordable(reservation.amount, prepared.prompt_tokens) // prepared.choices)
    return Admission(state, principal, cell, route, rules, request_id, price, reservation, limit_headers, cap)
