"""The Anthropic Messages API (/v1/messages) end to end: the official `anthropic` SDK against a real `mxn serve` in
front of fake OpenAI upstreams. Every answer, stream event and error is also fetched with raw httpx and validated
against the SDK's own types, which the SDK itself would not do (it is lenient with what it parses)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import pytest
from anthropic.types import Message, MessageTokensCount, RawMessageStreamEvent
from anthropic.types.shared import ErrorResponse
from pydantic import TypeAdapter

from tests.conftest import Proc, Server, first_start_key, start_serve, start_upstream, wait_for

FIXTURE = Path(__file__).resolve().parent.parent / "data" / "claude_code_request.json"
CONTEXT = 8192
CATALOG = """
chips:
  - {{id: nvidia, name: NVIDIA}}
  - {{id: amd, name: AMD}}
models:
  - {{name: coder, context_length: {context}, tokenizer: "tiktoken:cl100k_base"}}
  - {{name: guarded, context_length: {context}, tokenizer: "tiktoken:cl100k_base"}}
  - {{name: flaky, context_length: {context}, tokenizer: "tiktoken:cl100k_base"}}
  - {{name: vectors, context_length: 256, tokenizer: "tiktoken:cl100k_base", kind: embedding}}
deployments:
  - model: coder
    chip: nvidia
    endpoints: [{{url: "{up}"}}]
  - model: guarded
    chip: amd
    moderation: {{keywords: [secret plan]}}
    endpoints: [{{url: "{up}"}}]
  - model: flaky
    chip: biren
    endpoints: [{{url: "{dies}"}}]
  - model: vectors
    chip: nvidia
    endpoints: [{{url: "{up}"}}]
"""
WEATHER = {
    "name": "get_weather",
    "description": "The weather in a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
CLOCK = {
    "name": "get_time",
    "description": "The time in a zone",
    "input_schema": {"type": "object", "properties": {"zone": {"type": "string"}}, "required": ["zone"]},
}
HI = [{"role": "user", "content": "hello there"}]
# The fake upstream answers "reverse: X" with X reversed: the answer holds what the question does not.
HIDDEN = "reverse: " + "this is the secret plan and then much more text follows here"[::-1]
EVENTS: TypeAdapter[Any] = TypeAdapter(RawMessageStreamEvent)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("anthropic")
    up, dies = start_upstream(tmp, "sse"), start_upstream(tmp, "dies")
    proc = None
    try:
        catalog = tmp / "catalog.yaml"
        catalog.write_text(CATALOG.format(up=up.url, dies=dies.url, context=CONTEXT))
        db = f"sqlite+aiosqlite:///{tmp / 'mxn.db'}"
        env = {"MXN_ADMIN_KEY": "sk-admin-anthropic-test", "MXN_MAX_BODY_BYTES": "200000", "MXN_DEMO": "0"}
        proc = start_serve(tmp / "serve.log", db, "--catalog", str(catalog), env=env)
        yield Server(proc.url, first_start_key(proc.output()), env["MXN_ADMIN_KEY"], db, proc, {"up": up})
    finally:
        if proc is not None:
            proc.stop()
        up.stop()
        dies.stop()


def sdk(server: Server, key: str | None = None, base: str = "") -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=server.url + base, api_key=key or server.key, max_retries=0)


def raw(server: Server, body: dict[str, Any], path: str = "/v1/messages", **headers: str) -> httpx.Response:
    sent = {"x-api-key": server.key, "anthropic-version": "2023-06-01", **headers}
    return httpx.post(server.url + path, json=body, headers=sent, timeout=30)


def last_upstream(server: Server) -> dict[str, Any]:
    up: Proc = server.upstreams["up"]
    return dict(httpx.get(up.url.removesuffix("/v1") + "/_last").json())


def strict_message(data: dict[str, Any]) -> Message:
    """The SDK's Message, with nothing it does not know about anywhere."""
    message = Message.model_validate(data)
    assert not message.model_extra and not message.usage.model_extra, data
    assert all(not block.model_extra for block in message.content), data
    assert message.stop_reason is not None and "stop_sequence" in data, data
    return message


def error_of(r: httpx.Response, status: int, kind: str) -> str:
    """The message of an Anthropic-shaped error of this status and type."""
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) <= {"type", "error", "request_id"} and set(body["error"]) == {"type", "message"}, body
    if kind != "request_too_large":  # a type Anthropic documents that the SDK's union does not list
        ErrorResponse.model_validate(body)
    assert body["type"] == "error" and body["error"]["type"] == kind, body
    return str(body["error"]["message"])


def sse_events(r: httpx.Response) -> list[tuple[str, dict[str, Any]]]:
    """(event name, data) of each event, each checked: its name is its data's type, and it is one of Anthropic's."""
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/event-stream")
    events = []
    for frame in r.text.split("\n\n"):
        if not frame.strip():
            continue
        lines = dict(line.split(": ", 1) for line in frame.split("\n"))
        assert set(lines) == {"event", "data"}, frame
        data = json.loads(lines["data"])
        assert data["type"] == lines["event"], frame
        if lines["event"] == "error":
            ErrorResponse.model_validate(data)
        elif lines["event"] != "ping":
            parsed = EVENTS.validate_python(data)
            assert not parsed.model_extra, data
        events.append((lines["event"], data))
    return events


def well_formed(events: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    """Anthropic's order: message_start, blocks each started, delta'd and stopped in turn, message_delta,
    message_stop last. Returns the message the events build (content blocks with their text or parsed input)."""
    names = [name for name, _ in events]
    assert names[0] == "message_start" and names[-2:] == ["message_delta", "message_stop"], names
    message = events[0][1]["message"]
    strict_message({**message, "stop_reason": "end_turn"})  # message_start's own stop_reason is null
    assert message["content"] == [] and message["stop_reason"] is None
    blocks: list[dict[str, Any]] = []
    json_parts: dict[int, list[str]] = {}
    open_block: int | None = None
    for name, data in events[1:-2]:
        if name == "ping":
            continue
        if name == "content_block_start":
            assert open_block is None and data["index"] == len(blocks), events
            open_block = data["index"]
            blocks.append(dict(data["content_block"]))
        elif name == "content_block_delta":
            assert data["index"] == open_block, events
            delta = data["delta"]
            if delta["type"] == "text_delta":
                blocks[-1]["text"] += delta["text"]
            else:
                assert delta["type"] == "input_json_delta" and blocks[-1]["type"] == "tool_use"
                json_parts.setdefault(open_block, []).append(delta["partial_json"])
        else:
            assert name == "content_block_stop" and data["index"] == open_block, events
            open_block = None
    assert open_block is None, "a block was never stopped"
    for index, parts in json_parts.items():
        blocks[index]["input"] = json.loads("".join(parts))  # the pieces add up to JSON
    end = events[-2][1]
    return {**message, "content": blocks, **end["delta"], "usage": {**message["usage"], **end["usage"]}}


# --- plain text ---
def test_text_answer_is_an_anthropic_message(server: Server) -> None:
    r = raw(server, {"model": "coder", "max_tokens": 50, "messages": HI})
    message = strict_message(r.json())
    assert message.id.startswith("msg_") and r.headers["x-request-id"] in message.id
    assert message.model == "coder" and message.role == "assistant" and message.type == "message"
    assert [b.type for b in message.content] == ["text"]
    assert message.content[0].text == "echo(1): hello there"
    assert message.stop_reason == "end_turn" and message.stop_sequence is None
    assert message.usage.input_tokens == 11 and message.usage.output_tokens == 3  # the upstream's own count

    via_sdk = sdk(server).messages.create(model="coder", max_tokens=50, messages=HI)
    assert via_sdk.content[0].text == "echo(1): hello there"


def test_text_stream_is_anthropics_event_sequence(server: Server) -> None:
    r = raw(server, {"model": "coder", "max_tokens": 50, "messages": HI, "stream": True})
    events = sse_events(r)
    assert [n for n, _ in events] == [
        "message_start", "ping", "content_block_start", "content_block_delta", "content_block_delta",
        "content_block_delta", "content_block_stop", "message_delta", "message_stop",
    ]  # fmt: skip
    built = well_formed(events)
    assert built["content"] == [{"type": "text", "text": "echo(1): hello there"}]
    assert built["stop_reason"] == "end_turn" and built["usage"]["output_tokens"] == 3
    assert "data: [DONE]" not in r.text and "chat.completion" not in r.text  # nothing of OpenAI's stream leaks

    with sdk(server).messages.stream(model="coder", max_tokens=50, messages=HI) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "echo(1): hello there" and final.stop_reason == "end_turn"
    chunks = list(sdk(server).messages.create(model="coder", max_tokens=50, messages=HI, stream=True))
    assert chunks[0].type == "message_start" and chunks[-1].type == "message_stop"


def test_system_blocks_become_the_system_message_and_anthropic_fields_stay_behind(server: Server) -> None:
    system = [
        {"type": "text", "text": "You are terse.", "cache_control": {"type": "ephemeral"}},
        {"type": "text", "text": "Answer in English."},
    ]
    body = {
        "model": "coder",
        "max_tokens": 64,
        "system": system,
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "hi", "cache_control": {"type": "ephemeral"}}]}
        ],
        "metadata": {"user_id": "u-1"},
        "stop_sequences": ["\n\nHuman:"],
        "temperature": 0.2,
        "top_k": 5,
        "thinking": {"type": "enabled", "budget_tokens": 1024},
    }
    r = raw(server, body, **{"anthropic-beta": "prompt-caching-2024-07-31"})
    assert strict_message(r.json()).content[0].text == "echo(2): hi"
    sent = last_upstream(server)
    assert sent["messages"] == [
        {"role": "system", "content": "You are terse.\nAnswer in English."},
        {"role": "user", "content": "hi"},
    ]
    assert sent["stop"] == ["\n\nHuman:"] and sent["temperature"] == 0.2 and sent["top_k"] == 5
    assert sent["max_tokens"] == 64 and sent["model"] == "coder"
    for name in ("metadata", "thinking", "system", "stop_sequences", "cache_control"):
        assert name not in sent, name


def test_unknown_fields_are_forwarded_and_openai_shape_changers_refused(server: Server) -> None:
    r = raw(server, {"model": "coder", "max_tokens": 20, "messages": HI, "repetition_penalty": 1.1})
    assert r.status_code == 200 and last_upstream(server)["repetition_penalty"] == 1.1
    r = raw(server, {"model": "coder", "max_tokens": 20, "messages": HI, "n": 2})
    assert "n:" in error_of(r, 400, "invalid_request_error")


def test_the_cell_base_url_serves_whatever_model_is_named(server: Server) -> None:
    client = sdk(server, base="/maas/coder/nvidia")
    message = client.messages.create(model="claude-sonnet-4-5", max_tokens=20, messages=HI)
    assert message.model == "coder" and message.content[0].text == "echo(1): hello there"
    r = raw(server, {"max_tokens": 20, "messages": HI}, path="/maas/coder/nvidia/messages")
    assert strict_message(r.json()).model == "coder"


def test_max_tokens_above_the_context_is_lowered_to_what_it_leaves(server: Server) -> None:
    count = sdk(server).messages.count_tokens(model="coder", messages=HI)
    r = raw(server, {"model": "coder", "max_tokens": 32000, "messages": HI})
    assert r.status_code == 200, r.text
    assert last_upstream(server)["max_tokens"] == CONTEXT - count.input_tokens
    too_long = [{"role": "user", "content": "word " * (CONTEXT + 10)}]
    message = error_of(
        raw(server, {"model": "coder", "max_tokens": 10, "messages": too_long}), 400, "invalid_request_error"
    )
    assert "maximum context length" in message


# --- tools ---
def test_tool_round_trip(server: Server) -> None:
    client = sdk(server)
    question = {"role": "user", "content": "Paris"}
    first = client.messages.create(model="coder", max_tokens=100, tools=[WEATHER, CLOCK], messages=[question])
    assert first.stop_reason == "tool_use"
    (use,) = first.content
    assert use.type == "tool_use" and use.name == "get_weather" and use.input == {"city": "Paris"}
    sent = last_upstream(server)
    assert sent["tools"][0] == {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The weather in a city",
            "parameters": WEATHER["input_schema"],
        },
    }
    result = {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "22C and sunny"}]}
    answer = client.messages.create(
        model="coder",
        max_tokens=100,
        tools=[WEATHER, CLOCK],
        messages=[question, {"role": "assistant", "content": first.content}, result],
    )
    assert answer.stop_reason == "end_turn" and answer.content[0].text == "tool said: 22C and sunny"
    sent = last_upstream(server)
    assert sent["messages"][1] == {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": use.id, "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}
        ],
    }
    assert sent["messages"][2] == {"role": "tool", "tool_call_id": use.id, "content": "22C and sunny"}


def test_tool_call_streams_as_input_json_deltas(server: Server) -> None:
    body = {"model": "coder", "max_tokens": 100, "tools": [WEATHER], "messages": [{"role": "user", "content": "Oslo"}]}
    events = sse_events(raw(server, {**body, "stream": True}))
    built = well_formed(events)
    (use,) = built["content"]
    assert use["type"] == "tool_use" and use["name"] == "get_weather" and use["input"] == {"city": "Oslo"}
    assert built["stop_reason"] == "tool_use"
    assert sum(1 for n, d in events if n == "content_block_delta" and d["delta"]["type"] == "input_json_delta") > 1

    with sdk(server).messages.stream(**body) as stream:
        final = stream.get_final_message()
    assert final.content[0].input == {"city": "Oslo"}


def test_tool_choice_maps_to_openai(server: Server) -> None:
    question = [{"role": "user", "content": "UTC"}]
    client = sdk(server)
    named = client.messages.create(
        model="coder", max_tokens=50, messages=question, tools=[WEATHER, CLOCK],
        tool_choice={"type": "tool", "name": "get_time", "disable_parallel_tool_use": True},
    )  # fmt: skip
    assert named.content[0].name == "get_time" and named.content[0].input == {"zone": "UTC"}
    sent = last_upstream(server)
    assert sent["tool_choice"] == {"type": "function", "function": {"name": "get_time"}}
    assert sent["parallel_tool_calls"] is False
    client.messages.create(
        model="coder", max_tokens=50, messages=question, tools=[WEATHER], tool_choice={"type": "any"}
    )
    assert last_upstream(server)["tool_choice"] == "required"
    none = client.messages.create(
        model="coder",
        max_tokens=50,
        messages=question,
        tools=[WEATHER],
        tool_choice={"type": "none"},
    )
    assert none.stop_reason == "end_turn" and none.content[0].type == "text"
    r = raw(server, {"model": "coder", "max_tokens": 5, "messages": question, "tools": [WEATHER],
                     "tool_choice": {"type": "tool", "name": "nope"}})  # fmt: skip
    assert "tool_choice.name" in error_of(r, 400, "invalid_request_error")
    server_tool = {"type": "web_search_20250305", "name": "web_search"}
    r = raw(server, {"model": "coder", "max_tokens": 5, "messages": question, "tools": [server_tool]})
    assert "web_search_20250305" in error_of(r, 400, "invalid_request_error")


def test_tool_result_error_and_blocks_reach_the_model(server: Server) -> None:
    use = {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Rome"}}
    failed = {"type": "tool_result", "tool_use_id": "toolu_1", "is_error": True,
              "content": [{"type": "text", "text": "no network"}]}  # fmt: skip
    messages = [
        {"role": "user", "content": "Rome"},
        {"role": "assistant", "content": [use]},
        {"role": "user", "content": [failed]},
    ]
    message = strict_message(
        raw(server, {"model": "coder", "max_tokens": 20, "tools": [WEATHER], "messages": messages}).json()
    )
    assert message.content[0].text == "tool said: Error: no network"


# --- count_tokens ---
def test_count_tokens_is_what_the_request_is_charged_for(server: Server) -> None:
    client = sdk(server)
    plain = client.messages.count_tokens(model="coder", messages=HI, system="Be brief.")
    with_tools = client.messages.count_tokens(model="coder", messages=HI, system="Be brief.", tools=[WEATHER])
    assert 0 < plain.input_tokens < with_tools.input_tokens
    r = raw(server, {"model": "coder", "messages": HI, "system": "Be brief."}, path="/v1/messages/count_tokens")
    counted = MessageTokensCount.model_validate(r.json())
    assert r.json() == {"input_tokens": plain.input_tokens} and counted.input_tokens == plain.input_tokens
    # The same count as the stream's message_start, which is what the reservation was made for.
    body = {"model": "coder", "max_tokens": 20, "messages": HI, "system": "Be brief.", "stream": True}
    start = sse_events(raw(server, body))[0][1]
    assert start["message"]["usage"]["input_tokens"] == plain.input_tokens
    cell = raw(server, {"messages": HI, "system": "Be brief."}, path="/maas/coder/nvidia/v1/messages/count_tokens")
    assert cell.json() == {"input_tokens": plain.input_tokens}
    missing = raw(server, {"model": "coder"}, path="/v1/messages/count_tokens")
    assert "messages" in error_of(missing, 400, "invalid_request_error")
    unknown = raw(server, {"model": "nope", "messages": HI}, path="/v1/messages/count_tokens")
    error_of(unknown, 404, "not_found_error")
    assert error_of(httpx.post(server.url + "/v1/messages/count_tokens", json={}), 401, "authentication_error")


# --- authentication and errors ---
def test_x_api_key_and_bearer_are_both_accepted(server: Server) -> None:
    by_header = sdk(server).messages.create(model="coder", max_tokens=20, messages=HI)
    bearer = anthropic.Anthropic(base_url=server.url, auth_token=server.key, max_retries=0)
    by_bearer = bearer.messages.create(model="coder", max_tokens=20, messages=HI)
    assert by_header.content == by_bearer.content
    r = httpx.post(server.url + "/v1/messages", json={"model": "coder", "max_tokens": 5, "messages": HI},
                   headers={"authorization": f"Bearer {server.key}"})  # fmt: skip
    assert strict_message(r.json()).stop_reason == "end_turn"


def test_a_bad_key_is_an_anthropic_authentication_error(server: Server) -> None:
    with pytest.raises(anthropic.AuthenticationError) as err:
        sdk(server, key="sk-not-a-real-key").messages.create(model="coder", max_tokens=20, messages=HI)
    assert err.value.status_code == 401
    r = raw(server, {"model": "coder", "max_tokens": 20, "messages": HI}, **{"x-api-key": "sk-wrong"})
    error_of(r, 401, "authentication_error")
    nokey = httpx.post(server.url + "/v1/messages", json={"model": "coder", "max_tokens": 5, "messages": HI})
    error_of(nokey, 401, "authentication_error")


def test_missing_max_tokens_is_refused_as_anthropic_refuses_it(server: Server) -> None:
    message = error_of(raw(server, {"model": "coder", "messages": HI}), 400, "invalid_request_error")
    assert message.startswith("max_tokens")
    with pytest.raises(anthropic.BadRequestError):
        sdk(server).messages.create(model="coder", max_tokens=0, messages=HI)


def test_every_error_before_the_answer_is_in_anthropics_shape(server: Server) -> None:
    headers = {"x-api-key": server.key, "content-type": "application/json"}
    broken = httpx.post(server.url + "/v1/messages", content=b'{"model": "coder",', headers=headers)
    assert "JSON" in error_of(broken, 400, "invalid_request_error")
    big = httpx.post(server.url + "/v1/messages", content=b" " * 300_000, headers=headers)
    error_of(big, 413, "request_too_large")
    error_of(raw(server, {"model": "nope", "max_tokens": 5, "messages": HI}), 404, "not_found_error")
    error_of(raw(server, {"max_tokens": 5, "messages": HI}), 400, "invalid_request_error")  # no model on /v1
    error_of(raw(server, {"model": "vectors", "max_tokens": 5, "messages": HI}), 400, "invalid_request_error")
    error_of(raw(server, {"model": "coder", "max_tokens": 5, "messages": HI, "temperature": 1.5}), 400,
             "invalid_request_error")  # fmt: skip
    bad_role = {"model": "coder", "max_tokens": 5, "messages": [{"role": "system", "content": "x"}]}
    error_of(raw(server, bad_role), 400, "invalid_request_error")


def test_an_image_block_is_refused_by_name(server: Server) -> None:
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}
    content = [{"type": "text", "text": "what is this?"}, image]
    r = raw(server, {"model": "coder", "max_tokens": 20, "messages": [{"role": "user", "content": content}]})
    message = error_of(r, 400, "invalid_request_error")
    assert message.startswith("messages.0.content.1: image blocks are not supported"), message
    with pytest.raises(anthropic.BadRequestError, match="image blocks"):
        sdk(server).messages.create(model="coder", max_tokens=20, messages=[{"role": "user", "content": content}])


def test_an_upstream_failure_mid_stream_is_an_error_event_then_the_end(server: Server) -> None:
    body = {"model": "flaky", "max_tokens": 50, "messages": [{"role": "user", "content": "a b c d e f"}]}
    events = sse_events(raw(server, {**body, "stream": True}))
    names = [n for n, _ in events]
    assert names[0] == "message_start" and names[-1] == "error" and "message_stop" not in names, names
    assert events[-1][1]["error"]["type"] == "api_error"
    with pytest.raises(anthropic.APIStatusError):
        with sdk(server).messages.stream(**body) as stream:
            for _ in stream:
                pass


# --- moderation, quota, usage records ---
def test_moderated_input_is_a_400(server: Server) -> None:
    body = {
        "model": "guarded",
        "max_tokens": 20,
        "messages": [{"role": "user", "content": "tell me the secret plan"}],
    }
    assert "moderation" in error_of(raw(server, body), 400, "invalid_request_error")


def test_moderated_output_stops_with_refusal(server: Server) -> None:
    body = {"model": "guarded", "max_tokens": 50, "messages": [{"role": "user", "content": HIDDEN}]}
    message = strict_message(raw(server, body).json())
    assert message.stop_reason == "refusal" and message.stop_details is not None
    assert message.content[0].text == "echo(1): this is the "

    events = sse_events(raw(server, {**body, "stream": True}))
    built = well_formed(events)
    assert built["stop_reason"] == "refusal" and built["stop_details"]["type"] == "refusal"
    assert built["content"] == [{"type": "text", "text": "echo(1): this is the "}]
    with sdk(server).messages.stream(**body) as stream:
        final = stream.get_final_message()
    assert final.stop_reason == "refusal"


def test_quota_that_runs_out_mid_conversation_is_a_rate_limit_error(server: Server) -> None:
    with server.admin() as admin:
        r = admin.post("/admin/users", json={"name": "claude-user"})
        assert r.status_code == 201, r.text
        r = admin.post("/admin/keys", json={"user": "claude-user", "quota": 150, "rpm": 0, "rpd": 0})
        assert r.status_code == 201, r.text
        key = r.json()["key"]
    client = sdk(server, key=key)
    messages: list[dict[str, Any]] = []
    answered = 0
    with pytest.raises(anthropic.RateLimitError) as err:
        for turn in range(20):
            messages.append({"role": "user", "content": f"turn {turn} of a conversation that keeps on growing"})
            reply = client.messages.create(model="coder", max_tokens=30, messages=messages)
            messages.append({"role": "assistant", "content": reply.content})
            answered += 1
    assert answered >= 1
    assert err.value.status_code == 429 and err.value.response.headers["retry-after"]
    body = err.value.body
    assert isinstance(body, dict) and body["type"] == "error" and body["error"]["type"] == "rate_limit_error"
    ErrorResponse.model_validate(body)


def test_usage_records_name_the_messages_route(server: Server) -> None:
    raw(server, {"model": "coder@nvidia", "max_tokens": 5, "messages": [{"role": "user", "content": "record me"}]})

    def rows() -> list[dict[str, Any]]:
        with server.admin() as admin:
            return [r for r in admin.get("/admin/usage").json()["data"] if r["route"] == "messages"]

    found = wait_for(rows, 10, "usage records of the messages route")
    assert any(r["status"] == 200 and r["chip"] == "nvidia" for r in found)


# --- Claude Code ---
def test_a_claude_code_request_replayed_gets_a_well_formed_stream(server: Server) -> None:
    recorded = json.loads(FIXTURE.read_text())
    body = {**recorded["body"], "model": "coder"}
    headers = {**recorded["headers"], "x-api-key": server.key}
    r = httpx.post(server.url + recorded["path"], json=body, headers=headers, timeout=30)
    built = well_formed(sse_events(r))
    (use,) = built["content"]
    # The fake upstream calls the first tool (Task) with each required string argument set to the user's text.
    assert use["type"] == "tool_use" and use["name"] == "Task" and built["stop_reason"] == "tool_use"
    assert set(use["input"]) == {"description", "prompt", "subagent_type"}
    assert "TodoWrite tool hasn't been used recently" in use["input"]["prompt"]

    sent = last_upstream(server)
    assert len(sent["tools"]) == len(body["tools"]) == 11
    assert all(set(t["function"]) == {"name", "description", "parameters"} for t in sent["tools"])
    assert "cache_control" not in json.dumps(sent) and "metadata" not in sent
    roles = [m["role"] for m in sent["messages"]]
    assert roles == ["system", "user", "assistant", "tool", "assistant", "tool", "assistant", "tool", "user"]
    assert sent["messages"][7]["content"].startswith("Error: <tool_use_error>")
    count = sdk(server).messages.count_tokens(
        model="coder", messages=body["messages"], system=body["system"], tools=body["tools"]
    )
    # max_tokens 32000 is more than the context leaves: lowered to what it leaves, not refused.
    assert sent["max_tokens"] == CONTEXT - count.input_tokens
