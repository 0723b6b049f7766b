"""Usage queries shared by /admin/usage, /api/usage and `mxn usage`: filters, JSON rows, CSV."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.responses import Response

from mxn.accounts.service import parse_duration, parse_time
from mxn.errors import InvalidRequest
from mxn.store.models import Usage, User
from mxn.usage import COLUMNS
from mxn.wire import json_response

FIELDS = ("id", "user", *COLUMNS)


def parse_since(text: str | None) -> datetime | None:
    """`24h`, `7d` (that long ago) or an ISO date."""
    if not text:
        return None
    duration = parse_duration(text)
    return datetime.now(UTC) - duration if duration is not None else parse_time(text, "since")


async def usage_rows(
    s: AsyncSession,
    *,
    user_id: int | None = None,
    user: str | None = None,
    since: str | None = None,
    limit: int = 10_000,
) -> list[dict[str, Any]]:
    if not 1 <= limit <= 100_000:
        raise InvalidRequest("limit must be between 1 and 100000", param="limit")
    q = select(Usage, User.name).outerjoin(User, User.id == Usage.user_id).order_by(Usage.id.desc()).limit(limit)
    if user_id is not None:
        q = q.where(Usage.user_id == user_id)
    if user:
        q = q.where(User.name == user)
    start = parse_since(since)
    if start is not None:
        q = q.where(Usage.created_at >= start)
    return [{"id": u.id, "user": name, **{c: getattr(u, c) for c in COLUMNS}} for u, name in (await s.execute(q)).all()]


def usage_response(rows: list[dict[str, Any]], fmt: str) -> Response:
    if fmt == "csv":
        return Response(
            to_csv(rows), media_type="text/csv", headers={"content-disposition": 'attachment; filename="usage.csv"'}
        )
    if fmt != "json":
        raise InvalidRequest("format is json or csv", param="format")
    return json_response({"data": rows})


def to_csv(rows: list[dict[str, Any]]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=FIELDS, extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in row.items()})
    return out.getvalue()
