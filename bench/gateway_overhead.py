"""What the gateway adds over calling the upstream directly, measured in one run.

    python bench/gateway_overhead.py [--duration 10] [--concurrency 32,128] [--only direct,mxn-sqlite,...]

A fast mock upstream (bench/mock_upstream.py, its own process) and the load generator (wrk) share core 0;
the gateway under test is pinned to core 1. Each target is loaded with non-stream requests and with 20-chunk
streams, closed loop, for a bounded time:

- `direct`: wrk → mock (the floor);
- `mxn-sqlite`: `mxn serve` with the full pipeline (key auth, rate limits, quota reserve/settle, moderation
  with 1,000 keywords, usage records) on SQLite and the in-process limiter;
- `mxn-pg-redis`: the same on a fresh PostgreSQL database and a Redis database index;
- `nginx`: nginx `proxy_pass` with upstream keep-alive (the cost of a C proxy).

Reported per target, mode and concurrency: requests/s, p50 and p99 latency (wrk), added p50 over direct,
the gateway's CPU use (from /proc) and requests/s per gateway core, and its RSS. LiteLLM is not measured yet.
Writes bench/results/gateway_overhead.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
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
from contextlib import contextmanager
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
    cmd: list[str], ready: str, core: int, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    log = tempfile.NamedTemporaryFile(prefix="bench-", suffix=".log", delete=False)
    proc = subprocess.Popen(
        ["taskset", "-c", str(core), *cmd],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, **(env or {})},
        cwd=ROOT,
    )
    try:
        wait_ready(ready, proc)
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


def wrk(url: str, key: str | None, stream: bool, concurrency: int, duration: float) -> dict[str, Any]:
    body = json.dumps({**BODY, "stream": stream})
    script = tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False)
    script.write(
        f'wrk.method = "POST"\nwrk.body = {json.dumps(body)}\nwrk.headers["Content-Type"] = "application/json"\n'
    )
    if key:
        script.write(f'wrk.headers["Authorization"] = "Bearer {key}"\n')
    script.close()
    cmd = [
        "taskset",
        "-c",
        "0",
        "wrk",
        "-t1",
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
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return {
        "rps": rps,
        "p50_ms": pct("50"),
        "p99_ms": pct("99"),
        "non_2xx": int(bad.group(1)) if bad else 0,
        "socket_errors": sum(map(int, errors.groups())) if errors else 0,
    }


def measure(name: str, url: str, key: str | None, pid: int | None, args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = []
    for stream in (False, True):
        for c in args.concurrency:
            wrk(url, key, stream, c, 1.0)  # warm-up: connections, caches, JIT-free but lazy imports
            pids = tree(pid) if pid else []
            before, start = cpu_seconds(pids), time.monotonic()
            r = wrk(url, key, stream, c, args.duration)
            elapsed = time.monotonic() - start
            cpu = (cpu_seconds(pids) - before) / elapsed if pid else None
            rows.append(
                {
                    "target": name,
                    "mode": "stream20" if stream else "nonstream",
                    "concurrency": c,
                    **r,
                    "gateway_cpu": round(cpu, 3) if cpu is not None else None,
                    "rps_per_core": round(r["rps"] / cpu) if cpu else None,
                    "rss_mib": round(rss_mib(pids), 1) if pid else None,
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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--concurrency", type=lambda s: [int(x) for x in s.split(",")], default=[32, 128])
    ap.add_argument("--only", default="direct,mxn-sqlite,mxn-pg-redis,nginx")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "gateway_overhead.json"))
    args = ap.parse_args()
    if not shutil.which("wrk"):
        sys.exit("needs wrk (apt-get install wrk)")
    only = set(args.only.split(","))
    rows: list[dict[str, Any]] = []
    mock_port = free_port()
    mock_cmd = [sys.executable, str(ROOT / "bench" / "mock_upstream.py"), "--port", str(mock_port)]
    with tempfile.TemporaryDirectory() as t, process(mock_cmd, f"http://127.0.0.1:{mock_port}/v1/models", 0):
        tmp = Path(t)
        mock = f"http://127.0.0.1:{mock_port}/v1"
        if "direct" in only:
            rows += measure("direct", f"{mock}/chat/completions", None, None, args)
        if "mxn-sqlite" in only:
            cmd, env, base = mxn_target(mock, {"MXN_DATABASE_URL": f"sqlite+aiosqlite:///{tmp}/mxn.db"}, tmp)
            with process(cmd, f"{base}/readyz", 1, env) as p:
                rows += measure("mxn-sqlite", f"{base}/v1/chat/completions", bench_key(base), p.pid, args)
        if "mxn-pg-redis" in only:
            with pg_and_redis() as stores:
                cmd, env, base = mxn_target(mock, stores, tmp)
                with process(cmd, f"{base}/readyz", 1, env) as p:
                    rows += measure("mxn-pg-redis", f"{base}/v1/chat/completions", bench_key(base), p.pid, args)
        if "nginx" in only and shutil.which("nginx"):
            port = free_port()
            conf = nginx_conf(tmp, port, mock_port)
            with process(["nginx", "-c", str(conf), "-p", str(tmp)], f"http://127.0.0.1:{port}/v1/models", 1) as p:
                rows += measure("nginx", f"http://127.0.0.1:{port}/v1/chat/completions", None, p.pid, args)
    direct = {(r["mode"], r["concurrency"]): r["p50_ms"] for r in rows if r["target"] == "direct"}
    for r in rows:
        base_p50 = direct.get((r["mode"], r["concurrency"]))
        r["added_p50_ms"] = round(r["p50_ms"] - base_p50, 3) if base_p50 is not None else None
    report = {"tool": "bench/gateway_overhead.py", "settings": vars(args), "cpus": os.cpu_count(), "results": rows}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(
        "\n| target | mode | conc | req/s | p50 ms | p99 ms | added p50 ms | gateway CPU | req/s per core | RSS MiB |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['target']} | {r['mode']} | {r['concurrency']} | {r['rps']:.0f} | {r['p50_ms']:.2f} | "
            f"{r['p99_ms']:.2f} | {r['added_p50_ms']} | {r['gateway_cpu']} | {r['rps_per_core']} | {r['rss_mib']} |"
        )
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
