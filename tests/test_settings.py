"""Settings from the environment."""

from __future__ import annotations

import pytest

from mxn.config import Settings


def test_an_empty_variable_means_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    # What a compose file's `${MXN_ADMIN_KEY:-}` gives when the operator set nothing: no admin key at all,
    # not an empty one that an empty bearer token would match.
    for name in ("MXN_ADMIN_KEY", "MXN_RAY_ADDRESS", "MXN_CATALOG", "MXN_REDIS_URL", "MXN_DATABASE_URL"):
        monkeypatch.setenv(name, "")
    s = Settings()
    assert s.admin_key is None and s.ray_address is None and s.catalog is None and s.redis_url is None
    assert s.database_url.startswith("sqlite")
    monkeypatch.setenv("MXN_ADMIN_KEY", "k" * 32)
    assert Settings().admin_key == "k" * 32
