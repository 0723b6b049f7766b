"""Tool calls on the embedded engine: the Hermes/Qwen `<tool_call>` parser, its streaming split, the choice of what
the template is shown, and the engine's stream of `tool_calls` deltas from a model output the test writes."""

from __future__ import annotations

import asyncio
import json
import shutil
from itertools import pairwise
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mxn.engines import EndpointConfig
from mxn.engines.local.demo import build_tokenizer
from mxn.engines.local.engine import LocalEngine, LocalStream
from mxn.engines.local.scheduler import DELTA, FINISH, Job
from mxn.engines.local.tools import OPEN, ToolCall, ToolSplitter, plan, renders_tools, split, template_message
from mxn.errors import InvalidRequest

CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
CALL2 = '<tool_call>\n{"name": "get_time", "arguments": {"zone": "CET", "n": 2}}\n</tool_call>'
WEATHER = {
    "type": "function",
    "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}},
}


def _streamed(text: str, cuts: list[int], prefix: str = "") -> list[str | ToolCall]:
    """What a splitter gives for `text` delivered in pieces cut at `cuts`, texts merged where adjacent."""
    splitter = ToolSplitter(prefix)
    bounds = [0, *sorted(cuts), len(text)]
    parts = [p for a, b in pairwise(bounds) for p in splitter.feed(text[a:b])]
    parts += splitter.finish()
    merged: list[str | ToolCall] = []
    for p in parts:
        if isinstance(p, str) and merged and isinstance(merged[-1], str):
            merged[-1] += p
        else:
            merged.append(p)
    return merged


def _shape(parts: list[str | ToolCall]) -> list[Any]:
    return [p if isinstance(p, str) else (p.name, json.loads(p.arguments)) for p in parts]


# --- the parser ---


def test_a_well_formed_call_becomes_a_tool_call_and_no_content() -> None:
    content, calls = split(CALL)
    assert content is None
    [call] = calls
    assert call.name == "get_weather" and json.loads(call.arguments) == {"city": "Paris"}
    assert call.id.startswith("call_") and len(call.id) > 10
    whole = call.openai()
    assert whole["type"] == "function" and isinstance(whole["function"]["arguments"], str)


def test_several_calls_keep_their_order_and_the_text_around_them() -> None:
    content, calls = split(f"Let me look.\n\n{CALL}\n{CALL2}\n")
    assert content == "Let me look."
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [
        ("get_weather", {"city": "Paris"}),
        ("get_time", {"zone": "CET", "n": 2}),
    ]
    assert len({c.id for c in calls}) == 2


@pytest.mark.parametrize(
    "block",
    [
        "<tool_call>\n{not json}\n</tool_call>",
        '<tool_call>\n{"arguments": {}}\n</tool_call>',  # no name
        '<tool_call>\n{"name": "f", "arguments": [1, 2]}\n</tool_call>',  # arguments not an object
        '<tool_call>\n["f"]\n</tool_call>',
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Par',  # cut off: never closed
    ],
)
def test_a_malformed_block_is_left_as_text(block: str) -> None:
    text = f"Sure. {block}"
    assert split(text) == (text, [])
    content, calls = split(f"{block}{CALL}")
    if block.endswith("</tool_call>"):  # a good call after it is still a call
        assert content == block and [c.name for c in calls] == ["get_weather"]
    else:  # an unclosed block runs to the next closing tag: all of it is one bad block
        assert content == f"{block}{CALL}" and calls == []


def test_arguments_given_as_a_json_string_are_accepted() -> None:
    _content, [call] = split('<tool_call>{"name": "f", "arguments": "{\\"a\\": 1}"}</tool_call>')
    assert json.loads(call.arguments) == {"a": 1}


def test_text_without_calls_is_the_model_text_exactly() -> None:
    for text in ["", "hello", "a <toolbox> and <tool_ call> and <tool_call", "trailing space \n\n", "  lead"]:
        assert split(text) == (text, [])


# --- the streaming split ---


def test_a_partial_tag_is_held_back_until_it_is_known() -> None:
    s = ToolSplitter()
    assert s.feed("The answer <tool") == ["The answer"]  # the space waits too: it may come before a call
    assert s.feed("box> is here") == [" <toolbox> is here"]
    assert s.feed(" <tool_c") == []
    assert s.feed("all>\n") == []
    [call] = s.feed('{"name": "f", "arguments": {}}\n</tool_call>')
    assert isinstance(call, ToolCall) and call.name == "f" and call.arguments == "{}"
    assert s.finish() == []  # the space before the call is not content


def test_each_call_leaves_the_stream_once_its_block_closes() -> None:
    s = ToolSplitter()
    out = s.feed(CALL[:-3])
    assert out == []
    [call] = s.feed(CALL[-3:])
    assert isinstance(call, ToolCall) and call.name == "get_weather"


@given(st.lists(st.integers(min_value=0, max_value=200), max_size=12))
def test_any_way_of_cutting_the_stream_gives_the_whole_answer(cuts: list[int]) -> None:
    text = f"Let me look.\n{CALL}\nand <tool_c> then\n{CALL2} done <tool_call>{{oops</tool_call>"
    cuts = [c for c in cuts if c <= len(text)]
    expected = _shape(_streamed(text, []))
    assert expected == [
        "Let me look.",
        ("get_weather", {"city": "Paris"}),
        "\n\nand <tool_c> then",  # the line end held before the call, and the one after it
        ("get_time", {"zone": "CET", "n": 2}),
        "\n done <tool_call>{oops</tool_call>",
    ]
    assert _shape(_streamed(text, cuts)) == expected
    # one character at a time, too
    assert _shape(_streamed(text, list(range(len(text))))) == expected


def test_a_forced_opening_joins_what_the_model_writes() -> None:
    prefix = plan({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "get_weather"}}})
    assert prefix.prefix.startswith(OPEN)
    parts = _streamed('{"city": "Paris"}}\n</tool_call>', [3, 9], prefix.prefix)
    assert _shape(parts) == [("get_weather", {"city": "Paris"})]
    required = plan({"tools": [WEATHER], "tool_choice": "required"})
    assert _shape(_streamed('get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>', [], required.prefix)) == [
        ("get_weather", {"city": "Oslo"})
    ]


# --- tools and tool_choice ---


def test_tool_choice_decides_what_the_template_is_shown() -> None:
    assert plan({}).tools is None
    assert plan({"tools": [WEATHER]}).tools == [WEATHER] and plan({"tools": [WEATHER]}).prefix == ""
    assert plan({"tools": [WEATHER], "tool_choice": "auto"}).prefix == ""
    assert plan({"tools": [WEATHER], "tool_choice": "none"}).tools is None


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"tools": [{"type": "retrieval"}]}, "tools"),
        ({"tools": [{"type": "function", "function": {"description": "no name"}}]}, "tools"),
        ({"tools": [WEATHER], "tool_choice": "sometimes"}, "tool_choice"),
        ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
        ({"tool_choice": "required"}, "tool_choice"),
    ],
)
def test_bad_tools_or_tool_choice_are_refused_by_name(body: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        plan(body)
    assert caught.value.param == param


def test_a_previous_calls_arguments_reach_the_template_as_an_object() -> None:
    message = {"role": "assistant", "content": "", "tool_calls": [{"id": "call_1", "type": "function",
               "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]}  # fmt: skip
    assert template_message(message)["tool_calls"][0]["function"]["arguments"] == {"city": "Paris"}
    assert message["tool_calls"][0]["function"]["arguments"] == '{"city": "Paris"}'  # the request is not changed


def test_a_template_is_probed_for_tools_support() -> None:
    tok = build_tokenizer(["hello world", "a tiny model"] * 4, vocab_size=300)
    assert renders_tools(tok)  # the demo's template, Qwen2.5's layout
    tok.chat_template = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    assert not renders_tools(tok)  # ignores `tools`
    tok.chat_template = None
    assert not renders_tools(tok)


# --- the engine's stream, from a model output the test writes ---


async def _chunks(pieces: list[str], reason: str = "stop") -> list[dict[str, Any]]:
    """The engine's stream of one choice whose model wrote `pieces`, as the scheduler sends them."""
    job = Job(asyncio.get_running_loop(), asyncio.Queue())
    job.seqs.append(SimpleNamespace(index=0))  # type: ignore[arg-type]  # the stream reads only its index
    for piece in pieces:
        job.events.put_nowait((DELTA, 0, piece))
    job.events.put_nowait((FINISH, 0, (reason, 17)))
    stream = LocalStream(job, 5, chat=True, tools=plan({"tools": [WEATHER]}))
    return [chunk async for chunk in stream]


def test_the_engine_streams_text_then_each_call_name_first_then_arguments() -> None:
    text = f"Checking.\n{CALL}\n{CALL2}"
    pieces = [text[i : i + 5] for i in range(0, len(text), 5)]  # cuts inside the tags and the JSON
    chunks = asyncio.run(_chunks(pieces))
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    assert deltas[0] == {"role": "assistant", "content": ""}
    content = "".join(d.get("content") or "" for d in deltas)
    assert content == "Checking." and "<" not in content
    calls = [d["tool_calls"][0] for d in deltas if "tool_calls" in d]
    assert [c["index"] for c in calls] == [0, 0, 1, 1]
    assert calls[0]["id"].startswith("call_") and calls[0]["type"] == "function"
    assert calls[0]["function"] == {"name": "get_weather", "arguments": ""}
    assert json.loads(calls[1]["function"]["arguments"]) == {"city": "Paris"} and "id" not in calls[1]
    assert calls[2]["function"]["name"] == "get_time" and calls[2]["id"] != calls[0]["id"]
    finish = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]
    assert finish[-1] == "tool_calls" and not any(finish[:-1])
    assert chunks[-1] == {"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 17, "total_tokens": 22}}


def test_a_call_cut_off_by_max_tokens_stays_text_and_length() -> None:
    chunks = asyncio.run(_chunks(["Hm ", CALL[:30]], reason="length"))
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    assert "".join(d.get("content") or "" for d in deltas) == "Hm " + CALL[:30]
    assert not any("tool_calls" in d for d in deltas)
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "length"


def test_the_demo_template_renders_a_round_trip_as_the_demo_was_trained() -> None:
    from mxn.engines.local.demo import _tool_samples, tool_round_trip, tool_use

    tok = build_tokenizer(["hello world", "a tiny model"] * 4, vocab_size=300)
    use = tool_use()
    conversation = tool_round_trip(use["questions"][0], use["cities"][0], use["results"][0])
    # as a client sends it back: OpenAI's arguments are JSON text
    call = conversation[1]["tool_calls"][0]
    call["function"] = {**call["function"], "arguments": json.dumps(call["function"]["arguments"])}
    rendered = tok.apply_chat_template([template_message(m) for m in conversation], tools=[use["tool"]], tokenize=False)
    assert rendered == _tool_samples()[0]


# --- the engine, on a tiny model: what its template can show decides what it takes ---

PLAIN_TEMPLATE = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
CHAT = {"messages": [{"role": "user", "content": "hello"}], "max_tokens": 2, "temperature": 0}


async def test_the_engine_takes_tools_only_when_its_template_shows_them(model_dir: Path, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    roomy, plain = tmp_path / "roomy", tmp_path / "plain"
    for path in (roomy, plain):  # with room for the tools section: its vocabulary of 300 makes many tokens
        shutil.copytree(model_dir, path)
        config = json.loads((path / "config.json").read_text())
        (path / "config.json").write_text(json.dumps({**config, "max_position_embeddings": 1024}))
    tok = AutoTokenizer.from_pretrained(plain)
    tok.chat_template = PLAIN_TEMPLATE
    tok.save_pretrained(plain)
    able, unable = (LocalEngine(EndpointConfig(i, "local", path=str(p))) for i, p in ((7, roomy), (8, plain)))
    try:
        assert able.unsupported == unable.unsupported == frozenset()  # not known while loading
        without = await able.call("chat/completions", CHAT)
        with_tools = await able.call("chat/completions", {**CHAT, "tools": [WEATHER]})
        assert able.unsupported == frozenset()
        # the tools were rendered into the prompt; the random model's answer is whatever it is
        assert with_tools["usage"]["prompt_tokens"] > without["usage"]["prompt_tokens"] + 20
        with pytest.raises(InvalidRequest) as caught:
            await unable.call("chat/completions", {**CHAT, "tools": [WEATHER]})
        assert caught.value.param == "tools" and unable.unsupported == frozenset({"tools"})
        assert (await unable.call("chat/completions", CHAT))["choices"][0]["finish_reason"] == "length"
    finally:
        await able.close()
        await unable.close()
