"""What the gateway adds over calling the upstream directly, measured in one run.

    python bench/gateway_overhead.py [--duration 10] [--concurrency 32,128] [--only direct,mxn-sqlite,...]
                                     [--before DIR]

A fast mock upstream (bench/mock_upstream.py, its own process) and the load generator (wrk) share core 0;
the gateway under test is pinned to core 1. Each target is loaded with non-stream requests and with 20-chunk
streams, closed loop, for a bounded time:

- `direct`: wrk → mock (the floor);
- `python-floor`: bench/python_floor.py, uvicorn + aiohttp passing requests through with no logic at all (the
  least any gateway on mxn's stack can cost);
- `mxn-sqlite`: `mxn serve` with the full pipeline (key auth, rate limits, quota reserve/settle, moderation
  with 1,000 keywords, usage records) on SQLite and the in-process limiter;
- `mxn-pg-redis`: the same on a fresh PostgreSQL database and a Redis database index;
- `litellm`: LiteLLM's proxy (one pinned release, in its own venv under build/, installed by this script);
- `nginx`: nginx `proxy_pass` with upstream keep-alive (the cost of a C proxy).

Reported per target, mode and concurrency: requests/s, p50 and p99 latency (wrk), added p50 over direct,
the gateway's CPU use (from /proc) and requests/s per gateway core, and its RSS. Then, for mxn: inter-token
latency at 20 ms/token against direct (`itl`), RSS at idle and with 1,000 open streams (`streams`), and
`--workers 2` against one worker on PostgreSQL + Redis with the rate limit and quota checked for exactness
(`workers`). The goals of the issue are computed from this run's numbers. Writes
bench/results/gateway_overhead.json and prints markdown tables.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import shutil
import socket
import string
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
TICK = os.sysconf("SC_CLK_TCK")
BODY = {"model": "mock", "messages": [{"role": "user", "content": "Say something short."}], "max_tokens": 20}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args} exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=1).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} not ready")


@contextmanager
def process(
    cmd: list[str], ready: str, core: int | None, env: dict[str, str] | None = None, timeout: float = 60
) -> Iterator[subprocess.Popen[bytes]]:
    log = tempfile.NamedTemporaryFile(prefix="bench-", suffix=".log", delete=False)
    proc = subprocess.Popen(
        [*(["taskset", "-c", str(core)] if core is not None else []), *cmd],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, **(env or {})},
        cwd=ROOT,
    )
    try:
        wait_ready(ready, proc, timeout)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def tree(pid: int) -> list[int]:
    """The process and its descendants (uvicorn workers, nginx workers)."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            parents.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(parents.get(p, []))
    return out


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for p in pids:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except (OSError, IndexError):
            pass
    return total / TICK


def rss_mib(pids: list[int]) -> float:
    total = 0
    for p in pids:
        try:
            m = re.search(r"VmRSS:\s+(\d+) kB", Path(f"/proc/{p}/status").read_text())
            total += int(m.group(1)) if m else 0
        except OSError:
            pass
    return total / 1024


def wrk(
    url: str, key: str | None, stream: bool, concurrency: int, duration: float, core: int | None = 0
) -> dict[str, Any]:
    body = json.dumps({**BODY, "stream": stream})
    script = tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False)
    script.write(
        f'wrk.method = "POST"\nwrk.body = {json.dumps(body)}\nwrk.headers["Content-Type"] = "application/json"\n'
    )
    if key:
        script.write(f'wrk.headers["Authorization"] = "Bearer {key}"\n')
    script.close()
    cmd = [
        *(["taskset", "-c", str(core)] if core is not None else []),
        "wrk",
        f"-t{1 if core is not None else 2}",
        f"-c{concurrency}",
        f"-d{max(1, round(duration))}s",
        "--latency",
        "-s",
        script.name,
        url,
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]

    def pct(p: str) -> float:
        m = re.search(rf"^\s+{p}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        assert m, out
        return float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]

    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    total = re.search(r"(\d+) requests in", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return {
        "rps": rps,
        "p50_ms": pct("50"),
        "p99_ms": pct("99"),
        "requests": int(total.group(1)) if total else None,
        "non_2xx": int(bad.group(1)) if bad else 0,
        "socket_errors": sum(map(int, errors.groups())) if errors else 0,
    }


LAG = re.compile(r'^mxn_event_loop_lag_seconds_bucket\{le="([^"]+)"\} ([\d.e+]+)$', re.M)


def loop_lag(url: str) -> dict[float, float] | None:
    """mxn's event-loop lag histogram (`/metrics`): cumulative counts by upper bound; None for other targets."""
    base = url.split("/v1/", 1)[0]
    try:
        text = httpx.get(f"{base}/metrics", timeout=5).text
    except httpx.HTTPError:
        return None
    found = {float(le): float(n) for le, n in LAG.findall(text)}
    return found or None


def lag_percentiles(before: dict[float, float] | None, after: dict[float, float] | None) -> dict[str, float | None]:
    """p50 and p99 of the loop lag during a load, in ms, as the histogram's bucket bounds (an upper estimate)."""
    if not before or not after:
        return {"loop_lag_p50_ms": None, "loop_lag_p99_ms": None}
    bounds = sorted(after)
    counts = [after[b] - before.get(b, 0.0) for b in bounds]
    total = counts[-1]

    def at(q: float) -> float | None:
        if not total:
            return None
        b = next(b for b, n in zip(bounds, counts, strict=True) if n >= q * total)
        return None if b == float("inf") else round(b * 1000, 2)

    return {"loop_lag_p50_ms": at(0.5), "loop_lag_p99_ms": at(0.99)}


def measure(name: str, url: str, key: str | None, pid: int | None, args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = []
    for stream in (False, True):
        for c in args.concurrency:
            wrk(url, key, stream, c, 1.0)  # warm-up: connections, caches, JIT-free but lazy imports
            pids = tree(pid) if pid else []
            lag = loop_lag(url) if name.startswith("mxn") else None
            before, start = cpu_seconds(pids), time.monotonic()
            r = wrk(url, key, stream, c, args.duration)
            elapsed = time.monotonic() - start
            cpu = (cpu_seconds(pids) - before) / elapsed if pid else None
            lags = lag_percentiles(lag, loop_lag(url) if lag else None)
            rows.append(
                {
                    "target": name,
                    "mode": "stream20" if stream else "nonstream",
                    "concurrency": c,
                    **r,
                    "gateway_cpu": round(cpu, 3) if cpu is not None else None,
                    "rps_per_core": round(r["rps"] / cpu) if cpu else None,
                    "rss_mib": round(rss_mib(pids), 1) if pid else None,
                    **lags,
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    return rows


def mxn_target(mock_url: str, env: dict[str, str], tmp: Path) -> tuple[list[str], dict[str, str], str]:
    words = {"".join(random.Random(i).choices(string.ascii_lowercase, k=8)) for i in range(1000)}
    catalog = tmp / "catalog.yaml"
    catalog.write_text(
        f"moderation: {{keywords: {json.dumps(sorted(words))}}}\n"
        "models:\n  - {name: mock, context_length: 4096, tokenizer: 'tiktoken:cl100k_base'}\n"
        "deployments:\n  - {model: mock, chip: nvidia, price: {input: 1, output: 2},\n"
        f"     endpoints: [{{url: '{mock_url}'}}]}}\n"
    )
    port = free_port()
    cmd = [sys.executable, "-m", "mxn", "serve", "--port", str(port), "--catalog", str(catalog)]
    return (
        cmd,
        {
            "MXN_DEMO": "0",
            "MXN_ADMIN_KEY": "sk-bench-admin",
            "MXN_LOG_LEVEL": "warning",
            "MXN_AUTH_FAIL_LIMIT": "0",
            **env,
        },
        f"http://127.0.0.1:{port}",
    )


def bench_key(base: str) -> str:
    """A user in a group with limits far above the load (so every limiter rule runs and none refuses)."""
    with httpx.Client(base_url=base, headers={"authorization": "Bearer sk-bench-admin"}, timeout=30) as admin:
        admin.post(
            "/admin/groups", json={"name": "bench", "rpm": 10**9, "rpd": 10**9, "tpm": 10**12, "concurrency": 10**6}
        )
        admin.post("/admin/users", json={"name": "bench", "group": "bench", "quota": 10**15})
        r = admin.post("/admin/keys", json={"user": "bench", "name": "bench"})
        r.raise_for_status()
        return str(r.json()["key"])


@contextmanager
def pg_and_redis() -> Iterator[dict[str, str]]:
    import asyncio

    import asyncpg
    import redis

    name = f"mxn_bench_{os.getpid()}"

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect("postgresql://postgres@127.0.0.1:5432/postgres")
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    index = next(i for i in range(15, 0, -1) if redis.Redis(db=i).set("mxn:bench:claim", "1", nx=True))
    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    try:
        yield {
            "MXN_DATABASE_URL": f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}",
            "MXN_REDIS_URL": f"redis://127.0.0.1:6379/{index}",
        }
    finally:
        asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        redis.Redis(db=index).flushdb()


def nginx_conf(tmp: Path, port: int, mock_port: int) -> Path:
    conf = tmp / "nginx.conf"
    conf.write_text(f"""
worker_processes 1; daemon off; pid {tmp}/nginx.pid; error_log {tmp}/error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  upstream mock {{ server 127.0.0.1:{mock_port}; keepalive 256; }}
  server {{
    listen 127.0.0.1:{port};
    location / {{
      proxy_pass http://mock; proxy_http_version 1.1; proxy_set_header Connection ""; proxy_buffering off;
    }}
  }}
}}
""")
    return conf


LITELLM = "1.106.10"  # pinned: never 1.82.7, 1.82.8 or 1.107.0 (compromised uploads)
LITELLM_KEY = "sk-litellm-bench-0123456789abcdef"


def litellm_binary() -> Path:
    """LiteLLM's proxy in its own venv under build/ (never in mxn's dependencies), installed on first use.

    1.106.10 pins certifi>=2026.10.19, which the registry may lack: litellm goes in with --no-deps, then its
    requirements (core and the proxy extra) with the newest certifi there is (unused on loopback).
    """
    venv = ROOT / "build" / "litellm-venv"
    binary = venv / "bin" / "litellm"
    if binary.exists():
        return binary
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "pip"), "install", "-q"]
    subprocess.run([*pip, "--no-deps", f"litellm=={LITELLM}"], check=True, timeout=900)
    reqs = subprocess.run(
        [
            str(venv / "bin" / "python"),
            "-c",
            "import importlib.metadata as m, re\n"
            "for r in m.requires('litellm') or []:\n"
            "    name, _, marker = r.partition(';')\n"
            "    if 'extra' in marker and 'proxy' not in marker: continue\n"
            "    print('certifi' if name.strip().startswith('certifi') else name.strip())",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    subprocess.run([*pip, *reqs], check=True, timeout=1800)
    return binary


def litellm_target(mock_url: str, tmp: Path) -> tuple[list[str], dict[str, str], str]:
    config = tmp / "litellm.yaml"
    config.write_text(
        "model_list:\n  - model_name: mock\n    litellm_params:\n"
        f"      model: openai/mock\n      api_base: {mock_url}\n      api_key: dummy\n"
    )
    port = free_port()
    cmd = [str(litellm_binary()), "--config", str(config), "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--num_workers", "1"]
    env = {"LITELLM_MASTER_KEY": LITELLM_KEY, "LITELLM_LOG": "ERROR", "LITELLM_TELEMETRY": "False"}
    return cmd, env, f"http://127.0.0.1:{port}"


@contextmanager
def awake(cores: tuple[int, ...] = (0, 1)) -> Iterator[None]:
    """Idle-priority spinners on the cores, so that no vCPU halts between requests.

    On a VM a halted vCPU wakes on the host's next tick (up to 4 ms here): at concurrency 1 every request that
    crosses cores waits for it, through the bare Python floor as through mxn (p99 ~5 ms against 0.3 ms awake).
    SCHED_IDLE threads run only when nothing else wants the core, and their CPU time is nobody's measured time."""
    spin = [sys.executable, "-c", "while True: pass"]
    procs = [subprocess.Popen(["chrt", "-i", "0", "taskset", "-c", str(c), *spin]) for c in cores]
    try:
        yield
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


@contextmanager
def static_upstream(tmp: Path) -> Iterator[str]:
    """nginx answering the mock's completion from memory: an upstream that costs next to nothing, for measuring
    how the gateway alone scales with its workers when load, upstream and gateway share two cores."""
    sys.path.insert(0, str(ROOT / "bench"))
    import mock_upstream

    mock_upstream.build(mock_upstream.CHUNKS)
    body = mock_upstream.COMPLETION.decode()
    assert "'" not in body
    port = free_port()
    conf = tmp / "static.conf"
    conf.write_text(f"""
worker_processes 1; daemon off; pid {tmp}/static.pid; error_log {tmp}/static-error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  server {{
    listen 127.0.0.1:{port};
    location / {{ default_type application/json; return 200 '{body}'; }}
  }}
}}
""")
    with process(["nginx", "-c", str(conf), "-p", str(tmp)], f"http://127.0.0.1:{port}/v1/models", None):
        yield f"http://127.0.0.1:{port}/v1"


@contextmanager
def cheap_upstream(tmp: Path) -> Iterator[tuple[str, str]]:
    """The cheapest upstream there is here, and what it is."""
    if shutil.which("nginx"):
        with static_upstream(tmp) as url:
            yield url, "nginx answering from memory"
    else:
        port = free_port()
        with mock_process(port):
            yield f"http://127.0.0.1:{port}/v1", "bench/mock_upstream.py"


def c1_runs(mock: str, tmp: Path, args: argparse.Namespace, runs: int = 3) -> list[dict[str, Any]]:
    """One request at a time, `runs` times, direct and through mxn (SQLite) in turn: the p99 mxn adds, per run."""
    cmd, env, base = mxn_target(mock, {"MXN_DATABASE_URL": f"sqlite+aiosqlite:///{tmp}/c1.db"}, tmp)
    out = []
    with process(cmd, f"{base}/readyz", 1, env):
        key = bench_key(base)
        wrk(f"{base}/v1/chat/completions", key, False, 1, 1.0)
        for i in range(runs):
            direct = wrk(f"{mock}/chat/completions", None, False, 1, args.duration)
            through = wrk(f"{base}/v1/chat/completions", key, False, 1, args.duration)
            added = round(through["p99_ms"] - direct["p99_ms"], 3)
            out.append({"run": i + 1, "direct": direct, "mxn": through, "added_p99_ms": added})
            print(json.dumps({"c1": out[-1]}), flush=True)
    return out


def mock_process(port: int, *options: str) -> Any:
    cmd = [sys.executable, str(ROOT / "bench" / "mock_upstream.py"), "--port", str(port), *options]
    return process(cmd, f"http://127.0.0.1:{port}/v1/models", 0)


async def _gaps(url: str, key: str, streams: int, rounds: int) -> list[float]:
    """Seconds between successive content chunks, as a client reading `streams` concurrent streams sees them."""
    import aiohttp

    body = {**BODY, "stream": True}
    headers = {"authorization": f"Bearer {key}"}
    gaps: list[float] = []

    async def one(session: aiohttp.ClientSession) -> None:
        last = None
        async with session.post(url, json=body, headers=headers) as r:
            async for line in r.content:
                if b'"content"' in line:
                    now = time.perf_counter()
                    if last is not None:
                        gaps.append(now - last)
                    last = now

    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=0)) as session:
        for _ in range(rounds):
            await asyncio.gather(*(one(session) for _ in range(streams)))
    return gaps


def itl(tmp: Path) -> dict[str, Any]:
    """Inter-token latency at 20 ms/token: direct against through mxn (SQLite), 16 streams × 3 rounds each."""
    port = free_port()
    out: dict[str, Any] = {"token_delay_ms": 20, "streams": 16, "rounds": 3}
    with mock_process(port, "--token-delay", "0.02"):
        mock = f"http://127.0.0.1:{port}/v1"
        cmd, env, base = mxn_target(mock, {"MXN_DATABASE_URL": f"sqlite+aiosqlite:///{tmp}/itl.db"}, tmp)
        with process(cmd, f"{base}/readyz", 1, env):
            key = bench_key(base)
            os.sched_setaffinity(0, {0})  # the client beside the mock, as wrk is
            try:
                for name, url in (("direct", f"{mock}/chat/completions"), ("mxn", f"{base}/v1/chat/completions")):
                    gaps = sorted(asyncio.run(_gaps(url, key, 16, 3)))
                    out[name] = {
                        "mean_ms": round(1000 * sum(gaps) / len(gaps), 3),
                        "p50_ms": round(1000 * gaps[len(gaps) // 2], 3),
                        "p99_ms": round(1000 * gaps[int(len(gaps) * 0.99)], 3),
                        "gaps": len(gaps),
                    }
            finally:
                os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))
    out["overhead_pct"] = round(100 * (out["mxn"]["mean_ms"] / out["direct"]["mean_ms"] - 1), 2)
    print(json.dumps({"itl": out}), flush=True)
    return out


async def _hold_streams(url: str, key: str, n: int, measure: Any) -> tuple[int, Any]:
    """Open `n` streams, wait for each one's first chunk, call `measure()` while all are open, close them."""
    import aiohttp

    body = {**BODY, "stream": True}
    headers = {"authorization": f"Bearer {key}"}
    opened = asyncio.Event()
    count = 0
    release = asyncio.Event()

    async def one(session: aiohttp.ClientSession) -> None:
        nonlocal count
        async with session.post(url, json=body, headers=headers) as r:
            await r.content.readline()
            count += 1
            if count == n:
                opened.set()
            await release.wait()

    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=0)) as session:
        tasks = [asyncio.create_task(one(session)) for _ in range(n)]
        try:
            await asyncio.wait_for(opened.wait(), 60)
            result = measure()
        finally:
            release.set()
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    return count, result


def open_streams(tmp: Path, n: int = 1000) -> dict[str, Any]:
    """The gateway's RSS at idle and with `n` streams open and idle (the upstream sends a token a second)."""
    port = free_port()
    with mock_process(port, "--token-delay", "1", "--chunks", "60"):
        mock = f"http://127.0.0.1:{port}/v1"
        cmd, env, base = mxn_target(mock, {"MXN_DATABASE_URL": f"sqlite+aiosqlite:///{tmp}/streams.db"}, tmp)
        with process(cmd, f"{base}/readyz", 1, env) as p:
            key = bench_key(base)
            wrk(f"{base}/v1/chat/completions", key, False, 32, 2)  # warm: pools, caches, lazy imports
            idle = rss_mib(tree(p.pid))
            count, busy = asyncio.run(
                _hold_streams(f"{base}/v1/chat/completions", key, n, lambda: rss_mib(tree(p.pid)))
            )
    out = {
        "streams": count,
        "rss_idle_mib": round(idle, 1),
        "rss_open_mib": round(busy, 1),
        "kib_per_stream": round(1024 * (busy - idle) / max(count, 1), 1),
    }
    print(json.dumps({"open_streams": out}), flush=True)
    return out


def _store_counts(database_url: str, user: str) -> tuple[int, int, int]:
    """(balance, sum of usage costs, usage rows answered 200) of a user, read from the store directly."""
    import asyncpg

    async def read() -> tuple[int, int, int]:
        conn = await asyncpg.connect(database_url.replace("postgresql+asyncpg", "postgresql"))
        try:
            row = await conn.fetchrow(
                "SELECT u.quota, coalesce(sum(x.cost), 0) AS spent, count(*) FILTER (WHERE x.status = 200) AS ok "
                "FROM users u LEFT JOIN usage x ON x.user_id = u.id WHERE u.name = $1 GROUP BY u.quota",
                user,
            )
            return int(row["quota"]), int(row["spent"]), int(row["ok"])
        finally:
            await conn.close()

    return asyncio.run(read())


def workers(tmp: Path, args: argparse.Namespace) -> dict[str, Any]:
    """`--workers 2` against one worker on PostgreSQL + Redis, nothing pinned (the load shares both cores);
    then, on two workers, an rpm limit and a quota hammered through both and checked against the store."""
    out: dict[str, Any] = {"note": "gateway, upstream and wrk share both cores here: nothing is pinned"}
    with cheap_upstream(tmp) as (mock, what), pg_and_redis() as stores:
        out["upstream"] = what
        for n in (1, 2):
            cmd, env, base = mxn_target(mock, stores, tmp)
            with process([*cmd, "--workers", str(n)], f"{base}/readyz", None, env) as p:
                key = bench_key(base)
                url = f"{base}/v1/chat/completions"
                wrk(url, key, False, 128, 1.0, core=None)
                pids = tree(p.pid)
                before, start = cpu_seconds(pids), time.monotonic()
                r = wrk(url, key, False, 128, args.duration, core=None)
                cpu = (cpu_seconds(pids) - before) / (time.monotonic() - start)
                out[f"workers_{n}"] = {**r, "gateway_cpu": round(cpu, 3), "rps_per_core": round(r["rps"] / cpu)}
                print(json.dumps({f"workers_{n}": out[f"workers_{n}"]}), flush=True)
                if n == 2:
                    out["exactness"] = _exactness(base, url, stores["MXN_DATABASE_URL"], args)
    out["speedup"] = round(out["workers_2"]["rps"] / out["workers_1"]["rps"], 2)
    return out


def _key(base: str, user: str, **limits: Any) -> str:
    with httpx.Client(base_url=base, headers={"authorization": "Bearer sk-bench-admin"}, timeout=30) as admin:
        r = admin.post("/admin/keys", json={"user": user, "name": f"k{random.random()}", **limits})
        r.raise_for_status()
        return str(r.json()["key"])


def _exactness(base: str, url: str, database_url: str, args: argparse.Namespace) -> dict[str, Any]:
    with httpx.Client(base_url=base, headers={"authorization": "Bearer sk-bench-admin"}, timeout=30) as admin:
        admin.post("/admin/users", json={"name": "rpm", "group": "bench"}).raise_for_status()
        for name, quota in (("big", 2_000_000), ("small", 3_200)):
            admin.post("/admin/users", json={"name": name, "group": "bench", "quota": quota}).raise_for_status()
    out: dict[str, Any] = {}
    limited = wrk(url, _key(base, "rpm", rpm=600), False, 64, args.duration, core=None)
    admitted = (limited["requests"] or 0) - limited["non_2xx"]
    out["rpm_600"] = {"admitted": admitted, "refused": limited["non_2xx"], "exact": admitted == 600}
    for name, quota in (("big", 2_000_000), ("small", 3_200)):
        r = wrk(url, _key(base, name), False, 64, args.duration, core=None)
        time.sleep(3)  # idle holds go back within a second; usage records are written every half second
        balance, spent, ok = _store_counts(database_url, name)
        answered = (r["requests"] or 0) - r["non_2xx"]
        # What the upstream bills past an empty balance is forgiven, never taken below zero: a reservation is
        # mxn's count of the prompt (11 tokens here) plus max_tokens, the upstream bills 12, so requests in flight
        # when the balance runs out may each overrun it by a token or so.
        forgiven = spent - (quota - balance)
        out[f"quota_{name}"] = {
            "granted": quota,
            "answered_200": answered,
            # wrk stops with up to 64 requests under way: the gateway finishes and records them, wrk never counts
            "usage_200": ok,
            "spent": spent,
            "balance": balance,
            "forgiven": forgiven,
            "exact": balance >= 0
            and answered <= ok <= answered + 64
            and (forgiven == 0 or (balance == 0 and 0 < forgiven <= 64 * max(spent // max(ok, 1), 1))),
        }
    print(json.dumps({"exactness": out}), flush=True)
    return out


def goals(rows: list[dict[str, Any]], extra: dict[str, Any]) -> dict[str, Any]:
    """The issue's goals, relative to this run's own floor and peers (None where a part was not run)."""

    def row(target: str, mode: str, c: int = 32) -> dict[str, Any] | None:
        return next((r for r in rows if (r["target"], r["mode"], r["concurrency"]) == (target, mode, c)), None)

    out: dict[str, Any] = {}
    for mode in ("nonstream", "stream20"):
        mxn, floor, litellm = row("mxn-sqlite", mode), row("python-floor", mode), row("litellm", mode)
        if mxn and floor and floor["rps_per_core"]:
            ratio = round(mxn["rps_per_core"] / floor["rps_per_core"], 3)
            out[f"{mode}_per_core_vs_floor>=0.5"] = {"value": ratio, "met": ratio >= 0.5}
        if mxn and litellm and litellm["rps_per_core"]:
            ratio = round(mxn["rps_per_core"] / litellm["rps_per_core"], 1)
            out[f"{mode}_per_core_vs_litellm>=15"] = {"value": ratio, "met": ratio >= 15}
        for c in (32, 128):
            r = row("mxn-sqlite", mode, c)
            if r:
                tail = round(r["p99_ms"] / r["p50_ms"], 2)
                out[f"{mode}_c{c}_p99/p50<=3"] = {"value": tail, "met": tail <= 3}
    if "c1" in extra:
        added = [run["added_p99_ms"] for run in extra["c1"]]
        out["added_p99_ms_c1<=1.0_every_run"] = {"value": added, "met": all(a <= 1.0 for a in added)}
    if "itl" in extra:
        out["itl_overhead_pct<=5"] = {"value": extra["itl"]["overhead_pct"], "met": extra["itl"]["overhead_pct"] <= 5}
    if "open_streams" in extra:
        mib = extra["open_streams"]["rss_open_mib"]
        out["rss_1000_streams_mib<150"] = {"value": mib, "met": mib < 150}
    if "workers" in extra:
        speedup, exact = extra["workers"]["speedup"], extra["workers"]["exactness"]
        out["workers_2_speedup>=1.8"] = {"value": speedup, "met": speedup >= 1.8}
        out["exact_under_load"] = {
            "value": all(v.get("exact") for v in exact.values()),
            "met": all(v.get("exact") for v in exact.values()),
        }
    return out


TARGETS = "direct,python-floor,mxn-sqlite,mxn-pg-redis,litellm,nginx"
SECTIONS = "c1,itl,streams,workers"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--concurrency", type=lambda s: [int(x) for x in s.split(",")], default=[1, 32, 128])
    ap.add_argument("--only", default=f"{TARGETS},{SECTIONS}", help=f"targets ({TARGETS}) and parts ({SECTIONS})")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "gateway_overhead.json"))
    ap.add_argument("--before", help="also measure `mxn serve` from this source tree (target mxn-before)")
    ap.add_argument("--no-awake", dest="awake", action="store_false", help="let idle vCPUs halt (see awake())")
    args = ap.parse_args()
    if not shutil.which("wrk"):
        sys.exit("needs wrk (apt-get install wrk)")
    only = set(args.only.split(","))
    rows: list[dict[str, Any]] = []
    extra: dict[str, Any] = {}
    mock_port = free_port()
    with tempfile.TemporaryDirectory() as t, mock_process(mock_port), awake() if args.awake else nullcontext():
        tmp = Path(t)
        mock = f"http://127.0.0.1:{mock_port}/v1"
        if "direct" in only:
            rows += measure("direct", f"{mock}/chat/completions", None, None, args)
        if "python-floor" in only:
            port = free_port()
            cmd = [sys.executable, str(ROOT / "bench" / "python_floor.py"), "--port", str(port), "--upstream", mock]
            with process(cmd, f"http://127.0.0.1:{port}/models", 1) as p:
                rows += measure("python-floor", f"http://127.0.0.1:{port}/chat/completions", None, p.pid, args)
        if "mxn-sqlite" in only:
            cmd, env, base = mxn_target(mock, {"MXN_DATABASE_URL": f"sqlite+aiosqlite:///{tmp}/mxn.db"}, tmp)
            with process(cmd, f"{base}/readyz", 1, env) as p:
                rows += measure("mxn-sqlite", f"{base}/v1/chat/completions", bench_key(base), p.pid, args)
        if args.before:
            # The same target from another source tree (e.g. a `git worktree` of the last release), in this run.
            db = {"MXN_DATABASE_URL": f"sqlite+aiosqlite:///{tmp}/before.db", "PYTHONPATH": f"{args.before}/src"}
            cmd, env, base = mxn_target(mock, db, tmp)
            with process(cmd, f"{base}/readyz", 1, env) as p:
                rows += measure("mxn-before", f"{base}/v1/chat/completions", bench_key(base), p.pid, args)
        if "mxn-pg-redis" in only:
            with pg_and_redis() as stores:
                cmd, env, base = mxn_target(mock, stores, tmp)
                with process(cmd, f"{base}/readyz", 1, env) as p:
                    rows += measure("mxn-pg-redis", f"{base}/v1/chat/completions", bench_key(base), p.pid, args)
        if "litellm" in only:
            try:
                cmd, env, base = litellm_target(mock, tmp)
            except (subprocess.SubprocessError, OSError) as exc:
                extra["litellm_error"] = f"installing LiteLLM {LITELLM} failed: {exc}"
                print(extra["litellm_error"], flush=True)
            else:
                with process(cmd, f"{base}/health/liveliness", 1, env, timeout=180) as p:
                    rows += measure("litellm", f"{base}/v1/chat/completions", LITELLM_KEY, p.pid, args)
        if "nginx" in only and shutil.which("nginx"):
            port = free_port()
            conf = nginx_conf(tmp, port, mock_port)
            with process(["nginx", "-c", str(conf), "-p", str(tmp)], f"http://127.0.0.1:{port}/v1/models", 1) as p:
                rows += measure("nginx", f"http://127.0.0.1:{port}/v1/chat/completions", None, p.pid, args)
        if "c1" in only:
            extra["c1"] = c1_runs(mock, tmp, args)
        if "itl" in only:
            extra["itl"] = itl(tmp)
        if "streams" in only:
            extra["open_streams"] = open_streams(tmp)
        if "workers" in only:
            extra["workers"] = workers(tmp, args)
    direct = {(r["mode"], r["concurrency"]): r for r in rows if r["target"] == "direct"}
    for r in rows:
        ref = direct.get((r["mode"], r["concurrency"]))
        r["added_p50_ms"] = round(r["p50_ms"] - ref["p50_ms"], 3) if ref else None
        r["added_p99_ms"] = round(r["p99_ms"] - ref["p99_ms"], 3) if ref else None
    report = {
        "tool": "bench/gateway_overhead.py",
        "settings": vars(args),
        "cpus": os.cpu_count(),
        "results": rows,
        **extra,
        "goals": goals(rows, extra),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print_tables(report)
    print(f"\nwrote {out}")


def print_tables(report: dict[str, Any]) -> None:
    print(
        "\n| target | mode | conc | req/s | p50 ms | p99 ms | added p50 ms | gateway CPU | req/s per core | RSS MiB "
        "| loop lag p50 / p99 ms |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in report["results"]:
        lag = f"{r.get('loop_lag_p50_ms')} / {r.get('loop_lag_p99_ms')}" if r.get("loop_lag_p50_ms") else ""
        print(
            f"| {r['target']} | {r['mode']} | {r['concurrency']} | {r['rps']:.0f} | {r['p50_ms']:.2f} | "
            f"{r['p99_ms']:.2f} | {r['added_p50_ms']} | {r['gateway_cpu']} | {r['rps_per_core']} | {r['rss_mib']} "
            f"| {lag} |"
        )
    print("\n| goal | this run | met |\n|---|---:|---|")
    for name, g in report["goals"].items():
        value, met = (g["value"], "yes" if g["met"] else "no") if isinstance(g, dict) else (g, "")
        print(f"| {name} | {value} | {met} |")


if __name__ == "__main__":
    main()
