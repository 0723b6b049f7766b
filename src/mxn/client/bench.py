"""`mxn bench`: the same fixed-seed workload to several model×chip cells, measured like vLLM's benchmark_serving.

A target is a cell, or with `--endpoint` one endpoint of a cell (an admin key pinned to it: `sk-...-ID`), so
engines on the same chip compare as chips do. Each result carries the hardware the server discloses for it.

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

import aiohttp
import yaml

from mxn import __version__
from mxn.client.bench_report import hardware_note as _hardware_note  # noqa: F401  (bench/engines.py uses it)
from mxn.client.bench_report import target_name
from mxn.client.bench_report import write as write
from mxn.client.stream import StreamResult, headers, session, stream_chat

WORDS = (
    "the of and to in is that for it as with was on be by at this are from or have an they which one you were "
    "all we there can their has been if more when will would who so no 模型 芯片 推理 服务 计算 数据 速度 性能"
).split()


@dataclass
class Settings:
    base_url: str
    api_key: str | None
    cells: list[str]
    endpoints: list[int] = field(default_factory=list)  # endpoint ids of the one cell, each measured alone
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
        if self.endpoints:
            if self.plain:
                raise ValueError("--endpoint pins an endpoint of an mxn cell; it cannot be used with --plain")
            if len(self.cells) != 1:
                raise ValueError(
                    f"--endpoint measures endpoints of one cell; give exactly one --cell, not {len(self.cells)}"
                )
            if not self.api_key:
                raise ValueError("--endpoint needs an admin --api-key: the endpoint is pinned by that key")


@dataclass(frozen=True)
class Target:
    """What one set of result rows measures: a cell, or one endpoint of it."""

    cell: str
    endpoint: int | None = None

    @property
    def name(self) -> str:
        return target_name(self.cell, self.endpoint)

    def key(self, api_key: str | None) -> str | None:
        """The key to send: an admin key `sk-...` pinned to an endpoint is `sk-...-ID`."""
        return api_key if self.endpoint is None or not api_key else f"{api_key}-{self.endpoint}"


def targets(s: Settings) -> list[Target]:
    if s.endpoints:
        return [Target(s.cells[0], e) for e in s.endpoints]
    return [Target(c) for c in s.cells]


def load_plan(path: str | Path) -> dict[str, Any]:
    """A YAML plan: `cells: [...]` and any of the settings (`concurrency: [1, 8]`, `output_len: 256`, ...)."""
    data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    known = {f.name for f in fields(Settings)} - {"base_url", "api_key"}
    if not isinstance(data, dict) or set(data) - known:
        unknown = sorted(set(data) - known) if isinstance(data, dict) else data
        raise ValueError(f"{path}: unknown keys {unknown}; a plan may hold {sorted(known)}")
    for name in ("concurrency", "endpoints"):
        if isinstance(data.get(name), int):
            data[name] = [data[name]]
    if not all(isinstance(e, int) for e in data.get("endpoints") or ()):
        raise ValueError(f"{path}: endpoints is a list of endpoint ids, e.g. [3, 7]")
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


async def hardware(s: Settings, http: aiohttp.ClientSession, target: Target, say: Any = print) -> dict[str, Any]:
    """What the server discloses about the hardware behind a target; {} (and a note) when it will not say."""
    base = s.base_url.rstrip("/")
    try:
        if s.plain:
            async with http.get(f"{base}/models", headers=headers(s.api_key), raise_for_status=True) as r:
                listed = await r.json(content_type=None)
            entry = next((m for m in listed.get("data") or () if m.get("id") == target.cell), None)
            if entry is None:
                say(f"{target.name}: no hardware disclosure: {base}/models does not list it")
                return {}
            if isinstance(entry.get("hardware"), dict):
                return dict(entry["hardware"])  # mxn's /v1/models discloses it per cell
            # All a plain OpenAI server tells of itself is in its model entry (vLLM: owned_by, root, max_model_len).
            return {k: v for k, v in entry.items() if k not in ("id", "object", "created")}
        model, _, chip = target.cell.partition("@")
        async with http.post(
            f"{base}/maas/{model}/{chip}/get_model_details",
            data=b"{}",
            headers=headers(target.key(s.api_key)),
            raise_for_status=True,
        ) as r:
            found = (await r.json(content_type=None)).get("hardware")
        disclosed = dict(found) if isinstance(found, dict) else {}
        if target.endpoint is not None and disclosed.get("endpoint") != target.endpoint:
            say(
                f"{target.name}: the server did not confirm the pin (not an endpoint of this cell, or not an admin key)"
            )
        return disclosed
    except (aiohttp.ClientError, TimeoutError, ValueError, AttributeError) as exc:
        say(f"{target.name}: no hardware disclosure: {type(exc).__name__}: {str(exc)[:200]}")
        return {}


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
    s: Settings,
    http: aiohttp.ClientSession,
    url: str,
    key: str | None,
    model: str,
    texts: list[str],
    concurrency: int | None,
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
            # Every answer runs to `max_tokens`: vLLM and mxn's engine honour `ignore_eos`, llama.cpp's server
            # `min_tokens` (vLLM too); a server that knows neither ignores them.
            "ignore_eos": True,
            "min_tokens": s.output_len,
        }

    start = time.perf_counter()
    if concurrency is not None:
        queue = list(reversed(texts))

        async def worker() -> None:
            while queue and time.perf_counter() < deadline:
                results.append(await stream_chat(http, url, key, body(queue.pop())))

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    else:
        assert s.request_rate
        tasks = []
        for text in texts:
            if time.perf_counter() >= deadline:
                break
            tasks.append(asyncio.create_task(stream_chat(http, url, key, body(text))))
            await asyncio.sleep(rng.expovariate(s.request_rate))
        results = list(await asyncio.gather(*tasks))
    return results, time.perf_counter() - start


def _measure(
    s: Settings, target: Target, load: str, results: list[StreamResult], span: float, count: Counter
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
    # A stream that ended with no content is counted as failed too (TTFT has no meaning for it): say so.
    errors = [r.error or f"no content (finish_reason {r.finish_reason})" for r in results if r.error or r.ttft is None]
    return {
        "cell": target.cell,
        "endpoint": target.endpoint,
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
    async with session(s.timeout, max(s.concurrency) * 2 + 8) as http:
        for target in targets(s):
            url, model = cell_url(s, target.cell)
            key = target.key(s.api_key)
            disclosed = await hardware(s, http, target, say)
            warm, _ = await _load(s, http, url, key, model, texts[: s.warmup], 1)  # not measured
            if s.warmup and not any(r.ok for r in warm):
                say(f"{target.name}: warm-up failed: {warm[0].error}")
            for load in loads:
                concurrency = int(load) if load.isdigit() else None
                got, span = await _load(s, http, url, key, model, texts, concurrency)
                row = _measure(s, target, load, got, span, count)
                row["hardware"] = disclosed
                results.append(row)
                say(
                    f"{target.name:<32} {load:>8}  TTFT p50 {row['ttft_ms']['p50']} ms  "
                    f"TPOT p50 {row['tpot_ms']['p50']} ms  {row['output_throughput']} tok/s  {row['completed']} ok  "
                    f"{row['errors']} errors"
                )
    return {
        "tool": f"mxn {__version__} bench",
        "settings": {k: v for k, v in vars(s).items() if k != "api_key"},
        "environment": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "machine": platform.machine(),
            "cpus": os.cpu_count(),
            "aiohttp": aiohttp.__version__,
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        },
        "results": results,
    }
