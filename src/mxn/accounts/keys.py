"""API keys: `sk-` + 48 random base62 characters, stored only as an HMAC of the server secret."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import string

KEY_PREFIX = "sk-"
_ALPHABET = string.ascii_letters + string.digits
_BODY_LEN = 48


def new_key() -> str:
    # base62 on purpose: no '-' inside, so an admin's `sk-...-<endpoint id>` pin is unambiguous.
    return KEY_PREFIX + "".join(secrets.choice(_ALPHABET) for _ in range(_BODY_LEN))


def hash_key(secret: bytes, key: str) -> str:
    return hmac.digest(secret, key.encode(), hashlib.sha256).hex()  # one call into OpenSSL


def display_prefix(key: str) -> str:
    return key[:7] + "…"


def split_pin(key: str) -> tuple[str, int | None]:
    """`sk-abc...-12` → (`sk-abc...`, 12): OneAPI's channel pin, honoured for admins only."""
    head, sep, tail = key.rpartition("-")
    if sep and head.startswith(KEY_PREFIX) and len(head) > len(KEY_PREFIX) and tail.isdigit():
        return head, int(tail)
    return key, None
