"""Each step of the request chain (`gateway/pipeline.py`), in process: the app on a SQLite store, called over
ASGI, with a scripted engine registered the way any engine kind is (`mxn.engines.register`)."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from sqlalchemy import select

from mxn import audit, engines, metrics, services
from mxn.app import create_app
from mxn.catalog.apply import apply_catalog
from mxn.catalog.loader import parse_catalog
from mxn.catalog.schema import ModerationSpec
from mxn.config import Settings
from mxn.engines import ChunkStream, EndpointConfig, Engine
from mxn.errors import UpstreamError
from mxn.gateway.state import AppState
from mxn.store.migrate import upgrade
from mxn.store.models import Usage, User
from mxn.tokens import Tokenizer
from mxn.tokens.resolve import clear_caches

ANSWER = ["Hello", " from", " the", " engine"]
# What each scripted endpoint has been sent, by its script name (the endpoint's `path`).
SENT: dict[str, list[dict[str, Any]]] = {}


class Chunks(ChunkStream):
    def __init__(self, chunks: list[dict[str, Any]]) -> None:
        self.chunks = chunks

    async def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        for c in self.chunks:
            yield c

    async def aclose(self) -> None:
        pass


class Scripted(Engine):
    """An engine whose answers are written here: `echo` answers, `broken` fails, `cut` breaks off its stream."""

    def __init__(self, config: EndpointConfig, _client: object) -> None:
        self.script = config.path or "echo"

    async def call(self, route: str, body: dict[str, Any]) -> dict[str, Any]:
        SENT.setdefault(self.script, []).append(body)
        if self.script == "broken":
            raise UpstreamError("scripted failure")
        # No id, no usage, an unusual finish reason: normalising fills and maps them.
        text = "".join(ANSWER[: body.get("max_tokens") or len(ANSWER)])
        return {"choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "eos"}]}

    async def open_stream(self, route: str, body: dict[str, Any]) -> ChunkStream:
        SENT.setdefault(self.script, []).append(body)
        if self.script == "broken":
            raise UpstreamError("scripted failure")
        words = ANSWER[: body.get("max_tokens") or len(ANSWER)]
        chunks = [{"choices": [{"index": 0, "delta": {"content": t}, "finish_reason": None}]} for t in words]
        if self.script == "cut":
            return Chunks([*chunks[:2], {"error": {"message": "engine fell over"}}])
        return Chunks([*chunks, {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}])


CATALOG = """\
models:
  - {name: m, context_length: 256, tokenizer: "tiktoken:gpt2", kind: chat}
  - {name: failover, context_length: 256, tokenizer: "tiktoken:gpt2", kind: chat}
  - {name: cutter, context_length: 256, tokenizer: "tiktoken:gpt2", kind: chat}
  - {name: e, context_length: 256, tokenizer: "tiktoken:gpt2", kind: embedding}
deployments:
  - model: m
    chip: cpu
    limits: {rpm: 5}
    endpoints: [{engine: scripted, path: echo, supports: [seed]}]
  - model: failover
    chip: cpu
    endpoints: [{engine: scripted, path: broken, priority: 1}, {engine: scripted, path: echo}]
  - model: cutter
    chip: cpu
    endpoints: [{engine: scripted, path: cut}]
  - model: e
    chip: cpu
    endpoints: [{engine: scripted, path: echo}]
"""
MSG = [{"role": "user", "content": "hi there"}]


@pytest.fixture
def store(tmp_path: Path) -> str:
    url = f"sqlite+aiosqlite:///{tmp_path / 'mxn.db'}"
    upgrade(url)  # runs its own event loop: before the test's
    return url


@pytest.fixture
async def gateway(store: str, tmp_path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, AppState, str]]:
    engines.register("scripted", Scripted)
    SENT.clear()
    url = store
    settings = Settings(database_url=url, secret="s" * 32, usage_journal_dir=str(tmp_path / "journal"))
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        state: AppState = app.state.mxn
        async with state.sessions() as s:
            await apply_catalog(s, parse_catalog(CATALOG))
            user = await services.users.create(s, audit.cli(), "u", None, admin=False, group=None, quota=10_000)
            _, key = await services.keys.create(s, audit.cli(), state.secret, user)
            await s.commit()
        await state.reload_catalog()
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://mxn") as client:
            yield client, state, key
    engines.unregister("scripted")


def auth(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


async def usage(state: AppState) -> list[Usage]:
    await state.usage.flush()
    async with state.sessions() as s:
        return list((await s.execute(select(Usage).order_by(Usage.id))).scalars())


async def balance(state: AppState) -> int:
    await state.holds.give_back()
    async with state.sessions() as s:
        return int((await s.execute(select(User.quota).where(User.name == "u"))).scalar_one())


async def test_authenticate_parse_resolve_refuse_before_anything_is_charged(gateway: Any) -> None:
    client, state, key = gateway
    r = await client.post("/v1/chat/completions", json={"model": "m", "messages": MSG})
    assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
    r = await client.post("/v1/chat/completions", content=b"{not json", headers=auth(key))
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
    r = await client.post("/v1/chat/completions", json={"model": "nope", "messages": MSG}, headers=auth(key))
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    r = await client.post("/maas/e/cpu/chat/completions", json={"messages": MSG}, headers=auth(key))
    assert r.status_code == 400 and r.json()["error"]["code"] == "wrong_model_kind"
    assert await usage(state) == [] and SENT == {}


async def test_prepare_fills_and_checks_the_request_for_the_engine(gateway: Any) -> None:
    client, state, key = gateway
    # A parameter the only endpoint does not take is refused, naming it, before admission.
    r = await client.post("/maas/m/cpu/chat/completions", json={"messages": MSG, "top_k": 3}, headers=auth(key))
    assert r.status_code == 400 and r.json()["error"]["param"] == "top_k"
    r = await client.post("/maas/m/cpu/chat/completions", json={"messages": MSG, "max_tokens": 300}, headers=auth(key))
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"
    assert await usage(state) == []
    r = await client.post(
        "/maas/m/cpu/chat/completions", json={"messages": MSG, "seed": 7, "max_completion_tokens": 9}, headers=auth(key)
    )
    assert r.status_code == 200, r.text
    sent = SENT["echo"][-1]
    # The engine gets the cell's model name and what it takes: `max_completion_tokens` becomes `max_tokens`.
    assert sent["model"] == "m" and sent["seed"] == 7 and sent["max_tokens"] == 9
    assert "max_completion_tokens" not in sent


async def test_admit_limits_and_caps_by_balance_then_settle_charges_exactly(gateway: Any) -> None:
    client, state, key = gateway
    before = await balance(state)
    r = await client.post("/maas/m/cpu/chat/completions", json={"messages": MSG, "max_tokens": 50}, headers=auth(key))
    body = r.json()
    assert r.status_code == 200 and body["id"].startswith("chatcmpl-") and body["choices"][0]["finish_reason"] == "stop"
    used = body["usage"]
    assert used["completion_tokens"] == 4 and used["total_tokens"] == used["prompt_tokens"] + 4
    assert before - await balance(state) == used["total_tokens"]  # tokens as quota units, price 0 → 1 per token
    # The balance caps a generation it cannot pay in full, rather than refusing it: the engine is asked for less.
    async with state.sessions() as s:
        user = (await s.execute(select(User).where(User.name == "u"))).scalar_one()
        user.quota = left = used["prompt_tokens"] + 3
        await s.commit()
    r = await client.post("/maas/m/cpu/chat/completions", json={"messages": MSG, "max_tokens": 50}, headers=auth(key))
    assert r.status_code == 200, r.text
    assert SENT["echo"][-1]["max_tokens"] == 3
    # The cell's rpm limit of 5: the fifth request passes, the sixth is refused and recorded at no cost.
    statuses = []
    for _ in range(4):
        r = await client.post(
            "/maas/m/cpu/chat/completions", json={"messages": MSG, "max_tokens": 1}, headers=auth(key)
        )
        statuses.append(r.status_code)
    assert statuses[-1] == 429 and r.headers["retry-after"] and r.json()["error"]["code"] == "rate_limit_exceeded"
    rows = await usage(state)
    assert rows[1].cost == left and await balance(state) == 0  # exactly what the capped answer cost
    assert [u.status for u in rows][-1] == 429 and rows[-1].cost == 0


async def test_dispatch_fails_over_before_anything_was_sent(gateway: Any) -> None:
    client, state, key = gateway
    r = await client.post("/maas/failover/cpu/chat/completions", json={"messages": MSG}, headers=auth(key))
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "".join(ANSWER)
    assert len(SENT["broken"]) == 1 and len(SENT["echo"]) == 1
    (row,) = await usage(state)
    assert row.status == 200 and row.endpoint_id is not None


async def test_the_stream_is_normalised_rendered_and_settled(gateway: Any) -> None:
    client, state, key = gateway
    body = {"messages": MSG, "stream": True, "stream_options": {"include_usage": True}}
    r = await client.post("/maas/m/cpu/chat/completions", json=body, headers=auth(key))
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = [e.removeprefix("data: ") for e in r.text.split("\n\n") if e]
    assert events[-1] == "[DONE]"
    chunks = [orjson.loads(e) for e in events[:-1]]
    assert {c["id"] for c in chunks} == {chunks[0]["id"]} and chunks[0]["object"] == "chat.completion.chunk"
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == "".join(ANSWER) and chunks[-1]["usage"]["completion_tokens"] == 4
    # An engine that takes `stream_options` is asked for usage whatever the client asked (exact accounting); the
    # client that did not ask gets none.
    r = await client.post(
        "/maas/failover/cpu/chat/completions", json={**body, "stream_options": None}, headers=auth(key)
    )
    assert SENT["echo"][-1]["stream_options"] == {"include_usage": True} and '"usage"' not in r.text
    assert [(u.status, u.completion_tokens) for u in await usage(state)] == [(200, 4), (200, 4)]


async def test_a_stream_the_engine_breaks_off_ends_with_an_error_event_and_is_charged_for_what_streamed(
    gateway: Any,
) -> None:
    client, state, key = gateway
    r = await client.post(
        "/maas/cutter/cpu/chat/completions", json={"messages": MSG, "stream": True}, headers=auth(key)
    )
    events = [e.removeprefix("data: ") for e in r.text.split("\n\n") if e]
    assert events[-1] == "[DONE]"
    error = orjson.loads(events[-2])["error"]
    assert error["code"] == "upstream_error" and "engine fell over" in error["message"]
    (row,) = await usage(state)
    assert (row.status, row.error, row.completion_tokens) == (502, "upstream_error", 2)


async def test_input_moderation_refuses_and_output_moderation_cuts(gateway: Any) -> None:
    client, state, key = gateway
    async with state.sessions() as s:
        spec = ModerationSpec(keywords=["forbidden", "engine"])
        await services.moderation.create_rules(s, audit.cli(), spec, None)
        await s.commit()
    await state.reload_catalog()
    r = await client.post(
        "/maas/m/cpu/chat/completions",
        json={"messages": [{"role": "user", "content": "a forbidden word"}]},
        headers=auth(key),
    )
    assert r.status_code == 403 and r.json()["error"]["code"] == "content_filter"
    assert "echo" not in SENT  # refused before dispatch
    r = await client.post("/maas/m/cpu/chat/completions", json={"messages": MSG}, headers=auth(key))
    choice = r.json()["choices"][0]
    assert choice["finish_reason"] == "content_filter" and "engine" not in choice["message"]["content"]
    r = await client.post("/maas/m/cpu/chat/completions", json={"messages": MSG, "stream": True}, headers=auth(key))
    chunks = [orjson.loads(e.removeprefix("data: ")) for e in r.text.split("\n\n") if e and "[DONE]" not in e]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c.get("choices"))
    assert "engine" not in text and chunks[-1]["choices"][0]["finish_reason"] == "content_filter"
    rows = await usage(state)
    assert [u.error for u in rows] == ["content_filter", "content_filter", "content_filter"]


async def test_every_protocol_is_settled_and_counted_under_its_own_route(gateway: Any) -> None:
    client, state, key = gateway

    def count(route: str) -> float:
        found = metrics.REGISTRY.get_sample_value("mxn_route_requests_total", {"route": route, "status": "200"})
        return found or 0.0

    routes = ("chat/completions", "responses", "messages")
    before = {r: count(r) for r in routes}
    r = await client.post("/v1/chat/completions", json={"model": "failover", "messages": MSG}, headers=auth(key))
    assert r.status_code == 200, r.text
    r = await client.post("/v1/responses", json={"model": "failover", "input": "hi there"}, headers=auth(key))
    assert r.status_code == 200 and r.json()["output"][0]["content"][0]["text"] == "".join(ANSWER), r.text
    body = {"model": "failover", "max_tokens": 16, "messages": MSG}
    r = await client.post("/v1/messages", json=body, headers={"x-api-key": key})
    assert r.status_code == 200 and r.json()["content"][0]["text"] == "".join(ANSWER), r.text
    assert {route: count(route) - before[route] for route in routes} == dict.fromkeys(routes, 1.0)
    assert [u.route for u in await usage(state)] == list(routes)


async def test_the_served_models_tokenizers_load_off_the_loop_before_any_request(
    gateway: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, state, _ = gateway
    if state.warming is not None:
        await state.warming  # the fixture's own reload
    clear_caches()
    threads: list[int] = []
    warm = Tokenizer.warm

    def watched(self: Tokenizer) -> None:
        threads.append(threading.get_ident())
        warm(self)

    monkeypatch.setattr(Tokenizer, "warm", watched)
    await state.reload_catalog()
    served = [c.model.tokenizer for c in state.catalog.cells.values()]
    assert not any(t.loaded for t in served)
    assert state.warming is not None
    await state.warming
    assert all(t.loaded for t in served)
    # Four models share one tokenizer: loaded once, in a thread.
    assert len(threads) == 1 and threads[0] != threading.get_ident()
