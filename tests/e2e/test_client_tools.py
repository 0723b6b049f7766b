"""`mxn bench`, `mxn batch` and `mxn chat` against a real `mxn serve` whose upstreams have known speeds."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pexpect
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from mxn.client import bench as benchmark
from mxn.client import stream
from tests.conftest import ROOT, Proc, Server, first_start_key, start_serve, start_upstream, wait_for

# The fake upstream sends one word per chunk, `--delay` seconds apart: 20 ms per token on nvidia, 40 on amd.
# `cpu` is left free for the endpoint tests' own cell.
CATALOG = """
chips:
  - {{id: cpu, name: CPU}}
models:
  - {{name: m, context_length: 4096, tokenizer: "tiktoken:cl100k_base"}}
deployments:
  - {{model: m, chip: nvidia, endpoints: [{{url: "{fast}"}}],
     disclosure: {{engine: vllm, engine_version: 0.9.2, chip_model: H800, count: 8, dtype: bfloat16}}}}
  - {{model: m, chip: amd, endpoints: [{{url: "{slow}"}}]}}
"""
NVIDIA_HARDWARE = {"engine": "vllm", "engine_version": "0.9.2", "chip_model": "H800", "count": 8, "dtype": "bfloat16"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("client-tools")
    fast = start_upstream(tmp, "sse", "--delay", "0.02")
    slow = start_upstream(tmp, "sse", "--delay", "0.04")
    (tmp / "catalog.yaml").write_text(CATALOG.format(fast=fast.url, slow=slow.url))
    db = f"sqlite+aiosqlite:///{tmp / 'mxn.db'}"
    proc = start_serve(tmp / "serve.log", db, "--catalog", str(tmp / "catalog.yaml"))
    try:
        # The first-start key belongs to `admin`, in the `unlimited` group: no rate limit in the way; being an
        # admin's, it also serves /admin and may be pinned to an endpoint.
        key = first_start_key(proc.output())
        yield Server(proc.url, key, key, db, proc, {})
    finally:
        proc.stop()
        fast.stop()
        slow.stop()


def mxn_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "mxn", *args]


def bench(server: Server, out: Path, *args: str, timeout: float = 300) -> dict[str, Any]:
    """`mxn bench` against the server, which must succeed; the bench.json it wrote."""
    return bench_at(server.url, server.key, out, *args, timeout=timeout)


def bench_at(base_url: str, key: str, out: Path, *args: str, timeout: float = 300) -> dict[str, Any]:
    cmd = mxn_cmd("bench", "--base-url", base_url, "--api-key", key, *args, "--out", str(out))
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    return dict(json.loads((out / "bench.json").read_text()))


QUICK = ("--concurrency", "1", "--num-prompts", "3", "--input-len", "8", "--output-len", "8")


def test_bench_measures_each_cells_speed_and_ranks_them(server: Server, tmp_path: Path) -> None:
    out = tmp_path / "bench"
    report = bench(
        server,
        out,
        "--cell",
        "m@nvidia",
        "--cell",
        "m@amd",
        "--concurrency",
        "1,4",
        "--num-prompts",
        "8",
        "--input-len",
        "24",
        "--output-len",
        "64",
        "--warmup",
        "1",
        "--max-duration",
        "60",
    )
    assert set(report) >= {"tool", "settings", "environment", "results"}
    assert "api_key" not in report["settings"] and server.key not in (out / "bench.json").read_text()
    rows = {(r["cell"], r["concurrency"]): r for r in report["results"]}
    assert set(rows) == {("m@nvidia", 1), ("m@nvidia", 4), ("m@amd", 1), ("m@amd", 4)}
    for (cell, _), r in rows.items():
        assert r["completed"] == 8 and r["errors"] == 0
        for metric in ("ttft_ms", "tpot_ms", "itl_ms"):
            assert set(r[metric]) == {"mean", "p50", "p90", "p99"}
        expected = 20.0 if cell == "m@nvidia" else 40.0
        # The upstream sleeps `expected` ms between tokens: never faster than that, a little slower when the
        # machine is busy (timer overshoot on a loaded 2-core box reached 10% on a 20 ms pace).
        assert 0.95 * expected <= r["tpot_ms"]["p50"] <= 1.2 * expected, (cell, r["tpot_ms"])
        assert r["output_throughput"] > 0 and r["request_throughput"] > 0
        # The hardware as the server discloses it (the catalogue's `disclosure:`), none for amd; no endpoint pinned.
        assert r["hardware"] == (NVIDIA_HARDWARE if cell == "m@nvidia" else {}) and r["endpoint"] is None
    for c in (1, 4):  # ranked right: the faster chip has the lower TPOT and the higher throughput
        assert rows[("m@nvidia", c)]["tpot_ms"]["p50"] < rows[("m@amd", c)]["tpot_ms"]["p50"]
        assert rows[("m@nvidia", c)]["output_throughput"] > rows[("m@amd", c)]["output_throughput"]
    assert rows[("m@nvidia", 4)]["output_throughput"] > 2 * rows[("m@nvidia", 1)]["output_throughput"]
    report_md = (out / "report.md").read_text()
    assert "| m@amd | — | 4 |" in report_md
    assert "| m@nvidia | vllm 0.9.2 · H800 ×8 · bfloat16 | 4 |" in report_md
    for png in ("throughput.png", "ttft.png", "tpot.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_batch_interrupted_and_rerun_answers_every_line_exactly_once(server: Server, tmp_path: Path) -> None:
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    lines = []
    for i in range(40):
        body = {"messages": [{"role": "user", "content": f"question number {i} please"}]}
        # Half in OpenAI's batch format, half bare bodies.
        lines.append(
            {"custom_id": f"q{i}", "method": "POST", "url": "/v1/chat/completions", "body": body} if i % 2 else body
        )
    src.write_text("".join(json.dumps(x) + "\n" for x in lines))
    args = mxn_cmd(
        "batch",
        str(src),
        str(out),
        "--base-url",
        f"{server.url}/v1",
        "--api-key",
        server.key,
        "-j",
        "2",
        "--model",
        "m@amd",
    )
    first = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(
            lambda: out.exists() and len(out.read_text().splitlines()) >= 8, 60, "8 answers written", interval=0.05
        )
    finally:
        first.send_signal(signal.SIGINT)  # Ctrl-C halfway
    _, stderr = first.communicate(timeout=30)
    assert first.returncode == 130, stderr
    assert "interrupted" in stderr
    kept = [json.loads(x) for x in out.read_text().splitlines()]  # every line whole
    assert 8 <= len(kept) < 40

    second = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert second.returncode == 0, second.stderr
    assert f"{len(kept)} already done" in second.stderr
    assert re.search(r"cost 0\.000\d+", second.stderr), second.stderr
    results = [json.loads(x) for x in out.read_text().splitlines()]
    ids = [r["custom_id"] for r in results]
    expected = [f"q{i}" if i % 2 else f"line-{i + 1}" for i in range(40)]
    assert sorted(ids) == sorted(expected) and len(ids) == len(set(ids))  # each once, none lost
    assert results[: len(kept)] == kept  # what the first run finished was neither redone nor changed
    for r in results:
        i = expected.index(r["custom_id"])
        assert r["response"]["body"]["choices"][0]["message"]["content"] == f"echo(1): question number {i} please"

    from mxn.client import load_results

    assert len(load_results(out)) == 40


def test_chat_streams_and_survives_ctrl_c(server: Server, tmp_path: Path) -> None:
    env = {**os.environ, "MXN_API_KEY": server.key, "TERM": "dumb"}
    child = pexpect.spawn(
        sys.executable,
        ["-m", "mxn", "chat", "--base-url", f"{server.url}/v1", "--model", "m@nvidia"],
        cwd=str(ROOT),
        env=env,
        encoding="utf-8",
        timeout=30,
    )
    try:
        child.expect_exact("you> ")
        child.sendline("hello there")
        child.expect_exact("echo(1): hello there")
        child.expect_exact("you> ")
        child.sendline("/model m@amd")
        child.expect_exact("(model: m@amd)")
        child.expect_exact("you> ")
        long = " ".join(f"word{i}" for i in range(200))  # 200 words at 40 ms: 8 s if left to finish
        child.sendline(long)
        child.expect_exact("ai> echo(3): word0 word1 word2")  # the answer is streaming (not the echo of the input)
        child.sendintr()  # Ctrl-C: the answer stops, the program goes on
        child.expect_exact("[stopped]", timeout=5)
        child.expect_exact("you> ")
        child.sendline("second turn")
        child.expect_exact("echo(5): second turn")  # the history: two turns before, this one
        child.expect_exact("you> ")
        child.sendline("/clear")
        child.expect_exact("you> ")
        child.sendline(f"/save {tmp_path / 'chat.json'}")
        child.expect_exact("saved to")
        child.expect_exact("you> ")
        child.sendeof()
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0
    saved = json.loads((tmp_path / "chat.json").read_text())
    assert saved["model"] == "m@amd" and saved["messages"] == []


def test_bench_from_a_yaml_plan_at_a_poisson_rate(server: Server, tmp_path: Path) -> None:
    plan = tmp_path / "plan.yaml"
    plan.write_text(
        "cells: [m@nvidia]\nrequest_rate: 20\nnum_prompts: 10\ninput_len: 8\nwarmup: 0\ndataset: synthetic\n"
    )
    report = bench(server, tmp_path / "bench", "--plan", str(plan), "--num-prompts", "12", timeout=120)
    (row,) = report["results"]
    assert row["cell"] == "m@nvidia" and row["request_rate"] == 20 and row["concurrency"] is None
    assert row["completed"] == 12  # the command line's --num-prompts wins over the plan's
    assert report["settings"]["input_len"] == 8
    bad = tmp_path / "bad.yaml"
    bad.write_text("cells: [m@nvidia]\nconcurency: [1]\n")
    refused = subprocess.run(
        mxn_cmd("bench", "--base-url", server.url, "--plan", str(bad)),
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert refused.returncode == 2 and "concurency" in refused.stderr


# --- JSON bodies are declared JSON: vLLM refuses anything else with 400, llama.cpp's server with 500 ---
@pytest.fixture(scope="module")
def strict(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    """A fake upstream that, like vLLM, answers 400 to a POST not sent as `application/json`."""
    proc = start_upstream(tmp_path_factory.mktemp("strict"), "sse", "--json-only")
    try:
        yield proc
    finally:
        proc.stop()


def test_strict_fake_refuses_a_body_not_declared_json(strict: Proc) -> None:
    body = json.dumps({"model": "fake", "messages": [{"role": "user", "content": "hi"}]})
    r = httpx.post(f"{strict.url}/chat/completions", content=body, timeout=10)
    assert r.status_code == 400 and "Only 'application/json' is allowed" in r.text
    ok = httpx.post(f"{strict.url}/chat/completions", content=body, headers={"content-type": "application/json"})
    assert ok.status_code == 200


def test_chat_sends_json_a_strict_server_accepts(strict: Proc) -> None:
    done = subprocess.run(
        mxn_cmd("chat", "--base-url", strict.url, "--api-key", "sk-any", "--model", "fake"),
        input="hello there\n/quit\n",
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    assert "ai> echo(1): hello there" in done.stdout and "error" not in done.stdout, done.stdout


def test_batch_sends_json_a_strict_server_accepts(strict: Proc, tmp_path: Path) -> None:
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"q{i}"}]}) + "\n" for i in range(3)))
    done = subprocess.run(
        mxn_cmd("batch", str(src), str(out), "--base-url", strict.url, "--api-key", "sk-any", "--model", "fake"),
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    answers = sorted(r["response"]["body"]["choices"][0]["message"]["content"] for r in map(json.loads, out.open()))
    assert answers == ["echo(1): q0", "echo(1): q1", "echo(1): q2"]


def test_bench_plain_sends_json_a_strict_server_accepts(strict: Proc, tmp_path: Path) -> None:
    report = bench_at(strict.url, "sk-any", tmp_path / "bench", "--plain", "--cell", "fake", *QUICK, "--warmup", "1")
    (row,) = report["results"]
    assert row["completed"] == 3 and row["errors"] == 0, row["first_errors"]
    # A plain OpenAI server discloses no hardware: its /models entry is all it says of itself.
    assert row["hardware"] == {"owned_by": "fake"} and row["endpoint"] is None


def test_bench_plain_against_mxn_v1_takes_the_hardware_from_its_model_list(server: Server, tmp_path: Path) -> None:
    report = bench_at(f"{server.url}/v1", server.key, tmp_path / "bench", "--plain", "--cell", "m@nvidia", *QUICK)
    (row,) = report["results"]
    assert row["completed"] == 3 and row["hardware"] == NVIDIA_HARDWARE


def test_bench_hardware_is_empty_with_a_note_when_the_server_will_not_say() -> None:
    settings = benchmark.Settings(base_url="http://gateway.test", api_key="sk-x", cells=["m@nvidia"])
    notes: list[str] = []

    async def ask(status: int, body: bytes) -> dict[str, Any]:
        # A real HTTP server on 127.0.0.1 that gives the same answer to everything.
        async def answer(_request: web.Request) -> web.Response:
            return web.Response(status=status, body=body, content_type="application/json")

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", answer)
        async with TestServer(app, host="127.0.0.1") as site, stream.session(10, 2) as http:
            s = benchmark.Settings(base_url=str(site.make_url("")), api_key="sk-x", cells=settings.cells)
            return await benchmark.hardware(s, http, benchmark.Target("m@nvidia"), notes.append)

    assert asyncio.run(ask(500, b"boom")) == {}
    assert asyncio.run(ask(200, b"not json")) == {}
    assert asyncio.run(ask(200, b'["not", "a", "mapping"]')) == {}
    assert len(notes) == 3 and all(n.startswith("m@nvidia: no hardware disclosure") for n in notes), notes


# --- --endpoint: one cell measured through each of its endpoints in turn, each pinned by an admin key ---
def _streams(upstream: Proc) -> int:
    return int(httpx.get(upstream.url.removesuffix("/v1") + "/_streams", timeout=10).json()["completed"])


def test_bench_endpoint_measures_each_pinned_endpoint_with_its_hardware(server: Server, tmp_path: Path) -> None:
    one, two = start_upstream(tmp_path, "sse"), start_upstream(tmp_path, "sse")
    # Two engines on the same chip, each with its own disclosure; the cell declares one for itself as a whole.
    vllm = {"engine": "vllm", "engine_version": "0.9.2", "chip_model": "Xeon", "count": 2, "dtype": "bfloat16"}
    llamacpp = {"engine": "llama.cpp", "engine_version": "b5000", "chip_model": "Xeon", "count": 1, "dtype": "q4_0"}
    cell_wide = {"chip_model": "Xeon", "note": "two engines side by side"}
    try:
        # The second endpoint takes no traffic of its own (weight 0): only a pin reaches it.
        endpoints = {"url": one.url, "hardware": vllm}, {"url": two.url, "weight": 0, "hardware": llamacpp}
        with server.temporary_cell("m", "cpu", *endpoints) as dep, server.admin() as admin:
            r = admin.patch(f"/admin/deployments/{dep['id']}", json={"disclosure": cell_wide})
            assert r.status_code == 200, r.text
            listed = admin.get("/admin/endpoints").json()["data"]
            ids = {e["url"]: e["id"] for e in listed if e["deployment"] == "m@cpu"}
            a, b = ids[one.url], ids[two.url]
            # Unpinned, the cell answers for itself.
            details = admin.post("/maas/m/cpu/get_model_details", json={}).json()
            assert details["hardware"] == cell_wide
            before = _streams(one), _streams(two)
            out = tmp_path / "bench"
            pins = ("--endpoint", str(a), "--endpoint", str(b))
            report = bench(server, out, "--cell", "m@cpu", *pins, *QUICK, "--warmup", "1")
            after = _streams(one), _streams(two)
    finally:
        one.stop()
        two.stop()
    rows = report["results"]
    assert [(r["cell"], r["endpoint"]) for r in rows] == [("m@cpu", a), ("m@cpu", b)]
    for r in rows:
        assert r["completed"] == 3 and r["errors"] == 0, r["first_errors"]
    assert rows[0]["hardware"] == {**vllm, "endpoint": a} and rows[1]["hardware"] == {**llamacpp, "endpoint": b}
    # Each target's warm-up and prompts went to its own endpoint, and only there.
    assert (after[0] - before[0], after[1] - before[1]) == (4, 4)
    assert report["settings"]["endpoints"] == [a, b]
    report_md = (out / "report.md").read_text()
    assert f"| m@cpu #{a} | vllm 0.9.2 · Xeon ×2 · bfloat16 | 1 |" in report_md
    assert f"| m@cpu #{b} | llama.cpp b5000 · Xeon ×1 · q4_0 | 1 |" in report_md


def test_bench_endpoint_is_refused_with_several_cells_or_plain(tmp_path: Path) -> None:
    two_cells = benchmark.Settings(base_url="http://x", api_key="sk-a", cells=["m@nvidia", "m@amd"], endpoints=[3])
    with pytest.raises(ValueError, match="exactly one --cell"):
        two_cells.check()
    plain = benchmark.Settings(base_url="http://x", api_key="sk-a", cells=["m"], endpoints=[3], plain=True)
    with pytest.raises(ValueError, match="--plain"):
        plain.check()
    keyless = benchmark.Settings(base_url="http://x", api_key=None, cells=["m@nvidia"], endpoints=[3])
    with pytest.raises(ValueError, match="admin --api-key"):
        keyless.check()
    plan = tmp_path / "plan.yaml"
    plan.write_text("cells: [m@nvidia]\nendpoints: [3, 7]\n")
    assert benchmark.load_plan(plan)["endpoints"] == [3, 7]
    args = ["--base-url", "http://127.0.0.1:9", "--api-key", "sk-a", "--endpoint", "3"]
    refused = subprocess.run(
        mxn_cmd("bench", *args, "--cell", "m@nvidia", "--cell", "m@amd"), capture_output=True, text=True, timeout=60
    )
    assert refused.returncode == 2 and "exactly one --cell" in refused.stderr, refused.stderr
