"""`mxn chat`, `mxn batch`, `mxn bench`: clients for any OpenAI-compatible base URL."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Annotated, Any

import httpx
import orjson
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from mxn.client import bench as benchmark
from mxn.client.batch import BatchSummary, read_requests, run_batch
from mxn.client.stream import headers

BaseUrl = Annotated[str, typer.Option("--base-url", envvar="MXN_BASE_URL", help="e.g. http://127.0.0.1:8000/v1")]
ApiKey = Annotated[str | None, typer.Option("--api-key", envvar="MXN_API_KEY", help="sent as a Bearer token")]
err = Console(stderr=True)

CHAT_HELP = "/system TEXT · /model NAME · /clear · /save FILE · /quit   (Ctrl-C stops an answer; Ctrl-D quits)"


def chat(base_url: BaseUrl, api_key: ApiKey = None, model: Annotated[str, typer.Option("--model")] = "") -> None:
    """A terminal chat: streamed answers, multi-turn history; Ctrl-C stops the answer, not the program."""
    url = base_url.rstrip("/") + "/chat/completions"
    system: str | None = None
    history: list[dict[str, str]] = []
    print(f"mxn chat · {model or '(no model: /model NAME)'} at {base_url}\n{CHAT_HELP}", flush=True)
    with httpx.Client(timeout=httpx.Timeout(600, connect=10), trust_env=False) as http:
        while True:
            try:
                line = input("you> ").strip()
            except KeyboardInterrupt:
                print("\n(Ctrl-D or /quit to leave)")
                continue
            except EOFError:
                print()
                return
            if not line:
                continue
            if line.startswith("/"):
                cmd, _, arg = line.partition(" ")
                if cmd == "/quit":
                    return
                if cmd == "/system":
                    system = arg or None
                    print(f"(system prompt {'set' if system else 'cleared'})")
                elif cmd == "/model":
                    model = arg or model
                    print(f"(model: {model})")
                elif cmd == "/clear":
                    history = []
                    print("(history cleared)")
                elif cmd == "/save":
                    path = Path(arg or "chat.json")
                    path.write_text(
                        json.dumps(
                            {"model": model, "system": system, "messages": history}, ensure_ascii=False, indent=2
                        ),
                        encoding="utf-8",
                    )
                    print(f"(saved to {path})")
                else:
                    print(CHAT_HELP)
                continue
            history.append({"role": "user", "content": line})
            messages = ([{"role": "system", "content": system}] if system else []) + history
            reply = _answer(http, url, api_key, {"model": model, "messages": messages, "stream": True})
            if reply is None:
                history.pop()
            else:
                history.append({"role": "assistant", "content": reply})


def _answer(http: httpx.Client, url: str, api_key: str | None, body: dict[str, Any]) -> str | None:
    """Stream one answer to the terminal; what was said (None on an error)."""
    parts: list[str] = []
    sys.stdout.write("ai> ")
    sys.stdout.flush()
    try:
        with http.stream("POST", url, content=orjson.dumps(body), headers=headers(api_key)) as r:
            if r.status_code >= 400:
                r.read()
                print(f"\n(error {r.status_code}: {_message(r)})")
                return None
            for line in r.iter_lines():
                if not line.startswith("data:") or line[5:].strip() == "[DONE]":
                    continue
                chunk = orjson.loads(line[5:])
                if "error" in chunk and not chunk.get("choices"):
                    print(f"\n(error: {chunk['error'].get('message')})")
                    break
                for choice in chunk.get("choices") or ():
                    text = (choice.get("delta") or {}).get("content")
                    if text:
                        parts.append(text)
                        sys.stdout.write(text)
                        sys.stdout.flush()
                if chunk.get("blocked"):
                    sys.stdout.write(" [blocked by moderation]")
    except KeyboardInterrupt:
        sys.stdout.write(" [stopped]")
    except httpx.HTTPError as exc:
        print(f"\n(error: {type(exc).__name__}: {exc})")
        return None
    print(flush=True)
    return "".join(parts)


def _message(r: httpx.Response) -> str:
    try:
        return str(r.json()["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return r.text[:200]


def batch(
    input_file: Annotated[Path, typer.Argument(help="JSONL: OpenAI batch lines or bare {messages: ...}")],
    output_file: Annotated[Path, typer.Argument(help="JSONL results; also the checkpoint a rerun resumes from")],
    base_url: BaseUrl,
    api_key: ApiKey = None,
    jobs: Annotated[int, typer.Option("-j", "--jobs", help="requests at once")] = 8,
    model: Annotated[str | None, typer.Option("--model", help="overrides each line's model")] = None,
    retries: Annotated[int, typer.Option("--retries")] = 5,
    price_input: Annotated[float, typer.Option("--price-input", help="per 1M prompt tokens, for the cost")] = 0.0,
    price_output: Annotated[float, typer.Option("--price-output", help="per 1M completion tokens")] = 0.0,
) -> None:
    """Run every request once: concurrently, with retries, resuming where an earlier run stopped."""
    try:
        requests = list(read_requests(input_file, model))
    except (OSError, ValueError) as exc:
        err.print(f"error: {exc}")
        raise typer.Exit(2)
    progress = Progress(
        TextColumn("[bold]batch"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]:.1f}/s"),
        TextColumn("{task.fields[failed]} failed"),
        TimeRemainingColumn(),
        console=err,
    )
    with progress:
        task = progress.add_task("batch", total=len(requests), rate=0.0, failed=0)

        def update(s: BatchSummary) -> None:
            elapsed = progress.tasks[0].elapsed or 1e-9
            progress.update(
                task, completed=s.skipped + s.done + s.failed, rate=(s.done + s.failed) / elapsed, failed=s.failed
            )

        async def go() -> BatchSummary:
            return await run_batch(
                requests,
                output_file,
                base_url=base_url,
                api_key=api_key,
                concurrency=jobs,
                retries=retries,
                progress=update,
            )

        summary = asyncio.run(go())
        update(summary)
    err.print(
        f"{'interrupted: ' if summary.interrupted else ''}{summary.done} done, {summary.skipped} already done, "
        f"{summary.failed} failed of {summary.total}; tokens {summary.prompt_tokens} in + {summary.completion_tokens} "
        f"out; cost {summary.cost(price_input, price_output):.6f}; {summary.seconds:.1f} s"
        + (f"; failures in {output_file}.failed.jsonl {summary.errors}" if summary.failed else "")
    )
    if summary.interrupted:
        raise typer.Exit(130)
    if summary.failed:
        raise typer.Exit(1)


def bench(
    ctx: typer.Context,
    base_url: BaseUrl,
    cell: Annotated[list[str] | None, typer.Option("--cell", help="MODEL@CHIP; repeat for each cell")] = None,
    plan: Annotated[Path | None, typer.Option("--plan", help="YAML: cells and any settings below")] = None,
    endpoint: Annotated[
        list[int] | None,
        typer.Option(
            "--endpoint", metavar="ID", help="an endpoint of the one cell, measured alone (admin key); repeat"
        ),
    ] = None,
    api_key: ApiKey = None,
    concurrency: Annotated[str, typer.Option("--concurrency", help="a sweep, e.g. 1,4,16")] = "1,4,16",
    request_rate: Annotated[float | None, typer.Option("--request-rate", help="Poisson arrivals/s instead")] = None,
    num_prompts: Annotated[int, typer.Option("--num-prompts")] = 50,
    input_len: Annotated[int, typer.Option("--input-len")] = 128,
    output_len: Annotated[int, typer.Option("--output-len")] = 128,
    dataset: Annotated[str, typer.Option("--dataset", help="synthetic or bundled")] = "synthetic",
    seed: Annotated[int, typer.Option("--seed")] = 0,
    warmup: Annotated[int, typer.Option("--warmup", help="unmeasured requests per cell")] = 2,
    max_duration: Annotated[float, typer.Option("--max-duration", help="seconds per cell and load")] = 120.0,
    slo_ttft_ms: Annotated[float, typer.Option("--slo-ttft-ms")] = 2000.0,
    slo_tpot_ms: Annotated[float, typer.Option("--slo-tpot-ms")] = 200.0,
    tokenizer: Annotated[str | None, typer.Option("--tokenizer", help="count output tokens, e.g. qwen")] = None,
    plain: Annotated[bool, typer.Option("--plain", help="POST {base}/chat/completions with model=CELL")] = False,
    out: Annotated[Path, typer.Option("--out")] = Path("bench-results"),
) -> None:
    """The same workload to model×chip cells (or endpoints of one); TTFT, TPOT, ITL, throughput; JSON, markdown, PNG."""
    given = {
        "concurrency": [int(c) for c in concurrency.split(",") if c],
        "request_rate": request_rate,
        "num_prompts": num_prompts,
        "input_len": input_len,
        "output_len": output_len,
        "dataset": dataset,
        "seed": seed,
        "warmup": warmup,
        "max_duration": max_duration,
        "slo_ttft_ms": slo_ttft_ms,
        "slo_tpot_ms": slo_tpot_ms,
        "plain": plain,
        "tokenizer": tokenizer,
    }
    try:
        # A plan's values stand where the command line left an option at its default.
        planned = benchmark.load_plan(plan) if plan else {}
        # By name: typer's context may use its own copy of click's ParameterSource enum.
        chosen = {
            k: v for k, v in given.items() if getattr(ctx.get_parameter_source(k), "name", "DEFAULT") != "DEFAULT"
        }
        settings = benchmark.Settings(
            **{
                **given,
                **planned,
                **chosen,
                "cells": [*planned.get("cells", []), *(cell or [])],
                "endpoints": [*planned.get("endpoints", []), *(endpoint or [])],
            },
            base_url=base_url,
            api_key=api_key,
        )
        settings.check()
    except (OSError, ValueError, TypeError) as exc:
        err.print(f"error: {exc}")
        raise typer.Exit(2)
    try:
        report = asyncio.run(benchmark.run(settings, say=err.print))
    except ValueError as exc:
        err.print(f"error: {exc}")
        raise typer.Exit(2)
    for path in benchmark.write(report, out):
        typer.echo(path)
