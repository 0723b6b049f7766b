"""Real engines behind one cell: `mxn deploy` starts vLLM (CPU build), llama.cpp's server (on a GGUF file mxn
converts) and the embedded engine as three managed deployments of `mxn-demo@cpu`, each from its own virtual
environment under `.engines/` (`make engines`). Driven through `mxn serve` with the `openai` SDK: what each engine
offers comes back OpenAI-valid, what it lacks gets a 400 naming the parameter; the client tools work straight
against each engine; killing vLLM under load fails no non-stream request; undeploy leaves no process behind.

The engines start once for the module (vLLM takes about a minute on two cores)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import openai
import pytest

from mxn.chips.detect import cpu_model
from tests.conftest import ROOT, Proc, mxn, start_serve, wait_for

pytestmark = pytest.mark.engines

ADMIN = "adm-" + "e" * 28
ENGINES = ("vllm", "llamacpp", "mxn")
MESSAGES = [{"role": "user", "content": "What is mxn?"}]


@dataclass
class Cell:
    gateway: Proc
    db: str
    key: str  # an admin user's sk- key: it may pin an endpoint with `-<id>`
    endpoints: dict[str, dict[str, Any]]  # engine → its managed instance (endpoint id, url, pid, hardware)

    def client(self, engine: str | None = None) -> openai.OpenAI:
        key = f"{self.key}-{self.endpoints[engine]['endpoint']}" if engine else self.key
        return openai.OpenAI(base_url=self.gateway.url + "/maas/mxn-demo/cpu", api_key=key, max_retries=0, timeout=120)

    def admin(self) -> httpx.Client:
        return httpx.Client(base_url=self.gateway.url, headers={"authorization": f"Bearer {ADMIN}"}, timeout=30)


def _managed(cell_url: str) -> list[dict[str, Any]]:
    r = httpx.get(cell_url + "/admin/managed", headers={"authorization": f"Bearer {ADMIN}"}, timeout=30)
    assert r.status_code == 200, r.text
    return list(r.json()["data"])


def _all_running(url: str) -> dict[str, dict[str, Any]] | None:
    found = {m["engine"]: m["instances"][0] for m in _managed(url) if m["running"] == 1 and m["instances"]}
    ready = {e: i for e, i in found.items() if i["endpoint"] and i["hardware"]}
    return ready if set(ready) == set(ENGINES) else None


@pytest.fixture(scope="module")
def cell(tmp_path_factory: pytest.TempPathFactory, demo_data_dir: Path) -> Iterator[Cell]:
    for engine in ("vllm", "llamacpp"):
        assert (ROOT / ".engines" / engine / "bin" / "python").exists(), "run `make engines` (make test does)"
    tmp = tmp_path_factory.mktemp("real-engines")
    db = f"sqlite+aiosqlite:///{tmp / 'mxn.db'}"
    env = {
        "MXN_DEMO": "false",
        "MXN_ADMIN_KEY": ADMIN,
        "MXN_DATA_DIR": str(demo_data_dir),
        "MXN_ENGINES_DIR": str(ROOT / ".engines"),
        "MXN_DEPLOY_INTERVAL": "0.5",
        "MXN_HEALTH_INTERVAL": "1",
        "MXN_BREAKER_COOLDOWN": "2",
    }
    gateway = start_serve(tmp / "serve.log", db, env=env)
    try:
        model = str(demo_data_dir / "models" / "mxn-demo")
        for engine in ENGINES:
            mxn("deploy", model, "--chip", "cpu", "--engine", engine, "--context-length", "2048", database_url=db)
        endpoints = wait_for(lambda: _all_running(gateway.url), timeout=900, what="three engines running")
        mxn("users", "create", "root", "--admin", database_url=db)
        key = mxn("keys", "create", "--user", "root", database_url=db).stdout.strip().splitlines()[-1]
        yield Cell(gateway, db, key, endpoints)
    except BaseException:
        print(gateway.output()[-6000:])
        raise
    finally:
        gateway.stop()


def _pids_in_group(pgid: int) -> list[int]:
    """Live processes whose process group is `pgid` (an engine and whatever it forked: vLLM's EngineCore)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(") ", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            found.append(int(entry))
    return found


def tool(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """A client command (`mxn chat|batch|bench`): they talk to a server, not to the store."""
    cmd = [sys.executable, "-m", "mxn", *args]
    return subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=300)


# --- the cell and its disclosure ---


def test_three_engines_serve_one_cell_each_with_its_detected_hardware(cell: Cell) -> None:
    cpu = cpu_model()
    for engine, instance in cell.endpoints.items():
        hw = instance["hardware"]
        assert hw["engine"] == engine and hw["engine_version"], hw
        assert hw["chip"] == "cpu" and hw["chip_model"] == cpu and hw["count"] == 1, hw
        assert hw.get("dtype"), hw
    assert cell.endpoints["vllm"]["hardware"]["engine_version"].startswith("0.")
    assert cell.endpoints["vllm"]["hardware"]["dtype"] == "bfloat16"
    with httpx.Client(headers={"authorization": f"Bearer {cell.key}"}, timeout=30) as http:
        listed = http.get(cell.gateway.url + "/maas/mxn-demo/cpu/models").json()["data"]
    (entry,) = [m for m in listed if m["id"] == "mxn-demo@cpu"]
    # The cell's disclosure names each engine that serves it.
    assert sorted(h["engine"] for h in entry["hardware"]["endpoints"]) == sorted(ENGINES)


@pytest.mark.parametrize("engine", ENGINES)
def test_chat_and_stream_with_usage_through_each_engine(cell: Cell, engine: str) -> None:
    client = cell.client(engine)
    r = client.chat.completions.create(model="mxn-demo", messages=MESSAGES, max_tokens=12, temperature=0)
    assert r.choices[0].message.role == "assistant" and r.choices[0].finish_reason in ("stop", "length")
    assert r.usage is not None and r.usage.prompt_tokens > 0 and 0 < r.usage.completion_tokens <= 12
    chunks = list(
        client.chat.completions.create(
            model="mxn-demo",
            messages=MESSAGES,
            max_tokens=12,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == r.choices[0].message.content  # greedy: the stream says what the whole answer said
    usage = chunks[-1].usage
    assert usage is not None and usage.prompt_tokens == r.usage.prompt_tokens
    if engine == "llamacpp":
        # Its server sends no usage in a stream: mxn counts the streamed text with the model's own tokenizer,
        # which may join a piece or two that generation produced apart.
        assert abs(usage.completion_tokens - r.usage.completion_tokens) <= 2, (usage, r.usage)
    else:
        assert usage.completion_tokens == r.usage.completion_tokens


@pytest.mark.parametrize("engine", ["vllm", "llamacpp"])
def test_stop_and_seed_through_each_engine(cell: Cell, engine: str) -> None:
    client = cell.client(engine)
    full = client.chat.completions.create(model="mxn-demo", messages=MESSAGES, max_tokens=16, temperature=0)
    text = full.choices[0].message.content or ""
    assert len(text) > 4
    stop = text[len(text) // 2 :][:2]
    cut = client.chat.completions.create(model="mxn-demo", messages=MESSAGES, max_tokens=16, temperature=0, stop=stop)
    assert stop not in (cut.choices[0].message.content or "") and cut.choices[0].finish_reason == "stop"
    seeded = [
        client.chat.completions.create(model="mxn-demo", messages=MESSAGES, max_tokens=16, temperature=1.0, seed=7)
        for _ in range(2)
    ]
    assert seeded[0].choices[0].message.content == seeded[1].choices[0].message.content


def _no_whitespace(demo_data_dir: Path) -> dict[str, int]:
    """A `logit_bias` that bans the demo tokenizer's whitespace tokens. The demo model is too small to have learnt
    JSON: under a grammar it would fill the whitespace JSON allows until `max_tokens`; without it, it must write the
    keys and values."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(demo_data_dir / "models" / "mxn-demo" / "tokenizer.json"))
    return {str(i): -100 for i in range(tok.get_vocab_size()) if (t := tok.decode([i])) and not t.strip()}


def test_vllm_n_logprobs_json_schema_tools_and_cached_prompt_tokens(cell: Cell, demo_data_dir: Path) -> None:
    client = cell.client("vllm")
    bias = _no_whitespace(demo_data_dir)
    r = client.chat.completions.create(
        model="mxn-demo", messages=MESSAGES, max_tokens=6, n=2, temperature=1.0, logprobs=True, top_logprobs=2
    )
    assert [c.index for c in r.choices] == [0, 1]
    content = r.choices[0].logprobs.content if r.choices[0].logprobs else None
    assert content and all(len(t.top_logprobs) == 2 and t.logprob <= 0 for t in content)
    assert r.usage is not None and r.usage.completion_tokens == sum(len(c.logprobs.content or []) for c in r.choices)

    schema = {
        "type": "object",
        "properties": {"chip": {"type": "string", "enum": ["cpu", "nvidia"]}, "count": {"enum": [1, 2, 8]}},
        "required": ["chip", "count"],
        "additionalProperties": False,
    }
    r = client.chat.completions.create(
        model="mxn-demo",
        messages=MESSAGES,
        max_tokens=120,
        temperature=0,
        logit_bias=bias,
        response_format={"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}},
    )
    jsonschema.validate(json.loads(r.choices[0].message.content or ""), schema)

    tool = {
        "type": "function",
        "function": {
            "name": "get_weather",
            "strict": True,
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string", "enum": ["Paris", "Beijing"]}},
                "required": ["city"],
                "additionalProperties": False,
            },
        },
    }
    for choice in ({"type": "function", "function": {"name": "get_weather"}}, "required"):
        r = client.chat.completions.create(
            model="mxn-demo",
            messages=MESSAGES,
            max_tokens=120,
            temperature=0,
            logit_bias=bias,
            tools=[tool],  # type: ignore[list-item]
            tool_choice=choice,  # type: ignore[arg-type]
        )
        (call,) = r.choices[0].message.tool_calls or []
        assert call.type == "function" and call.function.name == "get_weather" and call.id
        assert json.loads(call.function.arguments)["city"] in ("Paris", "Beijing")
    # Streamed: the call arrives as tool_calls deltas, its arguments in pieces that join to the same JSON.
    chunks = list(
        client.chat.completions.create(
            model="mxn-demo",
            messages=MESSAGES,
            max_tokens=120,
            temperature=0,
            logit_bias=bias,
            tools=[tool],  # type: ignore[list-item]
            tool_choice="required",
            stream=True,
        )
    )
    deltas = [t for c in chunks if c.choices for t in c.choices[0].delta.tool_calls or []]
    assert deltas and deltas[0].function and deltas[0].function.name == "get_weather"
    arguments = "".join(d.function.arguments or "" for d in deltas if d.function)
    assert json.loads(arguments)["city"] in ("Paris", "Beijing")

    # The same long prompt twice: vLLM's prefix cache serves the second, and says so in prompt_tokens_details.
    long = [{"role": "user", "content": "mxn serves models on chips. " * 40}]
    for _ in range(2):
        r = client.chat.completions.create(model="mxn-demo", messages=long, max_tokens=2, temperature=0)
    details = r.usage.prompt_tokens_details if r.usage else None
    assert details is not None and (details.cached_tokens or 0) > 0


WEATHER = {
    "type": "object",
    "properties": {"city": {"type": "string", "enum": ["Paris", "Beijing"]}},
    "required": ["city"],
    "additionalProperties": False,
}


def test_responses_and_messages_through_vllm(cell: Cell, demo_data_dir: Path) -> None:
    """The Responses and Anthropic Messages APIs over a real engine: text, a second turn by previous_response_id, a
    JSON-schema answer and a tool round trip; the official SDKs as clients."""
    import anthropic

    bias = _no_whitespace(demo_data_dir)
    key = f"{cell.key}-{cell.endpoints['vllm']['endpoint']}"
    base = cell.gateway.url + "/maas/mxn-demo/cpu"
    oa = openai.OpenAI(base_url=base, api_key=key, max_retries=0, timeout=120)
    first = oa.responses.create(model="mxn-demo", input="What is mxn?", max_output_tokens=12, temperature=0)
    assert first.status in ("completed", "incomplete") and first.output_text
    assert first.usage is not None and 0 < first.usage.output_tokens <= 12
    second = oa.responses.create(
        model="mxn-demo", previous_response_id=first.id, input="And then?", max_output_tokens=8, temperature=0
    )
    assert second.usage is not None and second.usage.input_tokens > first.usage.input_tokens  # the first turn too
    schema = {"type": "object", "properties": {"chip": {"enum": ["cpu", "nvidia"]}}, "required": ["chip"]}
    answer = oa.responses.create(
        model="mxn-demo",
        input="Which chip?",
        max_output_tokens=60,
        temperature=0,
        text={"format": {"type": "json_schema", "name": "answer", "schema": schema}},
        extra_body={"logit_bias": bias},
    )
    jsonschema.validate(json.loads(answer.output_text), schema)
    tool = {"type": "function", "name": "get_weather", "parameters": WEATHER, "strict": True}
    called = oa.responses.create(
        model="mxn-demo",
        input="Weather?",
        tools=[tool],  # type: ignore[list-item]
        tool_choice="required",
        max_output_tokens=120,
        temperature=0,
        extra_body={"logit_bias": bias},
    )
    (call,) = [o for o in called.output if o.type == "function_call"]
    assert call.name == "get_weather" and json.loads(call.arguments)["city"] in ("Paris", "Beijing")
    result = {"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}
    after = oa.responses.create(
        model="mxn-demo", previous_response_id=called.id, input=[result], max_output_tokens=8, temperature=0
    )
    assert after.output_text and not [o for o in after.output if o.type == "function_call"]

    claude = anthropic.Anthropic(base_url=base, api_key=key, max_retries=0, timeout=120)
    message = claude.messages.create(
        model="mxn-demo", max_tokens=12, system="Be brief.", messages=[{"role": "user", "content": "What is mxn?"}]
    )
    assert message.content[0].type == "text" and message.stop_reason in ("end_turn", "max_tokens")
    with claude.messages.stream(
        model="mxn-demo", max_tokens=12, messages=[{"role": "user", "content": "What is mxn?"}]
    ) as stream:
        streamed = stream.get_final_message()
    assert streamed.usage.output_tokens > 0
    asked = claude.messages.create(
        model="mxn-demo",
        max_tokens=120,
        tools=[{"name": "get_weather", "input_schema": WEATHER, "strict": True}],  # type: ignore[typeddict-item]
        tool_choice={"type": "any"},
        messages=[{"role": "user", "content": "Weather?"}],
        extra_body={"logit_bias": bias, "temperature": 0},  # this SDK no longer takes a temperature of its own
    )
    uses = [b for b in asked.content if b.type == "tool_use"]
    assert len(uses) == 1, asked.model_dump()
    use = uses[0]
    assert asked.stop_reason == "tool_use" and use.name == "get_weather" and use.input["city"] in ("Paris", "Beijing")  # type: ignore[index]
    reply = claude.messages.create(
        model="mxn-demo",
        max_tokens=8,
        tools=[{"name": "get_weather", "input_schema": WEATHER}],  # type: ignore[typeddict-item]
        messages=[
            {"role": "user", "content": "Weather?"},
            {"role": "assistant", "content": [use.model_dump()]},  # type: ignore[list-item]
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "sunny"}]},
        ],
        tool_choice={"type": "none"},
    )
    assert reply.content and reply.content[0].type == "text"


@pytest.mark.parametrize(
    ("param", "extra"),
    [
        ("n", {"n": 2, "temperature": 1.0}),
        ("logprobs", {"logprobs": True}),
        ("tools", {"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]}),
        ("response_format", {"response_format": {"type": "json_object"}}),
    ],
)
def test_what_llamacpp_lacks_gets_a_400_naming_it(cell: Cell, param: str, extra: dict[str, Any]) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        cell.client("llamacpp").chat.completions.create(model="mxn-demo", messages=MESSAGES, max_tokens=4, **extra)
    err = caught.value.body
    assert isinstance(err, dict) and err["param"] == param and err["code"] == "unsupported_parameter", err


def test_unpinned_requests_go_only_to_engines_that_take_their_parameters(cell: Cell) -> None:
    client = cell.client()
    for _ in range(6):  # llama.cpp cannot give two choices; routing never sends it such a request
        r = client.chat.completions.create(model="mxn-demo", messages=MESSAGES, max_tokens=4, n=2, temperature=1.0)
        assert len(r.choices) == 2


# --- the client tools straight against each engine ---


@pytest.mark.parametrize("engine", ENGINES)
def test_client_tools_work_straight_against_each_engine(cell: Cell, engine: str, tmp_path: Path) -> None:
    base = cell.endpoints[engine]["url"]
    server = ("--base-url", base, "--api-key", "none")
    chat = tool("chat", *server, "--model", "mxn-demo", stdin="What is mxn?\n")
    assert chat.returncode == 0 and "error" not in chat.stdout.lower(), chat.stdout + chat.stderr
    (tmp_path / "in.jsonl").write_text(
        "".join(json.dumps({"messages": [{"role": "user", "content": q}], "max_tokens": 8}) + "\n" for q in "abc")
    )
    batch = tool("batch", str(tmp_path / "in.jsonl"), str(tmp_path / "out.jsonl"), *server, "--model", "mxn-demo")
    assert batch.returncode == 0, batch.stdout + batch.stderr
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and all(r.get("error") is None for r in rows), rows
    sizes = ("--concurrency", "2", "--num-prompts", "4", "--input-len", "16", "--output-len", "8")
    bench = tool("bench", *server, "--plain", "--cell", "mxn-demo", *sizes, "--out", str(tmp_path / "bench"))
    assert bench.returncode == 0, bench.stdout + bench.stderr
    (result,) = json.loads((tmp_path / "bench" / "bench.json").read_text())["results"]
    assert result["completed"] == 4 and result["errors"] == 0, result["first_errors"]
    assert result["tpot_ms"]["p50"] is not None and result["output_throughput"] > 0


def test_bench_compares_the_three_engines_of_one_cell(cell: Cell, tmp_path: Path) -> None:
    ids = [str(cell.endpoints[e]["endpoint"]) for e in ENGINES]
    pins = [arg for i in ids for arg in ("--endpoint", i)]
    sizes = ("--concurrency", "2", "--num-prompts", "4", "--input-len", "16", "--output-len", "8")
    target = ("--base-url", cell.gateway.url, "--api-key", cell.key, "--cell", "mxn-demo@cpu")
    out = tool("bench", *target, *pins, *sizes, "--out", str(tmp_path))
    assert out.returncode == 0, out.stdout + out.stderr
    results = json.loads((tmp_path / "bench.json").read_text())["results"]
    assert [str(r["endpoint"]) for r in results] == ids
    assert [r["hardware"]["engine"] for r in results] == list(ENGINES)
    assert all(r["completed"] == 4 and r["errors"] == 0 for r in results), [r["first_errors"] for r in results]


# --- failure: vLLM killed under load ---


def test_vllm_killed_under_load_fails_no_non_stream_request(cell: Cell) -> None:
    client = cell.client()
    pid = cell.endpoints["vllm"]["pid"]
    outcomes = Counter[str]()
    lock = threading.Lock()

    def one(i: int) -> None:
        try:
            r = client.chat.completions.create(model="mxn-demo", messages=MESSAGES, max_tokens=24, temperature=0)
            outcome = "ok" if r.choices[0].message.content is not None else "empty"
        except openai.APIError as exc:
            outcome = f"failed: {exc!r}"
        with lock:
            outcomes[outcome] += 1

    def kill() -> None:
        wait_for(lambda: sum(outcomes.values()) >= 20, timeout=120, what="20 answers")
        os.killpg(pid, signal.SIGKILL)  # the API server and its EngineCore at once

    killer = threading.Thread(target=kill)
    killer.start()
    with ThreadPoolExecutor(6) as pool:
        list(pool.map(one, range(90)))
    killer.join(10)
    assert outcomes == {"ok": 90}, outcomes
    assert _pids_in_group(pid) == []

    # A stream that had started on vLLM when it died ends with an error event, and is charged for what streamed.
    # (The supervisor has started vLLM again: wait for it, then cut that one off mid-stream.) vLLM's CPU build
    # here may hold a stream's chunks back for a second or two and then send them at once, and a fresh one holds
    # back the first answer of each new batch size while it warms: warmed with a short request of the same
    # shape, eight choices of 2,000 tokens take it 7-9 s, so a kill at the first content lands while it is still
    # generating.
    fresh = wait_for(
        lambda: (i := _all_running(cell.gateway.url)) and i["vllm"]["pid"] != pid and i["vllm"], 600, "vLLM back"
    )
    pinned = cell.client("vllm")
    choices, most = 8, 2000
    shape = {"model": "mxn-demo", "messages": MESSAGES, "n": choices, "temperature": 1, "seed": 7}
    pinned.chat.completions.create(**shape, max_tokens=8, extra_body={"ignore_eos": True})
    got: list[str] = []
    with pytest.raises(openai.APIError):
        stream = pinned.chat.completions.create(**shape, max_tokens=most, stream=True, extra_body={"ignore_eos": True})
        for chunk in stream:
            content = [c.delta.content for c in chunk.choices if c.delta.content]
            if content and not got:
                os.killpg(fresh["pid"], signal.SIGKILL)
            got += content
    assert 1 <= len(got) < choices * most
    with cell.admin() as admin:

        def cut() -> list[dict[str, Any]]:
            rows = admin.get("/admin/usage", params={"limit": 5}).json()["data"]
            return [r for r in rows if r["status"] != 200]

        (row, *_) = wait_for(cut, what="the cut stream's usage record")
    # Charged for what streamed (counted again by the model's tokenizer, which may join a few pieces), not more.
    assert len(got) // 2 <= row["completion_tokens"] < choices * most, (len(got), row)


# --- undeploy: no process left ---


def test_undeploy_each_engine_leaves_no_process(cell: Cell) -> None:
    instances = wait_for(lambda: _all_running(cell.gateway.url), timeout=600, what="all engines running")
    for engine in ENGINES:
        mxn("undeploy", "mxn-demo@cpu", "--engine", engine, "--wait", "60", database_url=cell.db)
    for engine, instance in instances.items():
        wait_for(lambda pid=instance["pid"]: not _pids_in_group(pid), timeout=30, what=f"{engine} gone")
    assert _managed(cell.gateway.url) == []
    with cell.admin() as admin:
        # The deployment `mxn deploy` made goes with the last engine's managed deployment.
        wait_for(lambda: admin.get("/admin/deployments").json()["data"] == [], 10, "no deployment left")
