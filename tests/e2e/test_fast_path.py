"""The generation routes' own door (`gateway.fast`): it matches exactly what the FastAPI routes match, and what it
answers carries the same headers and errors as the rest of the app."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from starlette.routing import Match

from mxn.app import create_app
from mxn.config import Settings
from mxn.gateway import fast
from tests.conftest import Server
from tests.e2e.test_errors import MSG, assert_error

PATHS = [
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/models",
    "/v1/chat/completions/",
    "/maas/qwen/nvidia/chat/completions",
    "/maas/qwen/nvidia/completions",
    "/maas/qwen/nvidia/token_count",
    "/maas/qwen/nvidia/chat/completions/extra",
    "/maas/qwen/chat/completions",
    "/maas//nvidia/completions",
    "/maas/a b/芯片/completions",
    "/maas/qwen/nvidia/models",
    "/admin/users",
]


def _routes(routes: list[Any]) -> Iterator[Any]:
    for r in routes:
        if hasattr(r, "original_router"):  # FastAPI's wrapper of an included router
            yield from _routes(r.original_router.routes)
        else:
            yield r


@pytest.mark.parametrize("path", PATHS)
def test_it_matches_what_the_framework_routes_match(path: str) -> None:
    app = create_app(Settings(database_url="sqlite+aiosqlite:///:memory:"))
    scope = {"type": "http", "method": "POST", "path": path, "root_path": ""}
    routed = next(
        (r for r in _routes(app.router.routes) if r.matches(scope)[0] == Match.FULL),
        None,
    )
    found = fast.match(path)
    if found is None:
        assert routed is None or routed.name not in {  # type: ignore[attr-defined]
            "v1_chat",
            "v1_completions",
            "v1_embeddings",
            "maas_chat",
            "maas_completions",
        }
        return
    route, ref = found
    assert routed is not None
    assert route.name == routed.name  # type: ignore[attr-defined]
    params = routed.matches(scope)[1].get("path_params", {})  # type: ignore[attr-defined]
    assert ref == ((params["model"], params["chip"]) if params else None)


def test_answers_carry_the_security_headers_and_openai_errors(server: Server) -> None:
    with server.client() as c:
        ok = c.post("/maas/qwen1.5-14b-chat/nvid%69a/chat/completions", json={"messages": MSG})
        assert ok.status_code == 200 and ok.json()["object"] == "chat.completion"
        assert ok.headers["x-content-type-options"] == "nosniff" and ok.headers["x-frame-options"] == "DENY"
        bad = c.post("/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"})
        assert_error(bad, 400, "invalid_json")
        assert bad.headers["x-content-type-options"] == "nosniff"
        assert_error(c.post("/maas/no-such-model/nvidia/chat/completions", json={"messages": MSG}), 404)
        assert c.get("/v1/models").status_code == 200  # not a generation route: the framework answers
    anonymous = httpx.post(f"{server.url}/v1/chat/completions", json={"model": "x", "messages": MSG}, timeout=30)
    assert_error(anonymous, 401, "missing_api_key")
    with server.admin() as admin:
        assert admin.get("/admin/users").status_code == 200
