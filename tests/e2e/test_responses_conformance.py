"""Every Responses API body and stream event the gateway sends validates against OpenAI's published schemas.

The same document, validator and rules as `test_openapi_conformance.py` (raw httpx, never the lenient SDK; every
test proves its validator live by breaking a copy of what it validated). Roots: `Response`, `ResponseStreamEvent`
(and each event's own schema), `ResponseItemList`, `ErrorResponse`. DELETE /v1/responses/{id} has no schema in
the document (its 200 declares no content), so its body is checked in test_responses_api.py instead.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from tests.conftest import Server
from tests.e2e.test_openapi_conformance import CHAT_CHIPS, QWEN, assert_invalid, assert_valid, broken, errors

EVENT_SCHEMAS = {
    "response.created": "ResponseCreatedEvent",
    "response.in_progress": "ResponseInProgressEvent",
    "response.output_item.added": "ResponseOutputItemAddedEvent",
    "response.content_part.added": "ResponseContentPartAddedEvent",
    "response.output_text.delta": "ResponseTextDeltaEvent",
    "response.output_text.done": "ResponseTextDoneEvent",
    "response.content_part.done": "ResponseContentPartDoneEvent",
    "response.output_item.done": "ResponseOutputItemDoneEvent",
    "response.function_call_arguments.delta": "ResponseFunctionCallArgumentsDeltaEvent",
    "response.function_call_arguments.done": "ResponseFunctionCallArgumentsDoneEvent",
    "response.completed": "ResponseCompletedEvent",
    "response.incomplete": "ResponseIncompleteEvent",
    "response.failed": "ResponseFailedEvent",
    "error": "ResponseErrorEvent",
}
TOOL = {
    "type": "function",
    "name": "lookup",
    "description": "Look a word up",
    "parameters": {"type": "object", "properties": {"word": {"type": "string"}}, "required": ["word"]},
}


def create(server: Server, chip: str = "nvidia", model: str = QWEN, **body: Any) -> httpx.Response:
    with server.client() as c:
        return c.post(f"/maas/{model}/{chip}/responses", json={"input": "你是谁?", **body})


def events(r: httpx.Response) -> list[dict[str, Any]]:
    """A Responses stream: `event: TYPE` + `data: {...}` blocks, no [DONE]; each checked against its schemas."""
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/event-stream"), r.headers
    out = []
    for block in r.text.replace("\r\n", "\n").split("\n\n"):
        if not block.strip():
            continue
        event, data = block.split("\n")
        assert event.startswith("event: ") and data.startswith("data: "), block
        body = json.loads(data.removeprefix("data: "))
        assert body["type"] == event.removeprefix("event: ")
        try:
            assert_valid("ResponseStreamEvent", body)
            assert_valid(EVENT_SCHEMAS[body["type"]], body)
        except AssertionError as e:
            raise AssertionError(f"event {len(out)}: {e}") from None
        out.append(body)
    assert [e["sequence_number"] for e in out] == list(range(len(out)))
    return out


def test_the_responses_schemas_are_openais_and_strict() -> None:
    item = {"id": "msg_1", "type": "message", "role": "assistant", "status": "completed"}
    item["content"] = [{"type": "output_text", "text": "hi", "annotations": [], "logprobs": []}]
    ok = {
        "id": "resp_1",
        "object": "response",
        "created_at": 1,
        "status": "completed",
        "error": None,
        "incomplete_details": None,
        "instructions": None,
        "model": "m",
        "tools": [],
        "output": [item],
        "parallel_tool_calls": True,
        "metadata": {},
        "tool_choice": "auto",
        "temperature": 1.0,
        "top_p": 1.0,
    }
    assert_valid("Response", ok)
    assert_invalid("Response", broken(ok, "tool_choice"))  # required by OpenAI's schema
    assert_invalid("Response", broken(ok, "output", 0, "content", 0, "logprobs"))
    assert_invalid("Response", broken(ok, "output", 0, "role", value="user"))
    assert_invalid("Response", broken(ok, "status", value="done"))
    assert_invalid("Response", broken(ok, "usage", value=None))  # absent, or an object: never null
    assert_invalid("ResponseStreamEvent", {"type": "response.completed", "response": ok})  # no sequence_number


@pytest.mark.parametrize("chip", CHAT_CHIPS)
def test_a_response_its_retrieval_and_its_input_items_are_openais_shapes(server: Server, chip: str) -> None:
    r = create(server, chip, instructions="Be brief.", metadata={"a": "b"}, temperature=0.5)
    assert r.status_code == 200, r.text
    body = r.json()
    assert_valid("Response", body)
    assert body["usage"] is not None
    assert_valid("ResponseUsage", body["usage"])
    assert_invalid("Response", broken(body, "output", 0, "content", 0, "annotations"))
    assert_invalid("Response", broken(body, "object", value="chat.completion"))
    assert_invalid("Response", broken(body, "usage", "input_tokens_details"))
    assert_invalid("Response", broken(body, "metadata", value={"a": 1}))
    with server.client() as c:
        again = c.get(f"/v1/responses/{body['id']}")
        items = c.get(f"/v1/responses/{body['id']}/input_items")
    assert again.json() == body
    listed = items.json()
    assert_valid("ResponseItemList", listed)
    assert listed["data"][0]["content"] == [{"type": "input_text", "text": "你是谁?"}]
    assert_invalid("ResponseItemList", broken(listed, "first_id"))
    assert_invalid("ResponseItemList", broken(listed, "data", 0, "id"))


@pytest.mark.parametrize("chip", CHAT_CHIPS)
def test_every_event_of_a_text_stream_is_a_ResponseStreamEvent(server: Server, chip: str) -> None:
    got = events(create(server, chip, stream=True))
    kinds = [e["type"] for e in got]
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert "response.output_text.delta" in kinds
    assert not any("choices" in e or "object" in e for e in got)  # no chat chunk leaks through
    assert got[-1]["response"]["usage"]["input_tokens"] > 0
    delta = next(e for e in got if e["type"] == "response.output_text.delta")
    assert_invalid("ResponseStreamEvent", broken(delta, "sequence_number"))
    assert_invalid("ResponseTextDeltaEvent", broken(delta, "logprobs"))
    assert_invalid("ResponseTextDeltaEvent", broken(delta, "item_id"))
    assert_invalid("ResponseCompletedEvent", broken(got[-1], "response", "output"))


def test_a_tool_round_trip_in_openais_shapes(server: Server) -> None:
    got = events(create(server, input="weather", tools=[TOOL], stream=True))
    kinds = [e["type"] for e in got]
    assert "response.function_call_arguments.delta" in kinds and kinds[-1] == "response.completed"
    [call] = got[-1]["response"]["output"]
    assert call["type"] == "function_call" and call["arguments"] == '{"word":"weather"}'
    done = next(e for e in got if e["type"] == "response.function_call_arguments.done")
    assert_invalid("ResponseFunctionCallArgumentsDoneEvent", broken(done, "name"))
    output = [{"type": "function_call_output", "call_id": call["call_id"], "output": "cloudy"}]
    r = create(server, input=output, tools=[TOOL], previous_response_id=got[-1]["response"]["id"])
    assert r.status_code == 200, r.text
    assert_valid("Response", r.json())
    assert r.json()["output"][0]["content"][0]["text"] == "tool said: cloudy"
    with server.client() as c:
        listed = c.get(f"/v1/responses/{r.json()['id']}/input_items", params={"order": "asc"}).json()
    assert_valid("ResponseItemList", listed)
    assert [i["type"] for i in listed["data"]] == ["message", "function_call", "function_call_output"]
    assert_invalid("ResponseItemList", broken(listed, "data", 2, "status"))


def test_a_stream_that_breaks_ends_with_an_error_and_response_failed(server: Server) -> None:
    got = events(create(server, "amd", "qwen-72b", stream=True, max_output_tokens=5))
    assert [e["type"] for e in got[-2:]] == ["error", "response.failed"]
    assert got[-2]["code"] == "upstream_error"
    assert got[-1]["response"]["status"] == "failed" and got[-1]["response"]["error"]["code"] == "server_error"
    assert_invalid("ResponseErrorEvent", broken(got[-2], "param"))
    assert_invalid("ResponseFailedEvent", broken(got[-1], "response", "error", "code", value="upstream_error"))


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (404, {"previous_response_id": "resp_nothing"}),
        (400, {"tools": [{"type": "web_search"}]}),
        (400, {"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]}),
    ],
)
def test_errors_of_the_responses_api_are_an_ErrorResponse(server: Server, status: int, body: dict[str, Any]) -> None:
    r = create(server, **body)
    assert r.status_code == status, r.text
    assert_valid("ErrorResponse", r.json())
    assert errors("ErrorResponse", broken(r.json(), "error", "param"))
