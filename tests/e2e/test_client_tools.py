"""`mxn bench`, `mxn batch` and `mxn chat` against a real `mxn serve` whose upstreams have known speeds."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pexpect
import pytest

from tests.conftest import ROOT, Server, first_start_key, start_serve, start_upstream

# The fake upstream sends one word per chunk, `--delay` seconds apart: 20 ms per token on nvidia, 40 on amd.
CATALOG = """
models:
  - {{name: m, context_length: 4096, tokenizer: "tiktoken:cl100k_base"}}
deployments:
  - {{model: m, chip: nvidia, endpoints: [{{url: "{fast}"}}]}}
  - {{model: m, chip: amd, endpoints: [{{url: "{slow}"}}]}}
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("client-tools")
    fast = start_upstream(tmp, "sse", "--delay", "0.02")
    slow = start_upstream(tmp, "sse", "--delay", "0.04")
    (tmp / "catalog.yaml").write_text(CATALOG.format(fast=fast.url, slow=slow.url))
    db = f"sqlite+aiosqlite:///{tmp / 'mxn.db'}"
    proc = start_serve(tmp / "serve.log", db, "--catalog", str(tmp / "catalog.yaml"))
    try:
        # The first-start key belongs to `admin`, in the `unlimited` group: no rate limit in the way.
        yield Server(proc.url, first_start_key(proc.output()), "", db, proc, {})
    finally:
        proc.stop()
        fast.stop()
        slow.stop()


def mxn_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "mxn", *args]


def bench(server: Server, out: Path, *args: str, timeout: float = 300) -> dict[str, Any]:
    """`mxn bench` against the server, which must succeed; the bench.json it wrote."""
    cmd = mxn_cmd("bench", "--base-url", server.url, "--api-key", server.key, *args, "--out", str(out))
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    return dict(json.loads((out / "bench.json").read_text()))


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
    for c in (1, 4):  # ranked right: the faster chip has the lower TPOT and the higher throughput
        assert rows[("m@nvidia", c)]["tpot_ms"]["p50"] < rows[("m@amd", c)]["tpot_ms"]["p50"]
        assert rows[("m@nvidia", c)]["output_throughput"] > rows[("m@amd", c)]["output_throughput"]
    assert rows[("m@nvidia", 4)]["output_throughput"] > 2 * rows[("m@nvidia", 1)]["output_throughput"]
    assert "| m@amd | 4 |" in (out / "report.md").read_text()
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
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (not out.exists() or len(out.read_text().splitlines()) < 8):
        time.sleep(0.05)
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
