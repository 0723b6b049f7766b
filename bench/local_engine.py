"""Throughput of the embedded engine's scheduler against plain `model.generate`, in one run.

    python bench/local_engine.py                       # the demo model on the CPU (built if missing)
    python bench/local_engine.py --device cuda --model PATH --concurrency 1,64 --bandwidth-gbs 3350

Every request is greedy with a fixed output length (EOS ignored), so both sides do the same work, and
both drive torch from a worker thread, as the server does (the scheduler's thread; one thread for
`generate`). Rounds alternate the two sides and medians are reported: this machine is noisy.
Writes bench/results/local_engine.json and prints a table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

from mxn import __version__
from mxn.catalog.defaults import demo_path
from mxn.engines.local import loader
from mxn.engines.local.sampling import SamplingParams
from mxn.engines.local.scheduler import DELTA, FINISH, Scheduler, Seq, new_job
from mxn.engines.local.text import Detokenizer, StopMatcher

PROMPTS = [
    "你是谁?",
    "Hello",
    "What is mxn?",
    "什么是 M×N?",
    "Tell me a joke.",
    "How do I compare chips?",
    "支持哪些芯片?",
    "How do I create an API key?",
]


def prompt_ids(tokenizer: Any, i: int) -> list[int]:
    messages = [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def bench_generate(
    model: Any, tokenizer: Any, device: torch.device, requests: int, out_len: int, batch: int = 1
) -> dict[str, float]:
    """Plain transformers, `batch` prompts per generate() call (1 = one request at a time)."""
    tokenizer.padding_side = "left"
    tokens, start = 0, time.perf_counter()
    for first in range(0, requests, batch):
        texts = [tokenizer.decode(prompt_ids(tokenizer, i)) for i in range(first, min(first + batch, requests))]
        enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
        with torch.no_grad():
            out = model.generate(
                **enc,
                max_new_tokens=out_len,
                min_new_tokens=out_len,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
            )
        tokens += (out.shape[1] - enc["input_ids"].shape[1]) * out.shape[0]
    elapsed = time.perf_counter() - start
    return {
        "tokens": tokens,
        "seconds": elapsed,
        "tokens_per_s": tokens / elapsed,
        "ms_per_token_per_request": 1000 * elapsed * batch / tokens,
    }


async def bench_scheduler(
    scheduler: Scheduler, tokenizer: Any, concurrency: int, requests: int, out_len: int
) -> dict[str, float]:
    """`concurrency` clients in a closed loop, `requests` in all."""
    todo = list(range(requests))
    tpots: list[float] = []
    tokens = 0

    async def client() -> None:
        nonlocal tokens
        while todo:
            i = todo.pop()
            job = new_job()
            job.seqs.append(
                Seq(
                    job,
                    0,
                    torch.tensor(prompt_ids(tokenizer, i)),
                    SamplingParams(temperature=0),
                    out_len,
                    frozenset(),
                    Detokenizer(tokenizer),
                    StopMatcher([]),
                )
            )
            scheduler.submit(job)
            first = last = None
            while True:
                kind, _index, payload = await job.events.get()
                now = time.perf_counter()
                if kind == DELTA:
                    first = first or now
                    last = now
                elif kind == FINISH:
                    tokens += payload[1]
                    if first and last and payload[1] > 1:
                        tpots.append((last - first) / (payload[1] - 1))
                    break

    start = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    elapsed = time.perf_counter() - start
    return {
        "concurrency": concurrency,
        "tokens": tokens,
        "seconds": elapsed,
        "tokens_per_s": tokens / elapsed,
        # Wall time per output token of one request, prefill included: comparable with generate's figure.
        "ms_per_token_per_request": 1000 * elapsed * concurrency / tokens,
        "tpot_ms_mean": 1000 * statistics.fmean(tpots) if tpots else float("nan"),
    }


def _median(runs: list[dict[str, float]]) -> dict[str, float]:
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


def weight_bytes(model: Any) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


async def scheduler_levels(
    model: Any, tokenizer: Any, device: torch.device, levels: list[int], requests: int, out_len: int
) -> list[dict[str, float]]:
    scheduler = Scheduler(model, device, max_batch=max(levels), max_waiting=4 * max(levels) + requests)
    try:
        await bench_scheduler(scheduler, tokenizer, 2, 4, out_len)  # warm-up
        return [await bench_scheduler(scheduler, tokenizer, c, max(requests, c), out_len) for c in levels]
    finally:
        scheduler.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="model directory (default: the demo model, built if missing)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--concurrency", default="1,4,8,16")
    ap.add_argument("--requests", type=int, default=16, help="requests per concurrency level (at least the level)")
    ap.add_argument("--output-len", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--bandwidth-gbs", type=float, help="device memory bandwidth, for the decode bound")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "local_engine.json"))
    args = ap.parse_args()

    path = Path(args.model) if args.model else demo_path(os.environ.get("MXN_DATA_DIR", ".mxn"))
    if not (path / "config.json").exists():
        from mxn.engines.local.demo import create_demo

        create_demo(path, 60.0, report=lambda line: print(line, file=sys.stderr))
    device = loader.detect_device(args.device)
    dtype = loader.pick_dtype(device, args.dtype)
    model, tokenizer = loader.load_causal_lm(path, device, dtype)
    levels = [int(x) for x in args.concurrency.split(",")]

    generate_thread = ThreadPoolExecutor(1, thread_name_prefix="generate")
    generate_thread.submit(bench_generate, model, tokenizer, device, 2, args.output_len).result()  # warm-up
    # Rounds alternate the two sides so that a noisy moment of the machine hits both; medians are reported.
    rounds_base, rounds_sched = [], []
    for _ in range(args.rounds):
        n = max(8, args.requests // 2)
        rounds_base.append(
            generate_thread.submit(bench_generate, model, tokenizer, device, n, args.output_len).result()
        )
        rounds_sched.append(
            asyncio.run(scheduler_levels(model, tokenizer, device, levels, args.requests, args.output_len))
        )
    baseline = _median(rounds_base)
    results = [_median([r[i] for r in rounds_sched]) for i in range(len(levels))]

    for r in results:
        r["speedup_vs_generate"] = r["tokens_per_s"] / baseline["tokens_per_s"]
    one = next((r for r in results if r["concurrency"] == 1), None)
    report: dict[str, Any] = {
        "tool": f"mxn {__version__} bench/local_engine.py",
        "settings": {
            "model": str(path),
            "device": str(device),
            "dtype": str(dtype).removeprefix("torch."),
            "output_len": args.output_len,
            "requests": args.requests,
            "concurrency": levels,
        },
        "environment": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "cpus": os.cpu_count(),
            "threads": torch.get_num_threads(),
            "machine": platform.machine(),
            "hardware": loader.hardware(device, dtype),
        },
        "model": {"parameters": sum(p.numel() for p in model.parameters()), "weight_bytes": weight_bytes(model)},
        "generate_one_at_a_time": baseline,
        "scheduler": results,
        "ms_per_token_c1_vs_generate": (
            one["ms_per_token_per_request"] / baseline["ms_per_token_per_request"] if one else None
        ),
    }
    if args.bandwidth_gbs:
        # Each decode step reads every weight once: at batch 1 that is the ceiling on tokens/s.
        step = report["model"]["weight_bytes"] / (args.bandwidth_gbs * 1e9)
        report["decode_bound"] = {
            "bandwidth_gbs": args.bandwidth_gbs,
            "min_ms_per_step": 1000 * step,
            "max_tokens_per_s_batch1": 1 / step,
        }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")

    print(
        f"model {path} ({report['model']['parameters'] / 1e6:.1f}M params) on {device}, {report['settings']['dtype']}"
    )
    print(
        f"plain generate, one at a time: {baseline['tokens_per_s']:.1f} tok/s "
        f"({baseline['ms_per_token_per_request']:.2f} ms/token)"
    )
    print("| concurrency | tok/s | × generate | ms/token per request | TPOT ms |")
    print("|---:|---:|---:|---:|---:|")
    for r in results:
        print(
            f"| {r['concurrency']} | {r['tokens_per_s']:.1f} | {r['speedup_vs_generate']:.2f} | "
            f"{r['ms_per_token_per_request']:.2f} | {r['tpot_ms_mean']:.2f} |"
        )
    if one:
        print(f"ms per token at concurrency 1 / generate's: {report['ms_per_token_c1_vs_generate']:.2f}")
    print(f"saved {out}")


if __name__ == "__main__":
    main()
