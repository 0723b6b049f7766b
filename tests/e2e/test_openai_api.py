"""The OpenAI-compatible surface, driven by the real `openai` SDK and langchain-openai."""

from __future__ import annotations

import httpx
import openai
import pytest
from openai import OpenAI

from mxn.tokens import get_tokenizer
from tests.conftest import Server

QWEN = "qwen1.5-14b-chat"


def maas(server: Server, model: str, chip: str) -> OpenAI:
    return OpenAI(base_url=f"{server.url}/maas/{model}/{chip}/", api_key=server.key, max_retries=0)


def v1(server: Server) -> OpenAI:
    return OpenAI(base_url=f"{server.url}/v1", api_key=server.key, max_retries=0)


def last_upstream_body(server: Server, name: str) -> dict:
    return httpx.get(server.upstreams[name].url.removesuffix("/v1") + "/_last").json()


@pytest.mark.parametrize("chip", ["nvidia", "biren", "amd"])
def test_chat_non_stream_on_every_upstream_kind(server: Server, chip: str) -> None:
    r = maas(server, QWEN, chip).chat.completions.create(model=QWEN, messages=[{"role": "user", "content": "你是谁?"}])
    assert r.choices[0].message.content == "echo(1): 你是谁?"
    assert r.model == QWEN
    assert r.object == "chat.completion"
    assert r.id and r.created > 0
    assert r.choices[0].finish_reason == "stop"
    assert r.usage is not None and r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


@pytest.mark.parametrize("chip", ["nvidia", "biren", "amd"])
def test_chat_stream_is_proper_sse_whatever_the_upstream_sent(server: Server, chip: str) -> None:
    stream = maas(server, QWEN, chip).chat.completions.create(
        model=QWEN,
        messages=[{"role": "user", "content": "根据孔子的思想,人生的意义是什么?"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "echo(1): 根据孔子的思想,人生的意义是什么?"
    assert len({c.id for c in chunks}) == 1 and all(c.created for c in chunks)
    assert all(c.object == "chat.completion.chunk" and c.model == QWEN for c in chunks)
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


def test_raw_stream_ends_with_done_for_a_jsonl_upstream(server: Server) -> None:
    body = {"messages": [{"role": "user", "content": "hi"}], "stream": True}
    with server.client() as c:
        r = c.post(f"/maas/{QWEN}/biren/chat/completions", json=body)
    assert r.headers["content-type"].startswith("text/event-stream")
    events = [e for e in r.text.split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"
    assert '"usage"' not in r.text  # not asked for: the client does not get it


def test_usage_counted_by_tokenizer_when_upstream_omits_it(server: Server) -> None:
    messages = [{"role": "user", "content": "数一数这些字"}]
    r = maas(server, QWEN, "amd").chat.completions.create(model=QWEN, messages=messages)
    tok = get_tokenizer("qwen")
    assert r.usage.prompt_tokens == tok.count_messages(messages)
    assert r.usage.completion_tokens == tok.count(r.choices[0].message.content)
    assert r.id.startswith("chatcmpl-")


def test_v1_with_model_at_chip_and_plain_name(server: Server) -> None:
    client = v1(server)
    r = client.chat.completions.create(model=f"{QWEN}@nvidia", messages=[{"role": "user", "content": "a"}])
    assert r.choices[0].message.content == "echo(1): a"
    r = client.chat.completions.create(model=QWEN, messages=[{"role": "user", "content": "b"}])
    assert r.choices[0].message.content == "echo(1): b"  # routed to one of the running cells


def test_multi_turn_with_system_prompt(server: Server) -> None:
    messages = [
        {"role": "system", "content": "请以嘲讽语气回答"},
        {"role": "user", "content": "你是谁?"},
        {"role": "assistant", "content": "我是大模型回答助手"},
        {"role": "user", "content": "你能做什么?"},
    ]
    r = maas(server, QWEN, "nvidia").chat.completions.create(model=QWEN, messages=messages)
    assert r.choices[0].message.content == "echo(4): 你能做什么?"
    assert last_upstream_body(server, "sse")["messages"] == messages


def test_upstream_model_mapping_and_catalogue_defaults(server: Server) -> None:
    maas(server, QWEN, "nvidia").chat.completions.create(model=QWEN, messages=[{"role": "user", "content": "x"}])
    sent = last_upstream_body(server, "sse")
    assert sent["model"] == "Qwen/Qwen1.5-14B-Chat"
    assert (sent["temperature"], sent["top_p"], sent["repetition_penalty"]) == (0.7, 0.8, 1.05)
    assert sent["max_tokens"] == 2048 - get_tokenizer("qwen").count_messages([{"role": "user", "content": "x"}])
    maas(server, QWEN, "nvidia").chat.completions.create(
        model=QWEN, messages=[{"role": "user", "content": "x"}], temperature=0.2, max_tokens=5
    )
    sent = last_upstream_body(server, "sse")
    assert (sent["temperature"], sent["max_tokens"]) == (0.2, 5)


def test_parameters_an_endpoint_does_not_support_get_a_400_naming_them(server: Server) -> None:
    client = maas(server, "chatglm3-6b", "nvidia")
    r = client.chat.completions.create(model="chatglm3-6b", messages=[{"role": "user", "content": "x"}], seed=7)
    assert r.choices[0].message.content == "echo(1): x"
    sent = last_upstream_body(server, "strict")
    assert sent["seed"] == 7 and "stream_options" not in sent
    for name, extra in (("top_k", {"top_k": 20}), ("presence_penalty", {"presence_penalty": 0.5}), ("n", {"n": 2})):
        with pytest.raises(openai.BadRequestError) as caught:
            client.chat.completions.create(
                model="chatglm3-6b", messages=[{"role": "user", "content": "x"}], temperature=1, extra_body=extra
            )
        err = caught.value.body
        assert isinstance(err, dict) and (err["param"], err["code"]) == (name, "unsupported_parameter"), err


def test_unknown_fields_are_forwarded(server: Server) -> None:
    maas(server, QWEN, "nvidia").chat.completions.create(
        model=QWEN, messages=[{"role": "user", "content": "x"}], extra_body={"chat_template_kwargs": {"a": 1}}
    )
    assert last_upstream_body(server, "sse")["chat_template_kwargs"] == {"a": 1}


def test_failover_to_the_next_endpoint_before_anything_is_sent(server: Server) -> None:
    client = maas(server, "chatglm3-6b", "biren")
    r = client.chat.completions.create(model="chatglm3-6b", messages=[{"role": "user", "content": "x"}])
    assert r.choices[0].message.content == "echo(1): x"
    chunks = list(
        client.chat.completions.create(model="chatglm3-6b", messages=[{"role": "user", "content": "y"}], stream=True)
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "echo(1): y"


@pytest.mark.parametrize("base", ["maas", "v1"])
def test_text_completions(server: Server, base: str) -> None:
    client = maas(server, "qwen-72b", "nvidia") if base == "maas" else v1(server)
    model = "qwen-72b" if base == "maas" else "qwen-72b@nvidia"
    r = client.completions.create(model=model, prompt="从前有座山", max_tokens=10)
    assert r.choices[0].text == "completion of: 从前有座山"
    assert r.object == "text_completion" and r.model == "qwen-72b"
    chunks = list(client.completions.create(model=model, prompt="从前有座山", max_tokens=10, stream=True))
    assert "".join(c.choices[0].text for c in chunks) == "completion of: 从前有座山"


def test_embeddings(server: Server) -> None:
    r = v1(server).embeddings.create(model="emb-small", input=["hello", "世界"])
    assert [d.index for d in r.data] == [0, 1] and len(r.data[0].embedding) == 8
    assert r.model == "emb-small" and r.usage.prompt_tokens > 0


def test_models_lists_names_and_cells(server: Server) -> None:
    ids = {m.id for m in v1(server).models.list()}
    assert {QWEN, f"{QWEN}@nvidia", f"{QWEN}@biren", "qwen-72b@amd"} <= ids
    assert "private-model" in ids  # the first-start key is an admin's
    cell = [m.id for m in maas(server, QWEN, "biren").models.list()]
    assert cell == [QWEN, f"{QWEN}@biren"]


def test_langchain_invoke_and_stream(server: Server) -> None:
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(base_url=f"{server.url}/maas/{QWEN}/nvidia/", api_key=server.key, model=QWEN, max_retries=0)
    messages = [("system", "You are a pedantic ancient Chinese scholar."), ("user", "Tell me a joke.")]
    assert llm.invoke(messages).content == "echo(2): Tell me a joke."
    assert "".join(str(c.content) for c in llm.stream(messages)) == "echo(2): Tell me a joke."
