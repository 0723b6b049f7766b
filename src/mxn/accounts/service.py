"""Users, keys and sessions: the store primitives under `mxn.services`, and the checks the request path makes."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import ipaddress
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from mxn.accounts.keys import display_prefix, hash_key, new_key
from mxn.accounts.passwords import hash_password, verify_password
from mxn.errors import AuthError, Conflict, InvalidRequest, NotFound, PermissionDenied
from mxn.store.models import ApiKey, Group, Session, User

MAX_KEYS_PER_USER = 5
# last_used_at is written at most this often per key: a write per request would
# put the store on the hot path.
TOUCH_EVERY = timedelta(seconds=60)


LIMIT_NAMES = ("rpm", "rpd", "tpm", "concurrency")
# The default group's per-key limits when no group row says otherwise (GenStudio's free tier, seed 000).
DEFAULT_LIMITS = {"rpm": 12, "rpd": 3000, "tpm": 12_000_000, "concurrency": None}


@dataclass(frozen=True, slots=True)
class Principal:
    user_id: int
    user: str
    role: str
    key_id: int
    models: frozenset[str] | None
    chips: frozenset[str] | None
    pinned_endpoint: int | None = None
    group: str = "default"
    multiplier: float = 1.0
    # Effective limits: the key's own where set, else its group's defaults; per-user totals from the group.
    key_limits: tuple[tuple[str, int], ...] = ()
    user_limits: tuple[tuple[str, int], ...] = ()
    # Whether the user's and the key's balances are limited (NULL quota is unlimited: nothing to reserve).
    user_limited: bool = True
    key_limited: bool = True

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    def check_cell(self, model: str, chip: str) -> None:
        if self.models is not None and model not in self.models:
            raise PermissionDenied(f"this key may not use model '{model}'", param="model", code="model_not_allowed")
        if self.chips is not None and chip not in self.chips:
            raise PermissionDenied(f"this key may not use chip '{chip}'", param="model", code="chip_not_allowed")


def _now() -> datetime:
    return datetime.now(UTC)


def _aware(value: datetime) -> datetime:
    # SQLite hands back naive datetimes; they were written in UTC.
    return value if value.tzinfo else value.replace(tzinfo=UTC)


_DURATION = re.compile(r"^(\d+)([smhdw])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def _not_negative(values: dict[str, int | None]) -> None:
    for name, value in values.items():
        if value is not None and value < 0:
            raise InvalidRequest(f"{name} may not be negative", param=name)


def parse_duration(text: str) -> timedelta | None:
    """`30d`, `12h`, `90s`, `2w` as a timedelta; None for anything else."""
    m = _DURATION.match(text.strip())
    return timedelta(**{_UNITS[m.group(2)]: int(m.group(1))}) if m else None


def parse_time(text: str, param: str) -> datetime:
    try:
        return _aware(datetime.fromisoformat(text.strip()))
    except ValueError:
        raise InvalidRequest(f"{param}: '{text}' is neither a duration like 30d nor an ISO date", param=param)


def parse_expiry(text: str | None) -> datetime | None:
    """`30d` from now, or an ISO date/time; None for no expiry."""
    if not text:
        return None
    duration = parse_duration(text)
    return _now() + duration if duration is not None else parse_time(text, "expires")


def parse_networks(ips: list[str] | None) -> list[str] | None:
    if not ips:
        return None
    try:
        return [str(ipaddress.ip_network(x.strip(), strict=False)) for x in ips if x.strip()]
    except ValueError as exc:
        raise InvalidRequest(f"ips: {exc}", param="ips")


async def create_user(
    s: AsyncSession,
    name: str,
    password: str | None,
    *,
    admin: bool = False,
    group: str | None = None,
    quota: int | None = None,
) -> User:
    if not re.fullmatch(r"[A-Za-z0-9_.@-]{1,64}", name):
        raise InvalidRequest("user name: 1–64 letters, digits or _.@-", param="name")
    _not_negative({"quota": quota})
    group = group or ("unlimited" if admin else "default")
    if await s.get(Group, group) is None:
        raise InvalidRequest(f"no group '{group}'", param="group", code="group_not_found")
    user = User(
        name=name,
        password_hash=await asyncio.to_thread(hash_password, password) if password else None,
        role="admin" if admin else "user",
        group=group,
        quota=quota,
    )
    s.add(user)
    try:
        await s.flush()
    except IntegrityError:
        await s.rollback()
        raise Conflict(f"user '{name}' already exists", param="name")
    return user


async def user_by_name(s: AsyncSession, name: str) -> User:
    user = (await s.execute(select(User).where(User.name == name))).scalar_one_or_none()
    if user is None:
        raise NotFound(f"no user '{name}'", param="user", code="user_not_found")
    return user


async def create_key(
    s: AsyncSession,
    secret: bytes,
    user: User,
    *,
    name: str = "",
    models: list[str] | None = None,
    chips: list[str] | None = None,
    expires: str | None = None,
    ips: list[str] | None = None,
    limits: dict[str, int | None] | None = None,
) -> tuple[ApiKey, str]:
    """Returns the row and the key itself, which exists nowhere else after this call."""
    _not_negative(limits or {})
    count = (await s.execute(select(func.count()).where(ApiKey.user_id == user.id))).scalar_one()
    group = await s.get(Group, user.group)
    max_keys = group.max_keys if group is not None else MAX_KEYS_PER_USER
    if count >= max_keys:
        raise Conflict(f"user '{user.name}' already has {count} keys (at most {max_keys})", code="too_many_keys")
    key = new_key()
    row = ApiKey(
        user_id=user.id,
        name=name,
        prefix=display_prefix(key),
        key_hash=hash_key(secret, key),
        models=models or None,
        chips=chips or None,
        ips=parse_networks(ips),
        expires_at=parse_expiry(expires),
        **(limits or {}),
    )
    s.add(row)
    await s.flush()
    return row, key


def key_view(row: ApiKey, user: str | None = None) -> dict[str, Any]:
    return {
        "id": row.id,
        "user": user,
        "name": row.name,
        "prefix": row.prefix,
        "enabled": row.enabled,
        "created_at": row.created_at,
        "last_used_at": row.last_used_at,
        "expires_at": row.expires_at,
        "models": row.models,
        "chips": row.chips,
        "ips": row.ips,
        "rpm": row.rpm,
        "rpd": row.rpd,
        "tpm": row.tpm,
        "concurrency": row.concurrency,
        "quota": row.quota,
    }


# The settings of a key that its owner chooses (limits and quota are the admin's).
KEY_FIELDS = {"name", "models", "chips", "expires", "ips"}


async def _with_owner(s: AsyncSession, table: type[ApiKey] | type[Session], where: Any) -> Any:
    """A key's or session's row with its user and the user's group (None when the group is gone)."""
    query = (
        select(table, User, Group)
        .join(User, User.id == table.user_id)
        .outerjoin(Group, Group.name == User.group)
        .where(where)
    )
    return (await s.execute(query)).one_or_none()


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """What the store says about a key, as the request path needs it (and `accounts.cache` keeps it)."""

    principal: Principal  # without a pinned endpoint: that comes with each request's key suffix
    enabled: bool  # the key's and its user's
    expires_at: datetime | None
    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] | None
    last_used_at: datetime | None


async def load_key(s: AsyncSession, key_hash: str) -> KeyRecord | None:
    row = await _with_owner(s, ApiKey, ApiKey.key_hash == key_hash)
    if row is None:
        return None
    api_key, user, group = row
    principal = Principal(
        user_id=user.id,
        user=user.name,
        role=user.role,
        key_id=api_key.id,
        models=frozenset(api_key.models) if api_key.models else None,
        chips=frozenset(api_key.chips) if api_key.chips else None,
        group=user.group,
        multiplier=group.multiplier if group else 1.0,
        key_limits=_key_limits(api_key, group),
        user_limits=_user_limits(group),
        user_limited=user.quota is not None,
        key_limited=api_key.quota is not None,
    )
    return KeyRecord(
        principal,
        api_key.enabled and user.enabled,
        _aware(api_key.expires_at) if api_key.expires_at is not None else None,
        tuple(ipaddress.ip_network(n) for n in api_key.ips) if api_key.ips else None,
        _aware(api_key.last_used_at) if api_key.last_used_at is not None else None,
    )


def check_key(record: KeyRecord, pin: int | None, client_ip: str | None, now: datetime) -> Principal:
    """The caller, if this key may be used now, from this address, with this endpoint pin."""
    if not record.enabled:
        raise AuthError("This API key has been disabled.", code="key_disabled")
    if record.expires_at is not None and record.expires_at <= now:
        raise AuthError("This API key has expired.", code="key_expired")
    if record.networks is not None and not _ip_allowed(client_ip, record.networks):
        raise PermissionDenied("this key may not be used from your address", code="ip_not_allowed")
    if pin is None:
        return record.principal
    if not record.principal.is_admin:
        raise AuthError("Incorrect API key provided.")
    return dataclasses.replace(record.principal, pinned_endpoint=pin)


async def touch_key(s: AsyncSession, key_id: int, now: datetime) -> None:
    await s.execute(update(ApiKey).where(ApiKey.id == key_id).values(last_used_at=now))
    await s.commit()


def _key_limits(api_key: ApiKey, group: Group | None) -> tuple[tuple[str, int], ...]:
    out = []
    for name in LIMIT_NAMES:
        value = getattr(api_key, name)
        if value is None:
            value = getattr(group, name) if group is not None else DEFAULT_LIMITS[name]
        if value:  # 0 or None: no limit
            out.append((name, int(value)))
    return tuple(out)


def _user_limits(group: Group | None) -> tuple[tuple[str, int], ...]:
    if group is None:
        return ()
    values = ((n, getattr(group, f"user_{n}")) for n in LIMIT_NAMES)
    return tuple((n, int(v)) for n, v in values if v)


def _ip_allowed(client_ip: str | None, networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]) -> bool:
    if not client_ip:
        return False
    try:
        addr = ipaddress.ip_address(client_ip)
    except ValueError:
        return False
    return any(addr in n for n in networks)


SESSION_DAYS = 7


async def rotate_key(s: AsyncSession, secret: bytes, row: ApiKey) -> str:
    """A new secret for the same key (name, limits, allowlists and quota stay); the old one stops working."""
    key = new_key()
    row.key_hash, row.prefix = hash_key(secret, key), display_prefix(key)
    await s.flush()
    return key


@functools.cache
def _decoy_hash() -> str:
    return hash_password(secrets.token_urlsafe(16))


def _verify_or_decoy(stored: str | None, password: str) -> bool:
    """verify_password; with nothing to check against, the same work on a decoy, and False."""
    if stored is None:
        verify_password(_decoy_hash(), password)
        return False
    return verify_password(stored, password)


async def login(s: AsyncSession, secret: bytes, name: str, password: str) -> tuple[User, str]:
    """A console session for a correct name and password; the same error for every wrong combination."""
    user = (await s.execute(select(User).where(User.name == name))).scalar_one_or_none()
    # argon2 takes ~100 ms of CPU on purpose: off the event loop, so other requests keep flowing. It runs for
    # unknown, disabled and password-less users too, so that the time taken does not tell which names exist.
    stored = user.password_hash if user is not None and user.enabled and user.password_hash else None
    ok = await asyncio.to_thread(_verify_or_decoy, stored, password)
    if user is None or not ok:
        raise AuthError("wrong user name or password", code="invalid_credentials")
    token = secrets.token_urlsafe(32)
    s.add(
        Session(token_hash=hash_key(secret, token), user_id=user.id, expires_at=_now() + timedelta(days=SESSION_DAYS))
    )
    await s.commit()
    return user, token


async def session_principal(s: AsyncSession, secret: bytes, token: str) -> Principal:
    row = await _with_owner(s, Session, Session.token_hash == hash_key(secret, token))
    if row is None or _aware(row[0].expires_at) <= _now() or not row[1].enabled:
        raise AuthError("Your console session has ended; log in again.", code="session_expired")
    _session, user, group = row
    # The console speaks for the user with the group's per-key defaults and no key of its own.
    return Principal(
        user_id=user.id,
        user=user.name,
        role=user.role,
        key_id=0,
        models=None,
        chips=None,
        group=user.group,
        multiplier=group.multiplier if group else 1.0,
        key_limits=_key_limits(ApiKey(), group),
        user_limits=_user_limits(group),
        user_limited=user.quota is not None,
        key_limited=False,
    )


async def logout(s: AsyncSession, secret: bytes, token: str) -> None:
    await s.execute(delete(Session).where(Session.token_hash == hash_key(secret, token)))
    await s.commit()
