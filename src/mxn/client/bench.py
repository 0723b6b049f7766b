"""`mxn bench`: the same fixed-seed workload to several model×chip cells, measured like vLLM's benchmark_serving.

Per request: TTFT (sending → first content), TPOT ((latency − TTFT) / (output tokens − 1)), ITL (every gap
between content chunks), end-to-end latency. Per cell and load: their mean, p50, p90 and p99; output tokens/s
and requests/s over the measured span; goodput (requests/s that met the SLO); errors. Output tokens are
counted by the model's tokenizer when one is given (`--tokenizer`), else taken from the server's `usage`,
else the number of content chunks.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import random
import statistics
import time
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any

import httpx
import yaml

from mxn import __version__
from mxn.client.stream import StreamResult, stream_chat

WORDS = (
    "the of and to in is that for it as with was on be by at this are from or have an they which one you were "
    "all we there can their has been if more when will would who so no 模型 芯片 推理 服务 计算 数据 速度 性能"
).split()


@dataclass
class Settings:
    base_url: str
    api_key: str | None
    cells: list[str]
    concurrency: list[int] = field(default_factory=lambda: [1, 4, 16])
    request_rate: float | None = None  # Poisson arrivals per second instead of a closed loop
    num_prompts: int = 50
    input_len: int = 128
    output_len: int = 128
    dataset: str = "synthetic"  # or "bundled": real Chinese and English prompts shipped with mxn
    seed: int = 0
    warmup: int = 2
    max_duration: float = 120.0
    slo_ttft_ms: float = 2000.0
    slo_tpot_ms: float = 200.0
    plain: bool = False
    tokenizer: str | None = None
    timeout: float = 300.0

    def check(self) -> None:
        if not self.cells:
            raise ValueError("no cell to measure: give --cell MODEL@CHIP (or cells: in --plan)")
        if self.dataset not in ("synthetic", "bundled"):
            raise ValueError("--dataset is synthetic or bundled")
        if not self.concurrency or min(self.concurrency) < 1:
            raise ValueError("--concurrency is a list of positive numbers, e.g. 1,4,16")
        for cell in self.cells:
            cell_url(self, cell)


def load_plan(path: str | Path) -> dict[str, Any]:
    """A YAML plan: `cells: [...]` and any of the settings (`concurrency: [1, 8]`, `output_len: 256`, ...)."""
    data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    known = {f.name for f in fields(Settings)} - {"base_url", "api_key"}
    if not isinstance(data, dict) or set(data) - known:
        unknown = sorted(set(data) - known) if isinstance(data, dict) else data
        raise ValueError(f"{path}: unknown keys {unknown}; a plan may hold {sorted(known)}")
    if isinstance(data.get("concurrency"), int):
        data["concurrency"] = [data["concurrency"]]
    return data


def prompts(s: Settings) -> list[str]:
    rng = random.Random(s.seed)
    if s.dataset == "bundled":
        bundled = json.loads(resources.files("mxn.client").joinpath("prompts.json").read_text(encoding="utf-8"))
        return [bundled[i % len(bundled)] for i in range(s.num_prompts)]
    return [" ".join(rng.choice(WORDS) for _ in range(s.input_len)) for _ in range(s.num_prompts)]


def cell_url(s: Settings, cell: str) -> tuple[str, str]:
    """(URL, model) for a cell: the GenStudio form, or `--plain` for any OpenAI server."""
    base = s.base_url.rstrip("/")
    if s.plain:
        return f"{base}/chat/completions", cell
    model, _, chip = cell.partition("@")
    if not chip:
        raise ValueError(f"a cell is MODEL@CHIP, not {cell!r} (or pass --plain)")
    return f"{base}/maas/{model}/{chip}/chat/completions", model


def _summary(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"mean": None, "p50": None, "p90": None, "p99": None}
    ordered = sorted(values)

    def pct(p: float) -> float:
        k = (len(ordered) - 1) * p
        lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
        return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)

    return {"mean": statistics.fmean(values), "p50": pct(0.5), "p90": pct(0.9), "p99": pct(0.99)}


def _ms(d: dict[str, float | None]) -> dict[str, float | None]:
    return {k: None if v is None else round(v * 1000, 3) for k, v in d.items()}


class Counter:
    def __init__(self, spec: str | None) -> None:
        self.tok = None
        if spec:
            from mxn.tokens import get_tokenizer

            self.tok = get_tokenizer(spec, None)

    def output_tokens(self, r: StreamResult) -> int:
        if self.tok is not None:
            return self.tok.count(r.text)
        return r.completion_tokens if r.completion_tokens is not None else r.chunks


async def _load(
    s: Settings, http: httpx.AsyncClient, url: str, model: str, texts: list[str], concurrency: int | None
) -> tuple[list[StreamResult], float]:
    """Send every prompt: `concurrency` at a time, or at Poisson arrivals; stop issuing at max_duration."""
    results: list[StreamResult] = []
    rng = random.Random(s.seed + 1)
    deadline = time.perf_counter() + s.max_duration

    def body(text: str) -> dict[str, Any]:
        return {
            "model": model,
            "messages": [{"role": "user", "content": text}],
            "max_tokens": s.output_len,
            "temperature": 0,
            "ignore_eos": True,  # vLLM and mxn's engine honour it; others ignore it
        }

    start = time.perf_counter()
    if concurrency is not None:
        queue = list(reversed(texts))

        async def worker() -> None:
            while queue and time.perf_counter() < deadline:
                results.append(await stream_chat(http, url, s.api_key, body(queue.pop())))

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    else:
        assert s.request_rate
        tasks = []
        for text in texts:
            if time.perf_counter() >= deadline:
                break
            tasks.append(asyncio.create_task(stream_chat(http, url, s.api_key, body(text))))
            await asyncio.sleep(rng.expovariate(s.request_rate))
        results = list(await asyncio.gather(*tasks))
    return results, time.perf_counter() - start


def _measure(
    s: Settings, cell: str, load: str, results: list[StreamResult], span: float, count: Counter
) -> dict[str, Any]:
    ok = [r for r in results if r.ok and r.ttft is not None]
    ttft = [r.ttft for r in ok if r.ttft is not None]
    tpot, itl, good = [], [], 0
    outputs = 0
    for r in ok:
        n = count.output_tokens(r)
        outputs += n
        itl.extend(r.itl)
        per_token = (r.latency - (r.ttft or 0)) / (n - 1) if n > 1 else None
        if per_token is not None:
            tpot.append(per_token)
        if (r.ttft or 0) * 1000 <= s.slo_ttft_ms and (per_token is None or per_token * 1000 <= s.slo_tpot_ms):
            good += 1
    errors = [r.error for r in results if not r.ok]
    return {
        "cell": cell,
        "concurrency": int(load) if load.isdigit() else None,
        "request_rate": None if load.isdigit() else s.request_rate,
        "completed": len(ok),
        "errors": len(results) - len(ok),
        "error_rate": round((len(results) - len(ok)) / len(results), 4) if results else 0.0,
        "first_errors": errors[:3],
        "ttft_ms": _ms(_summary(ttft)),
        "tpot_ms": _ms(_summary(tpot)),
        "itl_ms": _ms(_summary(itl)),
        "e2e_latency_ms": _ms(_summary([r.latency for r in ok])),
        "output_tokens": outputs,
        "output_throughput": round(outputs / span, 3) if span > 0 else None,
        "request_throughput": round(len(ok) / span, 3) if span > 0 else None,
        "goodput": round(good / span, 3) if span > 0 else None,
        "duration_s": round(span, 3),
        "_samples": {"ttft_ms": [x * 1000 for x in ttft], "tpot_ms": [x * 1000 for x in tpot]},
    }


async def run(s: Settings, say: Any = print) -> dict[str, Any]:
    texts = prompts(s)
    count = Counter(s.tokenizer)
    loads = [str(c) for c in s.concurrency] if s.request_rate is None else [f"rate={s.request_rate}"]
    results = []
    limits = httpx.Limits(max_connections=max(s.concurrency) * 2 + 8)
    async with httpx.AsyncClient(timeout=s.timeout, limits=limits, trust_env=False) as http:
        for cell in s.cells:
            url, model = cell_url(s, cell)
            warm, _ = await _load(s, http, url, model, texts[: s.warmup], 1)  # not measured
            if s.warmup and not any(r.ok for r in warm):
                say(f"{cell}: warm-up failed: {warm[0].error}")
            for load in loads:
                concurrency = int(load) if load.isdigit() else None
                got, span = await _load(s, http, url, model, texts, concurrency)
                row = _measure(s, cell, load, got, span, count)
                results.append(row)
                say(
                    f"{cell:<32} {load:>8}  TTFT p50 {row['ttft_ms']['p50']} ms  TPOT p50 {row['tpot_ms']['p50']} ms  "
                    f"{row['output_throughput']} tok/s  {row['completed']} ok  {row['errors']} errors"
                )
    return {
        "tool": f"mxn {__version__} bench",
        "settings": {k: v for k, v in vars(s).items() if k != "api_key"},
        "environment": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "machine": platform.machine(),
            "cpus": os.cpu_count(),
            "httpx": httpx.__version__,
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        },
        "results": results,
    }


def write(report: dict[str, Any], out: str | Path) -> list[Path]:
    """DIR/bench.json, DIR/report.md and the PNG plots; the files written."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    samples = [r.pop("_samples") for r in report["results"]]
    (out / "bench.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    (out / "report.md").write_text(markdown(report), encoding="utf-8")
    return [out / "bench.json", out / "report.md", *plots(report, samples, out)]


def markdown(report: dict[str, Any]) -> str:
    s = report["settings"]
    lines = [
        f"# mxn bench — {report['environment']['started']}",
        "",
        f"`{report['tool']}` against `{s['base_url']}`; {s['num_prompts']} {s['dataset']} prompts "
        f"(input {s['input_len']}, output {s['output_len']} tokens, seed {s['seed']}); "
        f"SLO: TTFT ≤ {s['slo_ttft_ms']} ms, TPOT ≤ {s['slo_tpot_ms']} ms.",
        "",
        "| cell | load | TTFT p50 / p99 ms | TPOT p50 / p99 ms | ITL p50 / p99 ms | output tok/s | req/s | goodput "
        "| ok | errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["results"]:
        load = r["concurrency"] if r["concurrency"] is not None else f"{r['request_rate']}/s"
        lines.append(
            f"| {r['cell']} | {load} | {r['ttft_ms']['p50']} / {r['ttft_ms']['p99']} | {r['tpot_ms']['p50']} / "
            f"{r['tpot_ms']['p99']} | {r['itl_ms']['p50']} / {r['itl_ms']['p99']} | {r['output_throughput']} | "
            f"{r['request_throughput']} | {r['goodput']} | {r['completed']} | {r['errors']} |"
        )
    env = report["environment"]
    lines += ["", f"Client: Python {env['python']} on {env['platform']} ({env['cpus']} CPUs).", ""]
    return "\n".join(lines)


def plots(report: dict[str, Any], samples: list[dict[str, list[float]]], out: Path) -> list[Path]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []  # plots need the `bench` extra (matplotlib); JSON and markdown are written regardless
    written = []
    cells = list(dict.fromkeys(r["cell"] for r in report["results"]))
    fig, ax = plt.subplots(figsize=(7, 4))
    for cell in cells:
        rows = [r for r in report["results"] if r["cell"] == cell and r["concurrency"] is not None]
        if rows:
            ax.plot([r["concurrency"] for r in rows], [r["output_throughput"] for r in rows], marker="o", label=cell)
    ax.set(xlabel="concurrency", ylabel="output tokens/s", title="Throughput vs concurrency")
    ax.set_xscale("log", base=2)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "throughput.png", dpi=110)
    written.append(out / "throughput.png")
    plt.close(fig)
    for metric, title in (("ttft_ms", "TTFT (ms)"), ("tpot_ms", "TPOT (ms)")):
        fig, ax = plt.subplots(figsize=(7, 4))
        for cell in cells:
            values = [
                v for r, smp in zip(report["results"], samples, strict=True) if r["cell"] == cell for v in smp[metric]
            ]
            if values:
                ax.hist(values, bins=30, alpha=0.55, label=cell)
        ax.set(xlabel=title, ylabel="requests", title=f"{title} distribution per cell (all loads)")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / f"{metric.removesuffix('_ms')}.png", dpi=110)
        written.append(out / f"{metric.removesuffix('_ms')}.png")
        plt.close(fig)
    return written
