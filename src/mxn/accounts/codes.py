"""Redemption codes (OneAPI): made in batches by an admin, each redeemed once, ever."""

from __future__ import annotations

import secrets
import string
from datetime import UTC, datetime

from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession

from mxn.accounts.keys import hash_key
from mxn.errors import InvalidRequest, NotFound
from mxn.store.models import Code, User

_ALPHABET = string.ascii_uppercase + string.digits


def new_code() -> str:
    return "mxn-" + "".join(secrets.choice(_ALPHABET) for _ in range(24))


async def create_codes(s: AsyncSession, secret: bytes, quota: int, count: int) -> list[str]:
    if quota <= 0 or not 1 <= count <= 10_000:
        raise InvalidRequest("quota must be positive and count between 1 and 10000", param="quota")
    codes = [new_code() for _ in range(count)]
    s.add_all(Code(code_hash=hash_key(secret, c), prefix=c[:8], quota=quota) for c in codes)
    await s.commit()
    return codes


async def redeem(s: AsyncSession, secret: bytes, user_id: int, code: str) -> int:
    """Credit the code's quota to the user, in one transaction that only one caller can win."""
    user = await s.get(User, user_id)
    if user is None or user.quota is None:
        raise InvalidRequest(
            "your quota is unlimited: keep the code for someone who needs it", param="code", code="quota_unlimited"
        )
    now = datetime.now(UTC)
    claimed = await s.execute(
        update(Code)
        .where(Code.code_hash == hash_key(secret, code.strip()), Code.redeemed_by.is_(None))
        .values(redeemed_by=user_id, redeemed_at=now)
        .returning(Code.quota)
    )
    quota = claimed.scalar_one_or_none()
    if quota is None:
        await s.rollback()
        raise NotFound("this code does not exist or has already been redeemed", param="code", code="invalid_code")
    # A top-up starts a new grant: quota alerts count from the new balance.
    topped = User.quota + quota
    await s.execute(update(User).where(User.id == user_id).values(quota=topped, quota_granted=topped, quota_alerted=0))
    await s.commit()
    return int(quota)
