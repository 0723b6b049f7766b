"""Run many chat requests concurrently, with retries and a checkpoint that makes a rerun resume.

The output file is the checkpoint: one line per finished request, appended (and flushed) the moment it
finishes, in OpenAI's batch output shape. A rerun reads the custom ids already there and skips them, so
an interrupted run loses nothing finished and does nothing twice. Requests that still fail after their
retries go to `OUT.failed.jsonl` (rewritten each run) and are tried again by the next run.
"""

from __future__ import annotations

import asyncio
import random
import secrets
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx
import orjson

from mxn.client.stream import headers

RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}


@dataclass
class BatchSummary:
    total: int = 0
    skipped: int = 0  # finished by an earlier run
    done: int = 0
    failed: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0
    interrupted: bool = False
    errors: dict[str, int] = field(default_factory=dict)

    def cost(self, price_input: float, price_output: float) -> float:
        """At prices per 1M tokens."""
        return (self.prompt_tokens * price_input + self.completion_tokens * price_output) / 1e6


def read_requests(path: str | Path, model: str | None = None) -> Iterator[tuple[str, dict[str, Any]]]:
    """Lines in OpenAI's batch format (`custom_id`, `body`) or bare bodies (`messages`): (custom id, body)."""
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            item = orjson.loads(line)
            body = item.get("body", item) if isinstance(item, dict) else None
            if not isinstance(body, dict) or "messages" not in body:
                raise ValueError(f"{path}:{n}: a line needs `messages` (or a `body` with them)")
            body = {k: v for k, v in body.items() if k != "custom_id"}
            if model:
                body["model"] = model
            yield str(item.get("custom_id") or f"line-{n}"), body


def load_results(path: str | Path) -> dict[str, dict[str, Any]]:
    """custom id → response body of every finished line."""
    out: dict[str, dict[str, Any]] = {}
    if Path(path).exists():
        with open(path, "rb") as f:
            for line in f:
                if line.strip():
                    item = orjson.loads(line)
                    out[item["custom_id"]] = item["response"]["body"]
    return out


def _retry_after(r: httpx.Response) -> float | None:
    try:
        return float(r.headers["retry-after"])
    except (KeyError, ValueError):
        return None


async def _one(
    http: httpx.AsyncClient, url: str, api_key: str | None, body: dict[str, Any], retries: int
) -> tuple[dict[str, Any] | None, str | None]:
    """(response body, None) or (None, why it failed after its retries)."""
    error = "not tried"
    for attempt in range(retries + 1):
        wait = min(0.5 * 2**attempt, 30.0) * (0.5 + random.random())
        try:
            r = await http.post(url, content=orjson.dumps(body), headers=headers(api_key))
        except httpx.HTTPError as exc:
            error = type(exc).__name__
        else:
            if r.status_code < 300:
                return r.json(), None
            error = f"HTTP {r.status_code}"
            if r.status_code not in RETRY_STATUS:
                return None, f"{error}: {r.text[:200]}"
            wait = max(wait, min(_retry_after(r) or 0.0, 120.0))  # the server knows when it has room
        if attempt < retries:
            await asyncio.sleep(wait)
    return None, error


async def run_batch(
    requests: Iterable[tuple[str, dict[str, Any]]],
    out: str | Path,
    *,
    base_url: str,
    api_key: str | None = None,
    concurrency: int = 8,
    retries: int = 5,
    request_timeout: float = 600.0,
    progress: Callable[[BatchSummary], None] | None = None,
) -> BatchSummary:
    out = Path(out)
    finished = set(load_results(out))
    todo = []
    summary = BatchSummary()
    for custom_id, body in requests:
        summary.total += 1
        if custom_id in finished:
            summary.skipped += 1
        else:
            todo.append((custom_id, body))
    url = base_url.rstrip("/") + "/chat/completions"
    failed_path = out.with_name(out.name + ".failed.jsonl")
    started = time.perf_counter()
    queue: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue()
    for item in todo:
        queue.put_nowait(item)

    async def worker(http: httpx.AsyncClient, sink: IO[bytes], failures: IO[bytes]) -> None:
        while not queue.empty():
            custom_id, body = queue.get_nowait()
            response, error = await _one(http, url, api_key, body, retries)
            if response is not None:
                usage = response.get("usage") or {}
                summary.prompt_tokens += int(usage.get("prompt_tokens") or 0)
                summary.completion_tokens += int(usage.get("completion_tokens") or 0)
                line = {
                    "id": f"batch_req_{secrets.token_hex(8)}",
                    "custom_id": custom_id,
                    "response": {"status_code": 200, "body": response},
                    "error": None,
                }
                # Written whole and flushed at once (no await in between): an interrupt never leaves half a line.
                sink.write(orjson.dumps(line) + b"\n")
                sink.flush()
                summary.done += 1
            else:
                assert error is not None
                failures.write(orjson.dumps({"custom_id": custom_id, "error": error, "body": body}) + b"\n")
                failures.flush()
                summary.failed += 1
                kind = error.split(":")[0]
                summary.errors[kind] = summary.errors.get(kind, 0) + 1
            if progress:
                progress(summary)

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    try:
        # Local files, a line at a time: blocking writes of a few hundred bytes, on purpose (never half a line).
        with out.open("ab") as sink, failed_path.open("wb") as failures:  # noqa: ASYNC230
            async with httpx.AsyncClient(timeout=request_timeout, limits=limits, trust_env=False) as http:
                await asyncio.gather(*(worker(http, sink, failures) for _ in range(max(1, concurrency))))
    except asyncio.CancelledError:
        summary.interrupted = True
    finally:
        summary.seconds = time.perf_counter() - started
        if failed_path.exists() and failed_path.stat().st_size == 0:
            failed_path.unlink()
    return summary
