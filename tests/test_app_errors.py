"""The error handler in-process: whatever escapes a route becomes an OpenAI-shaped error, never a traceback."""

from __future__ import annotations

import httpx

from mxn.app import create_app
from mxn.config import Settings


async def test_unexpected_exception_is_a_500_in_openai_shape_without_details() -> None:
    app = create_app(Settings(database_url="sqlite+aiosqlite:///:memory:"))

    async def boom() -> None:
        raise RuntimeError("secret-internal-detail at /srv/mxn/app.py line 3")

    app.add_api_route("/boom", boom)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app, raise_app_exceptions=False), base_url="http://t"
    ) as client:
        r = await client.get("/boom")
    assert r.status_code == 500
    assert r.json() == {
        "error": {
            "message": "The server had an error while processing your request.",
            "type": "server_error",
            "param": None,
            "code": None,
        }
    }
    assert "secret-internal-detail" not in r.text


async def test_wrong_method_is_a_405_in_openai_shape() -> None:
    app = create_app(Settings(database_url="sqlite+aiosqlite:///:memory:"))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        r = await client.get("/v1/chat/completions")
    assert r.status_code == 405 and set(r.json()["error"]) == {"message", "type", "param", "code"}
