"""Settings from the environment."""

from __future__ import annotations

import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from mxn.cli import app
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


# Every setting that takes one of a few words, with a misspelling of it and the words it takes.
WORD_SETTINGS = [
    ("MXN_QUOTA_UNIT", "credit", "'tokens' or 'credits'"),
    ("MXN_LOG_LEVEL", "verbose", "'critical', 'error', 'warning', 'info', 'debug' or 'trace'"),
]


@pytest.mark.parametrize(("name", "typo", "words"), WORD_SETTINGS)
def test_a_misspelt_word_setting_is_refused(monkeypatch: pytest.MonkeyPatch, name: str, typo: str, words: str) -> None:
    # A typo in MXN_QUOTA_UNIT used to bill in tokens without a word; now the settings do not load at all.
    monkeypatch.setenv(name, typo)
    with pytest.raises(ValidationError) as caught:
        Settings()
    (error,) = caught.value.errors()
    assert error["loc"] == (name.removeprefix("MXN_").lower(),)
    assert words in error["msg"]


@pytest.mark.parametrize(("name", "typo", "words"), WORD_SETTINGS)
def test_serve_exits_naming_a_misspelt_setting(
    monkeypatch: pytest.MonkeyPatch, name: str, typo: str, words: str
) -> None:
    monkeypatch.setenv(name, typo)
    result = CliRunner().invoke(app, ["serve"])
    assert result.exit_code == 2
    assert f"error: invalid setting {name}: " in result.stderr and words in result.stderr


def test_word_settings_take_their_words(monkeypatch: pytest.MonkeyPatch) -> None:
    assert (Settings().quota_unit, Settings().log_level) == ("tokens", "info")
    monkeypatch.setenv("MXN_QUOTA_UNIT", "credits")
    # uvicorn reads a level in any case, so an existing `MXN_LOG_LEVEL=DEBUG` keeps working.
    monkeypatch.setenv("MXN_LOG_LEVEL", "DEBUG")
    assert (Settings().quota_unit, Settings().log_level) == ("credits", "debug")
