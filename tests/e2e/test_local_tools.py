"""Tools end to end through `mxn serve`, driven by the `openai` SDK: the embedded engine renders tools with a model's
chat template, parses the model's `<tool_call>` blocks and streams them as `tool_calls` deltas; a model whose template
cannot show tools is refused `tools`; and tools pass through to an OpenAI-compatible upstream (the fake one, which
calls as vLLM does).

The demo model is trained for too few steps in the tests (MXN_TEST_DEMO_STEPS) to write a call reliably, so what a
model writes is fixed here by a scripted one: a tiny Qwen2 with the demo's chat template, taught two tool round trips
by heart. Everything else is the product's own path: the template, generation, the parser, the stream and the SDK.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai import OpenAI

from mxn.engines.local.demo import tool_use
from tests.conftest import Proc, Server, first_start_key, start_serve, start_upstream

ADMIN = "tools-admin-key-0123456789abcdef"
DEMO, SCRIPTED, PLAIN, UP = "mxn-demo", "scripted", "plain-chat", "tool-up"
WEATHER = tool_use()["tool"]  # the demo's own tool, which the scripted model knows too
CATALOG = """
models:
  - {{name: mxn-demo, kind: chat, context_length: 2048, tokenizer: "{demo}"}}
  - {{name: scripted, kind: chat, context_length: 512, tokenizer: "{scripted}"}}
  - {{name: plain-chat, kind: chat, context_length: 128, tokenizer: "{plain}"}}
  - {{name: tool-up, kind: chat, context_length: 2048, tokenizer: qwen}}
deployments:
  - {{model: mxn-demo, chip: cpu, endpoints: [{{engine: local, path: "{demo}"}}]}}
  - {{model: scripted, chip: cpu, endpoints: [{{engine: local, path: "{scripted}"}}]}}
  - {{model: plain-chat, chip: cpu, endpoints: [{{engine: local, path: "{plain}"}}]}}
  - {{model: tool-up, chip: nvidia, endpoints: [{{url: "{up}"}}]}}
"""
# ChatML that ignores `tools`, as many models' templates do.
PLAIN_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _call(city: str) -> dict[str, Any]:
    return {"type": "function", "function": {"name": "get_weather", "arguments": {"city": city}}}


# What the scripted model knows by heart: the question, its answer (text and calls), the tools' results, the reply.
ONE = [
    {"role": "user", "content": "What is the weather in Paris?"},
    {"role": "assistant", "content": "", "tool_calls": [_call("Paris")]},
    {"role": "tool", "content": json.dumps({"weather": "rainy"})},
    {"role": "assistant", "content": "The weather in Paris is rainy."},
]
TWO = [
    {"role": "user", "content": "Paris and Tokyo?"},
    {"role": "assistant", "content": "Let me look.", "tool_calls": [_call("Paris"), _call("Tokyo")]},
    {"role": "tool", "content": "rainy"},
    {"role": "tool", "content": "sunny"},
    {"role": "assistant", "content": "Rainy in Paris, sunny in Tokyo."},
]


def _tiny(tok: Any, path: Path, context: int, steps: int = 0, samples: list[str] | None = None) -> Path:
    """A tiny Qwen2 saved at `path`: random, or trained on `samples` for `steps`."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from mxn.engines.local.demo import train

    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=context,
        tie_word_embeddings=True,
        eos_token_id=tok.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=tok.pad_token_id,
    )
    model = Qwen2ForCausalLM(config)
    if steps:
        stats = train(model, tok, samples or [], 120, lambda _line: None, steps)
        assert stats["final_loss"] < 0.05, stats  # it knows its lines, or every test below would say so less clearly
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def _scripted_model(path: Path) -> Path:
    from transformers.utils.chat_template_utils import render_jinja_template

    from mxn.engines.local.demo import CHAT_TEMPLATE, build_tokenizer

    samples = [render_jinja_template([c], tools=[WEATHER], chat_template=CHAT_TEMPLATE)[0][0] for c in (ONE, TWO)]
    return _tiny(build_tokenizer(samples, vocab_size=400), path, 512, steps=150, samples=samples)


def _plain_model(path: Path) -> Path:
    """A tiny random Qwen2 whose chat template has no tools support."""
    from mxn.engines.local.demo import build_tokenizer

    tok = build_tokenizer(["hello world, this is a model without tools"] * 4, vocab_size=300)
    tok.chat_template = PLAIN_TEMPLATE
    return _tiny(tok, path, 128)


@pytest.fixture(scope="module")
def served(demo_data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("tools")
    upstream = start_upstream(tmp, "sse")
    try:
        paths = {"scripted": _scripted_model(tmp / "scripted"), "plain": _plain_model(tmp / "plain-chat")}
        catalog = tmp / "catalog.yaml"
        catalog.write_text(CATALOG.format(demo=demo_data_dir / "models" / "mxn-demo", up=upstream.url, **paths))
        db = f"sqlite+aiosqlite:///{tmp / 'tools.db'}"
        proc: Proc = start_serve(tmp / "serve.log", db, "--catalog", str(catalog), env={"MXN_ADMIN_KEY": ADMIN})
        try:
            yield Server(proc.url, first_start_key(proc.output()), ADMIN, db, proc, {"sse": upstream})
        finally:
            proc.stop()
    finally:
        upstream.stop()


def client(server: Server) -> OpenAI:
    return OpenAI(base_url=f"{server.url}/v1", api_key=server.key, max_retries=0, timeout=120)


def collect(stream: Any) -> tuple[str, list[dict[str, Any]], str | None, list[str]]:
    """A streamed answer put together: its text, its calls by index, its finish_reason, and what each tool_calls
    delta carried (`name` or `arguments`), in order."""
    content, calls, finish, order = "", {}, None, []
    for chunk in stream:
        if not chunk.choices:
            continue
        choice = chunk.choices[0]
        content += choice.delta.content or ""
        for tc in choice.delta.tool_calls or []:
            slot = calls.setdefault(tc.index, {"id": None, "name": "", "arguments": ""})
            slot["id"] = tc.id or slot["id"]
            if tc.function and tc.function.name:
                slot["name"] += tc.function.name
                order.append(f"{tc.index}:name")
            if tc.function and tc.function.arguments:
                slot["arguments"] += tc.function.arguments
                order.append(f"{tc.index}:arguments")
        finish = choice.finish_reason or finish
    return content, [calls[i] for i in sorted(calls)], finish, order


def _answer(message: Any) -> dict[str, Any]:
    """The assistant's message as a client sends it back in the history."""
    return message.model_dump(include={"role", "content", "tool_calls"}, exclude_none=True)


def _ask(c: OpenAI, messages: list[dict[str, Any]], stream: bool, **kw: Any) -> tuple[str | None, list[Any], str]:
    """One turn on the scripted model, greedy: its content, its calls as OpenAI dicts, its finish_reason."""
    kw = {"model": SCRIPTED, "messages": messages, "tools": [WEATHER], "temperature": 0, "max_tokens": 120, **kw}
    if stream:
        content, calls, finish, order = collect(c.chat.completions.create(stream=True, **kw))
        # each call: its id and name first, then its arguments
        assert order == [f"{i}:{part}" for i in range(len(calls)) for part in ("name", "arguments")]
        whole = [{"id": x["id"], "type": "function", "function": {"name": x["name"], "arguments": x["arguments"]}}
                 for x in calls]  # fmt: skip
        return content or None, whole, finish or ""
    r = c.chat.completions.create(**kw)
    message = r.choices[0].message
    return message.content, [t.model_dump() for t in message.tool_calls or []], r.choices[0].finish_reason


def _results(calls: list[dict[str, Any]], results: list[str]) -> list[dict[str, Any]]:
    return [{"role": "tool", "tool_call_id": c["id"], "content": r} for c, r in zip(calls, results, strict=True)]


# --- tool round trips on the embedded engine ---


@pytest.mark.parametrize("stream", [False, True])
def test_a_model_calls_a_tool_then_answers_with_its_result(served: Server, stream: bool) -> None:
    c = client(served)
    messages = [ONE[0]]
    content, calls, finish = _ask(c, messages, stream)
    assert (content, finish) == (None, "tool_calls")
    [call] = calls
    assert call["id"].startswith("call_") and call["type"] == "function"
    assert call["function"]["name"] == "get_weather" and json.loads(call["function"]["arguments"]) == {"city": "Paris"}

    messages += [{"role": "assistant", "content": None, "tool_calls": calls}, *_results(calls, [ONE[2]["content"]])]
    content, calls, finish = _ask(c, messages, stream)
    assert (content, calls, finish) == ("The weather in Paris is rainy.", [], "stop")


@pytest.mark.parametrize("stream", [False, True])
def test_several_calls_and_the_text_before_them(served: Server, stream: bool) -> None:
    c = client(served)
    messages = [TWO[0]]
    content, calls, finish = _ask(c, messages, stream)
    assert (content, finish) == ("Let me look.", "tool_calls")
    assert [json.loads(x["function"]["arguments"]) for x in calls] == [{"city": "Paris"}, {"city": "Tokyo"}]
    assert len({x["id"] for x in calls}) == 2
    messages += [{"role": "assistant", "content": content, "tool_calls": calls}, *_results(calls, ["rainy", "sunny"])]
    assert _ask(c, messages, stream) == ("Rainy in Paris, sunny in Tokyo.", [], "stop")


def test_a_named_tool_choice_gets_a_call_of_that_tool(served: Server) -> None:
    # `tool_choice` naming the function: the engine writes the call's opening, the model the arguments
    choice = {"type": "function", "function": {"name": "get_weather"}}
    content, calls, finish = _ask(client(served), [ONE[0]], False, tool_choice=choice)
    assert finish == "tool_calls" and content is None
    assert [(x["function"]["name"], json.loads(x["function"]["arguments"])) for x in calls] == [
        ("get_weather", {"city": "Paris"})
    ]


def test_tool_choice_none_shows_the_model_no_tools(served: Server) -> None:
    c = client(served)
    kw: dict[str, Any] = {"model": SCRIPTED, "messages": [ONE[0]], "temperature": 0, "max_tokens": 40}
    bare = c.chat.completions.create(**kw)
    none = c.chat.completions.create(tools=[WEATHER], tool_choice="none", **kw)
    shown = c.chat.completions.create(tools=[WEATHER], **kw)
    assert none.usage and bare.usage and shown.usage
    assert none.usage.prompt_tokens == bare.usage.prompt_tokens < shown.usage.prompt_tokens - 20
    # the model writes what it knows after the question, but with no tools asked for, it stays text
    assert none.choices[0].message.tool_calls is None and none.choices[0].finish_reason in {"stop", "length"}
    assert shown.choices[0].message.tool_calls


def test_a_tool_choice_naming_an_unknown_tool_is_a_400(served: Server) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        _ask(client(served), [ONE[0]], False, tool_choice={"type": "function", "function": {"name": "launch_rocket"}})
    assert caught.value.body["param"] == "tool_choice"  # type: ignore[index]


def test_the_demo_model_takes_tools(served: Server) -> None:
    """Its template shows them (Qwen2.5's layout); what a demo trained for a few dozen steps writes is its affair."""
    r = client(served).chat.completions.create(
        model=DEMO,
        messages=[ONE[0]],
        tools=[WEATHER],
        temperature=0,
        max_tokens=30,  # type: ignore[list-item]
    )
    assert r.choices[0].finish_reason in {"stop", "length", "tool_calls"}
    assert r.usage is not None and r.usage.prompt_tokens > 60  # the tools section is in the prompt


# --- a model whose template cannot show tools ---


@pytest.mark.parametrize("stream", [False, True])
def test_tools_to_a_model_whose_template_ignores_them_is_a_400_naming_tools(served: Server, stream: bool) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client(served).chat.completions.create(
            model=PLAIN, messages=[{"role": "user", "content": "hi"}], tools=[WEATHER], stream=stream
        )
    body = caught.value.body
    assert isinstance(body, dict) and body["param"] == "tools" and "tools" in body["message"]
    # the same model answers without tools: only the parameter is refused
    r = client(served).chat.completions.create(model=PLAIN, messages=[{"role": "user", "content": "hi"}], max_tokens=3)
    assert r.choices[0].finish_reason in {"stop", "length"}


# --- passthrough to an OpenAI-compatible upstream ---


def _forwarded(server: Server) -> dict[str, Any]:
    body: dict[str, Any] = httpx.get(server.upstreams["sse"].url.removesuffix("/v1") + "/_last").json()
    return body


def test_tool_calls_pass_through_whole_and_streamed_and_the_result_is_answered(served: Server) -> None:
    c = client(served)
    messages: list[dict[str, Any]] = [{"role": "user", "content": "Paris"}]
    kw: dict[str, Any] = {"model": UP, "messages": messages, "tools": [WEATHER]}  # `messages` grows below
    r = c.chat.completions.create(**kw)
    assert _forwarded(served)["tools"] == [WEATHER]
    assert r.choices[0].finish_reason == "tool_calls" and r.choices[0].message.content is None
    [call] = r.choices[0].message.tool_calls or []
    assert call.id == "call_fake1" and call.type == "function"
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Paris"}

    content, calls, finish, order = collect(
        c.chat.completions.create(model=UP, messages=messages, tools=[WEATHER], stream=True)
    )
    assert finish == "tool_calls" and content == ""
    assert order[0] == "0:name" and len(order) > 2 and set(order[1:]) == {"0:arguments"}  # arguments in pieces
    assert calls == [{"id": "call_fake1", "name": "get_weather", "arguments": call.function.arguments}]

    messages += [_answer(r.choices[0].message), {"role": "tool", "tool_call_id": call.id, "content": "21C, sunny"}]
    r = c.chat.completions.create(**kw)
    assert r.choices[0].message.content == "tool said: 21C, sunny" and r.choices[0].finish_reason == "stop"
    sent = _forwarded(served)["messages"]
    assert sent[1]["tool_calls"][0]["function"] == {"name": "get_weather", "arguments": call.function.arguments}
    assert sent[2] == {"role": "tool", "tool_call_id": "call_fake1", "content": "21C, sunny"}
    text, calls, finish, _ = collect(
        c.chat.completions.create(model=UP, messages=messages, tools=[WEATHER], stream=True)
    )
    assert (text, calls, finish) == ("tool said: 21C, sunny", [], "stop")
