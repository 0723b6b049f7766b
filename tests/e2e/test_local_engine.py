"""The embedded engine behind a zero-config `mxn serve`: the demo chat model and MiniLM embeddings."""

from __future__ import annotations

import base64
import math
import struct
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from openai import OpenAI

from tests.conftest import Server, first_start_key, free_port, start

DEMO = "mxn-demo"
PROMPTS = [
    "你是谁?",
    "Hello",
    "What is mxn?",
    "什么是 M×N?",
    "Tell me a joke.",
    "谢谢",
    "How do I compare chips?",
    "支持哪些芯片?",
]


@pytest.fixture(scope="module")
def local(demo_data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("local")
    db = f"sqlite+aiosqlite:///{tmp / 'local.db'}"
    port = free_port()
    cmd = [sys.executable, "-m", "mxn", "serve", "--port", str(port), "--database-url", db]
    proc = start(cmd, f"http://127.0.0.1:{port}/readyz", tmp / "serve.log", env={"MXN_DATA_DIR": str(demo_data_dir)})
    try:
        yield Server(f"http://127.0.0.1:{port}", first_start_key(proc.output()), "", db, proc, {})
    finally:
        proc.stop()


def client(server: Server) -> OpenAI:
    return OpenAI(base_url=f"{server.url}/v1", api_key=server.key, max_retries=0, timeout=120)


def chat(server: Server, prompt: str, **kw: object) -> str:
    r = client(server).chat.completions.create(model=DEMO, messages=[{"role": "user", "content": prompt}], **kw)
    return r.choices[0].message.content or ""


def stream_text(server: Server, prompt: str, **kw: object) -> tuple[str, list[str], str | None]:
    chunks = list(
        client(server).chat.completions.create(
            model=DEMO, messages=[{"role": "user", "content": prompt}], stream=True, **kw
        )
    )
    deltas = [c.choices[0].delta.content or "" for c in chunks if c.choices]
    finish = [c.choices[0].finish_reason for c in chunks if c.choices][-1]
    return "".join(deltas), deltas, finish


def test_zero_config_serves_the_demo_and_embedding_models(local: Server) -> None:
    ids = {m.id for m in client(local).models.list()}
    assert {DEMO, f"{DEMO}@cpu", "all-minilm-l6-v2", "all-minilm-l6-v2@cpu"} <= ids


def test_chat_stream_matches_non_stream_and_never_garbles_chinese(local: Server) -> None:
    kw = {"temperature": 0, "max_tokens": 60, "extra_body": {"ignore_eos": True}}
    whole = chat(local, "你是谁?", **kw)
    streamed, deltas, _finish = stream_text(local, "你是谁?", **kw)
    assert whole and streamed == whole
    assert "\ufffd" not in streamed and all("\ufffd" not in d for d in deltas)
    assert len([d for d in deltas if d]) > 3  # token by token, not one lump


def test_usage_is_exact(local: Server) -> None:
    from transformers import AutoTokenizer

    messages = [{"role": "system", "content": "简短回答"}, {"role": "user", "content": "Hello"}]
    r = client(local).chat.completions.create(
        model=DEMO, messages=messages, temperature=0, max_tokens=12, extra_body={"ignore_eos": True}
    )
    tok = AutoTokenizer.from_pretrained(_demo_path(local))
    prompt = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)
    assert r.usage.prompt_tokens == len(prompt["input_ids"])
    assert r.usage.completion_tokens == 12 and r.choices[0].finish_reason == "length"
    with local.client() as c:
        count = c.post(f"/maas/{DEMO}/cpu/token_count", json={"prompt": "你好, mxn"}).json()["token_count"]
    assert count == len(tok("你好, mxn", add_special_tokens=False)["input_ids"])


def _demo_path(server: Server) -> str:
    with server.client() as c:
        return str(c.post(f"/maas/{DEMO}/cpu/get_model_details", json={}).json()["tokenizer"])


def test_stop_strings_cut_the_text_even_across_tokens(local: Server) -> None:
    whole = chat(local, "Hello", temperature=0, max_tokens=60, extra_body={"ignore_eos": True})
    stop = whole[8:13]  # a stop string that starts mid-answer and spans several tokens
    cut, _deltas, finish = stream_text(
        local, "Hello", temperature=0, max_tokens=60, stop=[stop, "never-seen"], extra_body={"ignore_eos": True}
    )
    assert cut == whole[: whole.index(stop)] and finish == "stop"
    r = client(local).chat.completions.create(
        model=DEMO,
        messages=[{"role": "user", "content": "Hello"}],
        temperature=0,
        max_tokens=60,
        stop=stop,
        extra_body={"ignore_eos": True},
    )
    assert r.choices[0].message.content == cut and r.choices[0].finish_reason == "stop"


def test_max_tokens_gives_length(local: Server) -> None:
    r = client(local).chat.completions.create(
        model=DEMO, messages=[{"role": "user", "content": "Hello"}], max_tokens=3, temperature=0
    )
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 3


def test_same_seed_and_temperature_give_the_same_text(local: Server) -> None:
    kw = {"temperature": 1.3, "top_p": 0.95, "seed": 1234, "max_tokens": 40}
    first, second = chat(local, "Tell me a joke.", **kw), chat(local, "Tell me a joke.", **kw)
    assert first == second and first
    r = client(local).chat.completions.create(
        model=DEMO, messages=[{"role": "user", "content": "Hello"}], n=2, temperature=1.0, seed=7, max_tokens=20
    )
    assert [c.index for c in r.choices] == [0, 1]


def test_sampling_parameters_change_what_is_generated(local: Server) -> None:
    plain = chat(local, "What is mxn?", temperature=0, max_tokens=40)
    penalised = chat(
        local,
        "What is mxn?",
        temperature=0,
        max_tokens=40,
        frequency_penalty=2.0,
        extra_body={"repetition_penalty": 1.8},
    )
    assert plain and penalised and penalised != plain  # the penalties really reach the sampler
    kw = {"temperature": 0.9, "top_p": 0.9, "max_tokens": 30, "seed": 5, "extra_body": {"top_k": 20, "min_p": 0.05}}
    assert chat(local, "What is mxn?", **kw) == chat(local, "What is mxn?", **kw)
    assert chat(local, "Hello", temperature=1e-45, max_tokens=20) == chat(local, "Hello", temperature=0, max_tokens=20)


def test_eight_concurrent_streams_all_complete_correctly(local: Server) -> None:
    solo = {p: chat(local, p, temperature=0, max_tokens=48) for p in PROMPTS}
    barrier = threading.Barrier(len(PROMPTS))

    def one(prompt: str) -> str:
        barrier.wait(30)
        return stream_text(local, prompt, temperature=0, max_tokens=48)[0]

    with ThreadPoolExecutor(len(PROMPTS)) as pool:
        together = dict(zip(PROMPTS, pool.map(one, PROMPTS), strict=True))
    assert together == solo  # batched decoding gives each request exactly what it gets alone


def test_disconnected_client_frees_its_slot(local: Server) -> None:
    body = {
        "model": DEMO,
        "messages": [{"role": "user", "content": "Hello"}],
        "stream": True,
        "max_tokens": 1500,
        "ignore_eos": True,
        "temperature": 0,
    }
    with (
        httpx.Client(timeout=60) as h,
        h.stream(
            "POST", f"{local.url}/v1/chat/completions", json=body, headers={"authorization": f"Bearer {local.key}"}
        ) as r,
    ):
        lines = r.iter_lines()
        for _ in range(6):
            next(lines)
        assert _live(local)["running"] == 1
    for _ in range(100):  # the next decode steps notice the cancelled job
        if _live(local)["running"] == 0:
            break
        threading.Event().wait(0.05)
    assert _live(local)["running"] == 0 and _live(local)["waiting"] == 0


def _live(server: Server) -> dict[str, int]:
    with server.client() as c:
        eps = c.get("/admin/endpoints").json()["data"]
    return next(e["live"] for e in eps if e["deployment"] == f"{DEMO}@cpu")


def test_text_completions_on_the_local_engine(local: Server) -> None:
    r = client(local).completions.create(model=DEMO, prompt="mxn is", max_tokens=8, temperature=0)
    assert r.choices[0].finish_reason in {"stop", "length"} and r.usage.prompt_tokens > 0


def _cos(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


def test_embeddings_rank_a_paraphrase_above_an_unrelated_sentence(local: Server) -> None:
    texts = ["How do I reset my password?", "What is the way to change my password?", "The cat sleeps on the sofa."]
    r = client(local).embeddings.create(model="all-minilm-l6-v2", input=texts)
    vectors = [d.embedding for d in r.data]
    assert all(len(v) == 384 for v in vectors)
    assert _cos(vectors[0], vectors[1]) > _cos(vectors[0], vectors[2]) + 0.2
    assert r.usage.prompt_tokens > len(texts)
    raw = httpx.post(
        f"{local.url}/v1/embeddings",
        headers={"authorization": f"Bearer {local.key}"},
        json={"model": "all-minilm-l6-v2", "input": texts[0], "encoding_format": "base64"},
    ).json()
    decoded = struct.unpack("<384f", base64.b64decode(raw["data"][0]["embedding"]))
    assert max(abs(x - y) for x, y in zip(decoded, vectors[0], strict=True)) < 1e-6


def test_local_engine_rejects_what_it_cannot_do(local: Server) -> None:
    with local.client() as c:
        r = c.post(
            "/v1/chat/completions",
            json={"model": DEMO, "messages": [{"role": "user", "content": "x"}], "logprobs": True},
        )
        assert r.status_code == 400 and r.json()["error"]["param"] == "logprobs"
        r = c.post(
            "/v1/chat/completions",
            json={"model": DEMO, "messages": [{"role": "user", "content": "x"}], "max_tokens": 5000},
        )
        assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"


def test_responses_and_messages_on_the_embedded_engine(local: Server) -> None:
    """The Responses and Anthropic Messages APIs over the embedded engine: the same greedy answer as chat gives,
    whole and streamed, with exact usage, and a second turn by previous_response_id that carries the first."""
    import anthropic

    kw = {"temperature": 0, "max_tokens": 24}
    expected = chat(local, "What is mxn?", **kw)
    oa = client(local)
    first = oa.responses.create(model=DEMO, input="What is mxn?", temperature=0, max_output_tokens=24)
    assert first.output_text == expected and first.usage is not None
    with oa.responses.stream(model=DEMO, input="What is mxn?", temperature=0, max_output_tokens=24) as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert "".join(deltas) == expected == final.output_text and len(deltas) > 3
    second = oa.responses.create(model=DEMO, previous_response_id=first.id, input="Thanks", max_output_tokens=8)
    assert second.usage is not None and second.usage.input_tokens > first.usage.input_tokens + 5

    claude = anthropic.Anthropic(base_url=local.url, api_key=local.key, max_retries=0, timeout=120)
    question = [{"role": "user", "content": "What is mxn?"}]
    message = claude.messages.create(model=DEMO, max_tokens=24, messages=question, extra_body={"temperature": 0})  # type: ignore[arg-type]
    assert message.content[0].type == "text" and message.content[0].text == expected
    assert message.usage.input_tokens == first.usage.input_tokens
    with claude.messages.stream(model=DEMO, max_tokens=24, messages=question, extra_body={"temperature": 0}) as s:  # type: ignore[arg-type]
        pieces = list(s.text_stream)
        streamed = s.get_final_message()
    assert "".join(pieces) == expected and streamed.usage.output_tokens == message.usage.output_tokens
