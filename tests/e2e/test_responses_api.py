"""The OpenAI Responses API end to end: the official `openai` SDK's `client.responses` against a real `mxn serve`
in front of a fake upstream that speaks only chat completions (and tools, as vLLM does).

The upstream's GET /_last shows the chat request mxn made of each Responses request: what a conversation by
`previous_response_id` brought, how tools and `text.format` were translated.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import Proc, Server, first_start_key, pg_database, start_serve, start_upstream, wait_for

CATALOG = """
chips:
  - {{id: nvidia, name: NVIDIA}}
  - {{id: amd, name: AMD}}
models:
  - {{name: chat-model, context_length: 2048, tokenizer: "tiktoken:cl100k_base"}}
deployments:
  - model: chat-model
    chip: nvidia
    endpoints: [{{url: "{up}"}}]
  - model: chat-model
    chip: amd
    moderation:
      keywords: [secret plan]
    endpoints: [{{url: "{up}"}}]
"""
ADMIN_KEY = "sk-admin-responses-test"
MODEL = "chat-model"
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
# The fake upstream answers "reverse: X" with X reversed: an answer that holds what the question does not.
HIDDEN = "reverse: " + "the secret plan is to say more than this"[::-1]


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    up = start_upstream(tmp_path_factory.mktemp("responses-up"), "sse")
    try:
        yield up
    finally:
        up.stop()


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def server(
    request: pytest.FixtureRequest, upstream: Proc, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("responses")
    catalog = tmp / "catalog.yaml"
    catalog.write_text(CATALOG.format(up=upstream.url))
    stores = iter([f"sqlite+aiosqlite:///{tmp / 'mxn.db'}"]) if request.param == "sqlite" else pg_database()
    for db in stores:
        proc = start_serve(tmp / "serve.log", db, "--catalog", str(catalog), env={"MXN_ADMIN_KEY": ADMIN_KEY})
        try:
            yield Server(proc.url, first_start_key(proc.output()), ADMIN_KEY, db, proc, {"up": upstream})
        finally:
            proc.stop()


def sdk(server: Server, key: str | None = None, base: str = "/v1") -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + base, api_key=key or server.key, max_retries=0, timeout=30)


def last_upstream_body(server: Server) -> dict[str, Any]:
    return dict(httpx.get(server.upstreams["up"].url.removesuffix("/v1") + "/_last").json())


def new_user(server: Server, name: str, quota: int | None = None) -> str:
    """A user of their own (no rate limits in the way) and a key of theirs."""
    with server.admin() as admin:
        r = admin.post("/admin/users", json={"name": name, "group": "unlimited", "quota": quota})
        assert r.status_code == 201, r.text
        r = admin.post("/admin/keys", json={"user": name})
        assert r.status_code == 201, r.text
        return str(r.json()["key"])


def raw_events(r: httpx.Response) -> list[dict[str, Any]]:
    """A Responses stream's events: `event:` names the type its `data:` carries; no [DONE]."""
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/event-stream")
    events = []
    for block in r.text.split("\n\n"):
        if not block.strip():
            continue
        lines = dict(line.split(": ", 1) for line in block.split("\n"))
        data = httpx.Response(200, content=lines["data"]).json()
        assert lines["event"] == data["type"], block
        events.append(data)
    return events


# --------------------------------------------------------------------------------------------------- plain text


def test_plain_text_answer_is_a_response_that_can_be_retrieved(server: Server) -> None:
    client = sdk(server)
    r = client.responses.create(model=MODEL, input="hello there", instructions="Be brief.", metadata={"k": "v"})
    assert r.id.startswith("resp_") and r.object == "response" and r.status == "completed"
    assert r.output_text == "echo(2): hello there"  # the instructions are a system message before the input
    assert r.output[0].type == "message" and r.output[0].id.startswith("msg_")
    assert r.usage is not None and r.usage.input_tokens == 11 and r.usage.total_tokens == 11 + r.usage.output_tokens
    assert r.instructions == "Be brief." and r.metadata == {"k": "v"}
    sent = last_upstream_body(server)
    assert sent["messages"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello there"}]
    again = client.responses.retrieve(r.id)
    assert again.model_dump() == r.model_dump()


def test_plain_text_stream_has_the_whole_event_sequence(server: Server) -> None:
    with sdk(server).responses.stream(model=MODEL, input="stream me please") as stream:
        events = list(stream)
        final = stream.get_final_response()
    kinds = [e.type for e in events]
    assert kinds[:5] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
    ]
    assert kinds[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert len(deltas) > 1 and "".join(deltas) == final.output_text == "echo(1): stream me please"
    assert final.status == "completed" and final.usage is not None and final.usage.input_tokens == 11
    assert last_upstream_body(server)["stream_options"] == {"include_usage": True}  # mxn asks, for the usage
    # a streamed response is stored as a whole one is
    assert sdk(server).responses.retrieve(final.id).output_text == final.output_text


def test_create_with_stream_true_and_the_maas_path(server: Server) -> None:
    client = sdk(server, base=f"/maas/{MODEL}/nvidia")
    events = list(client.responses.create(model=MODEL, input="through the cell", stream=True))
    assert events[0].type == "response.created" and events[-1].type == "response.completed"
    assert events[-1].response.output_text == "echo(1): through the cell"

    def recorded() -> bool:  # usage records reach the store in batches
        with server.admin() as admin:
            rows = admin.get("/admin/usage", params={"limit": 1000}).json()["data"]
        return any(row["route"] == "responses" for row in rows)

    wait_for(recorded, 15, "a usage record with route 'responses'")


# ------------------------------------------------------------------------------------------------- conversations


def test_two_turns_by_previous_response_id_reach_the_upstream_whole(server: Server) -> None:
    client = sdk(server)
    first = client.responses.create(model=MODEL, input="my name is Ada", instructions="Remember names.")
    second = client.responses.create(model=MODEL, input="what is my name?", previous_response_id=first.id)
    # the first turn's instructions are not carried over (as at OpenAI); its input and output are
    assert last_upstream_body(server)["messages"] == [
        {"role": "user", "content": "my name is Ada"},
        {"role": "assistant", "content": "echo(2): my name is Ada"},
        {"role": "user", "content": "what is my name?"},
    ]
    assert second.output_text == "echo(3): what is my name?" and second.previous_response_id == first.id
    with client.responses.stream(model=MODEL, input="and again?", previous_response_id=second.id) as stream:
        third = stream.get_final_response()
    assert third.output_text == "echo(5): and again?"
    items = client.responses.input_items.list(third.id, order="asc").data
    assert [(i.type, getattr(i, "role", None)) for i in items] == [
        ("message", "user"),
        ("message", "assistant"),
        ("message", "user"),
        ("message", "assistant"),
        ("message", "user"),
    ]
    newest = client.responses.input_items.list(third.id, limit=2)  # newest first, as OpenAI lists them
    assert newest.has_more and [i.id for i in newest.data] == [items[-1].id, items[-2].id]
    rest = client.responses.input_items.list(third.id, limit=10, after=newest.last_id)
    assert not rest.has_more and [i.id for i in rest.data] == [i.id for i in items[::-1][2:]]


def test_another_users_response_is_not_found_anywhere(server: Server) -> None:
    mine = sdk(server).responses.create(model=MODEL, input="private words")
    other = sdk(server, new_user(server, "other-user"))
    with pytest.raises(openai.NotFoundError) as exc:
        other.responses.create(model=MODEL, input="continue", previous_response_id=mine.id)
    assert exc.value.body["param"] == "previous_response_id"  # type: ignore[index]
    with pytest.raises(openai.NotFoundError):
        other.responses.retrieve(mine.id)
    with pytest.raises(openai.NotFoundError):
        other.responses.input_items.list(mine.id)
    with pytest.raises(openai.NotFoundError):
        other.responses.delete(mine.id)
    assert sdk(server).responses.retrieve(mine.id).id == mine.id  # still there for its owner


def test_delete_then_nothing_is_left(server: Server) -> None:
    client = sdk(server)
    r = client.responses.create(model=MODEL, input="short lived")
    with server.client() as c:
        deleted = c.delete(f"/v1/responses/{r.id}")
        assert deleted.json() == {"id": r.id, "object": "response.deleted", "deleted": True}
        again = c.delete(f"/v1/responses/{r.id}")
    assert again.status_code == 404 and again.json()["error"]["type"] == "invalid_request_error"
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(r.id)


def test_store_false_is_not_kept(server: Server) -> None:
    client = sdk(server)
    r = client.responses.create(model=MODEL, input="forget me", store=False)
    assert r.output_text == "echo(1): forget me"
    assert r.model_dump()["store"] is False
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(r.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model=MODEL, input="go on", previous_response_id=r.id)


def test_quota_that_runs_out_mid_conversation_is_a_429_in_openais_shape(server: Server) -> None:
    key = new_user(server, "thrifty", quota=40)
    client = sdk(server, key)
    first = client.responses.create(model=MODEL, input="hi")  # 11 + 3 tokens of 40
    assert first.status == "completed"
    long = " ".join(["word"] * 60)  # more input than the rest of the balance pays for
    with pytest.raises(openai.RateLimitError):
        client.responses.create(model=MODEL, input=long, previous_response_id=first.id)
    with httpx.Client(base_url=server.url, headers={"authorization": f"Bearer {key}"}) as c:
        r = c.post("/v1/responses", json={"model": MODEL, "input": long, "previous_response_id": first.id})
    assert r.status_code == 429
    assert r.json() == {
        "error": {"message": r.json()["error"]["message"], "type": "rate_limit_error", "param": None,
                  "code": "insufficient_quota"}
    }  # fmt: skip


# ------------------------------------------------------------------------------------------------------- tools


def test_tool_round_trip_by_previous_response_id(server: Server) -> None:
    client = sdk(server)
    called = client.responses.create(model=MODEL, input="Paris", tools=[WEATHER])  # type: ignore[list-item]
    sent = last_upstream_body(server)
    assert sent["tools"] == [{"type": "function", "function": {k: v for k, v in WEATHER.items() if k != "type"}}]
    [fc] = called.output
    assert fc.type == "function_call" and fc.id.startswith("fc_") and fc.name == "get_weather"
    assert fc.arguments == '{"city":"Paris"}' and fc.call_id == "call_fake1" and called.status == "completed"
    answered = client.responses.create(
        model=MODEL,
        previous_response_id=called.id,
        input=[{"type": "function_call_output", "call_id": fc.call_id, "output": "sunny"}],
        tools=[WEATHER],  # type: ignore[list-item]
    )
    assert answered.output_text == "tool said: sunny"
    call = {"id": "call_fake1", "type": "function", "function": {"name": "get_weather", "arguments": fc.arguments}}
    assert last_upstream_body(server)["messages"] == [
        {"role": "user", "content": "Paris"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_fake1", "content": "sunny"},
    ]


def test_tool_call_streamed_and_returned_by_the_client_itself(server: Server) -> None:
    client = sdk(server)
    with client.responses.stream(model=MODEL, input="Oslo", tools=[WEATHER], store=False) as stream:  # type: ignore[list-item]
        events = list(stream)
        final = stream.get_final_response()
    kinds = [e.type for e in events]
    assert kinds[2] == "response.output_item.added" and "response.function_call_arguments.delta" in kinds
    assert kinds[-3:] == ["response.function_call_arguments.done", "response.output_item.done", "response.completed"]
    deltas = [e.delta for e in events if e.type == "response.function_call_arguments.delta"]
    [fc] = final.output
    assert fc.type == "function_call" and "".join(deltas) == fc.arguments == '{"city":"Oslo"}'
    answered = client.responses.create(
        model=MODEL,
        store=False,
        input=[
            {"role": "user", "content": "Oslo"},
            {"type": "function_call", "call_id": fc.call_id, "name": fc.name, "arguments": fc.arguments},
            {"type": "function_call_output", "call_id": fc.call_id, "output": "snow"},
        ],
    )
    assert answered.output_text == "tool said: snow"


def test_json_schema_format_reaches_the_upstream_as_response_format(server: Server) -> None:
    schema = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}
    fmt = {"type": "json_schema", "name": "person", "schema": schema, "strict": True}
    r = sdk(server).responses.create(model=MODEL, input="a person", text={"format": fmt})  # type: ignore[typeddict-item]
    assert last_upstream_body(server)["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "person", "schema": schema, "strict": True},
    }
    assert r.text is not None and r.text.format is not None and r.text.format.type == "json_schema"
    sdk(server).responses.create(model=MODEL, input="json please", text={"format": {"type": "json_object"}})
    assert last_upstream_body(server)["response_format"] == {"type": "json_object"}


# ----------------------------------------------------------------------------------------------- moderation


def test_moderated_output_is_incomplete_for_content_filter(server: Server) -> None:
    client = sdk(server, base=f"/maas/{MODEL}/amd")
    r = client.responses.create(model=MODEL, input=HIDDEN)
    assert r.status == "incomplete" and r.incomplete_details is not None
    assert r.incomplete_details.reason == "content_filter"
    assert "secret" not in r.output_text and r.output[0].status == "incomplete"  # type: ignore[union-attr]
    events = list(client.responses.create(model=MODEL, input=HIDDEN, stream=True))
    assert events[-1].type == "response.incomplete"
    final = events[-1].response
    assert final.incomplete_details is not None and final.incomplete_details.reason == "content_filter"
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert "secret" not in text and final.output_text == text
    assert sdk(server).responses.retrieve(final.id).status == "incomplete"  # stored responses live under /v1


# ----------------------------------------------------------------------------------------------- bad requests

BAD = [
    pytest.param(
        {"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "data:image/png;base64,AA"}]}]},
        "input[0].content[0].type",
        "input_image",
        id="image",
    ),
    pytest.param({"input": "x", "tools": [{"type": "web_search"}]}, "tools[0].type", "web_search", id="web-search"),
    pytest.param({"input": "x", "background": True}, "background", "background", id="background"),
    pytest.param({"input": [{"type": "item_reference", "id": "x"}]}, "input[0].type", "item_reference", id="item"),
    pytest.param({"input": "x", "temperature": 3}, "temperature", "temperature", id="temperature"),
    pytest.param({"input": []}, "input", "input", id="empty"),
    pytest.param({"input": "x", "text": {"format": {"type": "json_schema"}}}, "text.format", "schema", id="format"),
]


@pytest.mark.parametrize(("body", "param", "said"), BAD)
def test_what_is_not_supported_is_a_clear_400(server: Server, body: dict[str, Any], param: str, said: str) -> None:
    with server.client() as c:
        r = c.post("/v1/responses", json={"model": MODEL, **body})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == param and said in err["message"] and err["type"] == "invalid_request_error"


# --------------------------------------------------------------------------------------------------- expiry


def test_an_expired_response_is_invisible_and_then_removed(upstream: Proc, tmp_path: Path) -> None:
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text(CATALOG.format(up=upstream.url))
    db = tmp_path / "mxn.db"
    env = {"MXN_ADMIN_KEY": ADMIN_KEY, "MXN_RESPONSES_TTL": "1.5"}
    proc = start_serve(tmp_path / "serve.log", f"sqlite+aiosqlite:///{db}", "--catalog", str(catalog), env=env)
    try:
        server = Server(proc.url, first_start_key(proc.output()), ADMIN_KEY, str(db), proc, {"up": upstream})
        client = sdk(server)
        old = client.responses.create(model=MODEL, input="soon gone")
        assert client.responses.retrieve(old.id).id == old.id
        time.sleep(1.6)  # not a wait for something to happen: the time-to-live running out is the point
        with pytest.raises(openai.NotFoundError):
            client.responses.retrieve(old.id)
        with pytest.raises(openai.NotFoundError):
            client.responses.input_items.list(old.id)
        with pytest.raises(openai.NotFoundError):
            client.responses.create(model=MODEL, input="go on", previous_response_id=old.id)
        with sqlite3.connect(db) as conn:
            assert conn.execute("SELECT count(*) FROM responses WHERE id = ?", (old.id,)).fetchone() == (1,)
        client.responses.create(model=MODEL, input="a new one")  # each write removes expired responses
        with sqlite3.connect(db) as conn:
            assert conn.execute("SELECT count(*) FROM responses WHERE id = ?", (old.id,)).fetchone() == (0,)
    finally:
        proc.stop()
