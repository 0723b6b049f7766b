"""Alerts (SPEC §5): usage spikes, a key used from a new address, quota 80% and 100% spent, an endpoint down.

Each alert is stored once, however many replicas notice it (a unique `dedupe` key), listed under
/admin/alerts and /api/alerts, and sent to the operator's webhook signed with HMAC-SHA256:
`X-Mxn-Signature: sha256=HEX` over `TIMESTAMP.BODY`, with `X-Mxn-Timestamp: TIMESTAMP`. Failed deliveries are
retried with exponential backoff; a replica claims a delivery before it sends, so one sends it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import orjson
from sqlalchemy import and_, case, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from mxn import metrics
from mxn.config import Settings
from mxn.store.models import Alert, ApiKey, KeyAddress, Usage, User

log = logging.getLogger("mxn.alerts")
KINDS = ("usage_spike", "new_ip", "quota_80", "quota_100", "endpoint_down")
CLAIM_SECONDS = 30  # a claimed delivery that never finished is tried again after this long
WEBHOOK_TIMEOUT = aiohttp.ClientTimeout(total=10.0)


def sign(secret: str, timestamp: str, body: bytes) -> str:
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def view(a: Alert) -> dict[str, Any]:
    return {
        "id": a.id,
        "kind": a.kind,
        "created_at": a.created_at.isoformat() if a.created_at else None,
        "user_id": a.user_id,
        "key_id": a.key_id,
        "message": a.message,
        "details": a.details,
        "delivered_at": a.delivered_at.isoformat() if a.delivered_at else None,
        "attempts": a.attempts,
        "last_error": a.last_error,
    }


async def rows(
    s: AsyncSession,
    *,
    kind: str | None = None,
    user_id: int | None = None,
    since: datetime | None = None,
    limit: int = 1000,
) -> list[Alert]:
    q = select(Alert).order_by(Alert.id.desc()).limit(limit)
    if kind:
        q = q.where(Alert.kind == kind)
    if user_id is not None:
        q = q.where(Alert.user_id == user_id)
    if since:
        q = q.where(Alert.created_at >= since)
    return list((await s.execute(q)).scalars())


def _now() -> datetime:
    return datetime.now(UTC)


class Alerts:
    """Raises alerts into the store and delivers them to the webhook, in the background of each replica."""

    def __init__(
        self, settings: Settings, sessions: async_sessionmaker[AsyncSession], http: aiohttp.ClientSession
    ) -> None:
        self.settings, self.sessions, self.http = settings, sessions, http
        self._seen: set[tuple[int, str]] = set()  # (key, address) pairs this process knows are recorded
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._pending: set[asyncio.Task[Any]] = set()

    def start(self) -> None:
        self._tasks.append(asyncio.create_task(self._spike_loop()))
        if self.settings.alert_webhook:
            self._tasks.append(asyncio.create_task(self._deliver_loop()))

    async def close(self) -> None:
        for task in [*self._tasks, *self._pending]:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def raise_alert(
        self,
        kind: str,
        message: str,
        dedupe: str,
        *,
        user_id: int | None = None,
        key_id: int | None = None,
        details: dict[str, Any] | None = None,
    ) -> bool:
        """Store an alert unless this occurrence already was; True when it is new."""
        async with self.sessions() as s:
            s.add(
                Alert(
                    created_at=_now(),
                    kind=kind,
                    user_id=user_id,
                    key_id=key_id,
                    message=message[:512],
                    details=details,
                    dedupe=dedupe[:160],
                    attempts=0,
                    next_attempt_at=_now() if self.settings.alert_webhook else None,
                )
            )
            try:
                await s.commit()
            except IntegrityError:
                return False
        metrics.ALERTS.labels(kind).inc()
        log.warning("alert %s: %s", kind, message)
        self._wake.set()
        return True

    def soon(self, work: Any) -> None:
        """Run a coroutine in the background (from code that cannot wait, such as the router)."""
        task = asyncio.get_running_loop().create_task(work)
        self._pending.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._pending.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.warning("alert work failed: %s", type(exc).__name__)  # its store may be away; no traceback

    # --- what raises them ---
    def note_key_use(self, key_id: int, user_id: int, ip: str | None) -> None:
        """`key_used` in the background, and only for an address this process has not yet seen the key use."""
        if key_id and ip and (key_id, ip) not in self._seen:
            self.soon(self.key_used(key_id, user_id, ip))

    async def key_used(self, key_id: int, user_id: int, ip: str | None) -> None:
        """Record the address a key is used from; a key's second and later addresses raise `new_ip`."""
        if not key_id or not ip or (key_id, ip) in self._seen:
            return
        async with self.sessions() as s:
            known = (await s.execute(select(KeyAddress.ip).where(KeyAddress.key_id == key_id))).scalars().all()
            if ip not in known:
                s.add(KeyAddress(key_id=key_id, ip=ip))
                try:
                    await s.commit()
                except IntegrityError:  # another request or replica recorded it first
                    known = [ip]
        if len(self._seen) > 100_000:
            self._seen.clear()
        self._seen.add((key_id, ip))
        if known and ip not in known:
            await self.raise_alert(
                "new_ip",
                f"key {key_id} was used from a new address {ip}",
                f"new_ip:{key_id}:{ip}",
                user_id=user_id,
                key_id=key_id,
                details={"ip": ip, "known": sorted(known)[:20]},
            )

    async def quota_spent(self, user_id: int | None, key_id: int | None, below: int = 1) -> None:
        """After a charge, or a refusal for want of `below` units: quota_80 / quota_100, once per grant."""
        for table, ident in ((User, user_id), (ApiKey, key_id)):
            if ident is None:
                continue
            async with self.sessions() as s:
                level = await _crossed(s, table, ident, below)
                await s.commit()
            if level:
                what = f"user {ident}" if table is User else f"key {ident}"
                await self.raise_alert(
                    f"quota_{level}",
                    f"{what} has spent {level}% of its quota",
                    f"quota_{level}:{table.__tablename__}:{ident}:{time.time_ns()}",
                    user_id=user_id,
                    key_id=key_id if table is ApiKey else None,
                    details={"scope": "user" if table is User else "key", "id": ident},
                )

    def endpoint_down(self, endpoint_id: int, cell: str, why: str) -> None:
        bucket = int(time.time() // 300)  # replicas that see the same outage within 5 minutes raise one alert
        self.soon(
            self.raise_alert(
                "endpoint_down",
                f"endpoint {endpoint_id} of {cell} is down: {why}",
                f"endpoint_down:{endpoint_id}:{bucket}",
                details={"endpoint": endpoint_id, "deployment": cell, "reason": why},
            )
        )

    async def check_spikes(self) -> int:
        """Keys whose tokens in the last window exceed `factor` × their average window before it."""
        st = self.settings
        window = timedelta(seconds=st.alert_spike_window)
        now = _now()
        current_from, baseline_from = now - window, now - window * (1 + st.alert_spike_baseline)
        tokens = Usage.prompt_tokens + Usage.completion_tokens
        q = (
            select(
                Usage.key_id,
                func.max(Usage.user_id),
                func.sum(case((Usage.created_at >= current_from, tokens), else_=0)),
                func.sum(case((Usage.created_at < current_from, tokens), else_=0)),
            )
            .where(Usage.created_at >= baseline_from, Usage.key_id.is_not(None))
            .group_by(Usage.key_id)
        )
        recent = select(Alert.key_id).where(Alert.kind == "usage_spike", Alert.created_at >= current_from)
        async with self.sessions() as s:
            found = (await s.execute(q)).all()
            alerted = set((await s.execute(recent)).scalars())  # one alert per spike, not one per check
        raised = 0
        for key_id, user_id, current, before in found:
            if key_id in alerted:
                continue
            current, before = int(current or 0), int(before or 0)
            baseline = before / st.alert_spike_baseline
            if before > 0 and current >= st.alert_spike_min_tokens and current >= st.alert_spike_factor * baseline:
                bucket = int(now.timestamp() // st.alert_spike_window)
                raised += await self.raise_alert(
                    "usage_spike",
                    f"key {key_id} used {current} tokens in the last {st.alert_spike_window:g} s, "
                    f"{current / max(baseline, 1):.1f}× its usual {baseline:.0f}",
                    f"usage_spike:{key_id}:{bucket}",
                    user_id=user_id,
                    key_id=key_id,
                    details={
                        "tokens": current,
                        "baseline": round(baseline, 1),
                        "window_seconds": st.alert_spike_window,
                    },
                )
        return raised

    async def _spike_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.alert_interval)
            try:
                await self.check_spikes()
            except Exception as exc:
                log.warning("usage spike check failed: %s", type(exc).__name__)

    # --- delivery ---
    async def _deliver_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await self._wake.wait()
            self._wake.clear()
            try:
                while await self._deliver_one():
                    pass
            except Exception as exc:
                log.warning("alert delivery failed: %s", type(exc).__name__)

    async def _deliver_one(self) -> bool:
        """Claim the oldest alert due for delivery and send it; False when none is due."""
        now = _now()
        async with self.sessions() as s:
            due = (
                await s.execute(
                    select(Alert.id, Alert.next_attempt_at)
                    .where(Alert.delivered_at.is_(None), Alert.next_attempt_at <= now)
                    .order_by(Alert.next_attempt_at)
                    .limit(1)
                )
            ).first()
            if due is None:
                return False
            claimed = await s.execute(
                update(Alert)
                .where(Alert.id == due.id, Alert.next_attempt_at == due.next_attempt_at)
                .values(next_attempt_at=now + timedelta(seconds=CLAIM_SECONDS))
            )
            await s.commit()
            if not claimed.rowcount:  # type: ignore[attr-defined]
                return True  # another replica took it
            alert = await s.get(Alert, due.id)
            assert alert is not None
            error = await self._post(alert)
            alert.attempts += 1
            if error is None:
                alert.delivered_at, alert.next_attempt_at, alert.last_error = _now(), None, None
            else:
                alert.last_error = error[:256]
                retry = alert.attempts < self.settings.alert_retries
                backoff = min(2.0 ** (alert.attempts - 1) * self.settings.alert_backoff, 3600.0)
                alert.next_attempt_at = _now() + timedelta(seconds=backoff) if retry else None
                log.warning("alert %s not delivered (%s)%s", alert.id, error, "" if retry else "; giving up")
            await s.commit()
            return True

    async def _post(self, alert: Alert) -> str | None:
        assert self.settings.alert_webhook and self.settings.alert_webhook_secret
        body = orjson.dumps({"type": "mxn.alert", **view(alert)})
        ts = str(int(time.time()))
        headers = {
            "content-type": "application/json",
            "x-mxn-timestamp": ts,
            "x-mxn-signature": sign(self.settings.alert_webhook_secret, ts, body),
            "x-mxn-alert-id": str(alert.id),
        }
        try:
            url = self.settings.alert_webhook
            async with self.http.post(url, data=body, headers=headers, timeout=WEBHOOK_TIMEOUT) as r:
                status = r.status
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            return type(exc).__name__
        return None if status < 300 else f"HTTP {status}"


async def _crossed(s: AsyncSession, table: type[User] | type[ApiKey], ident: int, below: int) -> int | None:
    """Move the row's alert level up to 80 or 100 when its balance says so; the level reached, if it moved."""
    spent_all = table.quota < below
    level = case((spent_all, 100), else_=80)
    result = await s.execute(
        update(table)
        .where(
            table.id == ident,
            table.quota_granted > 0,
            or_(
                and_(spent_all, table.quota_alerted < 100),
                and_(table.quota * 5 <= table.quota_granted, table.quota_alerted < 80),
            ),
        )
        .values(quota_alerted=level)
        .returning(table.quota_alerted)
    )
    return result.scalar_one_or_none()
