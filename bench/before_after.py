"""This source tree's gateway against another one's, interleaved: is the chain slower than the code before it?

    python bench/before_after.py --before DIR [--rounds 5] [--duration 4] [--loads nonstream:1,nonstream:32,...]

Both `mxn serve`s (this tree, and DIR's `src` on PYTHONPATH, e.g. a `git worktree` of an earlier commit) run at
once on core 1, on SQLite, in front of the same mock upstream (bench/mock_upstream.py) on core 0, with the full
pipeline of bench/gateway_overhead.py's `mxn-sqlite` target. For each load, wrk (core 0) drives them in turn,
`--rounds` times, the order alternating every round, so that the machine's drift and noise fall on both alike.
Each point is requests per CPU-second of the gateway (from /proc): what one core of it serves. Reports each
round and the medians; writes bench/results/before_after.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gateway_overhead import ROOT, bench_key, free_port, mxn_target

LOADS = "nonstream:1,nonstream:32,nonstream:128,stream:32"


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wrk_script(path: Path, key: str, stream: bool) -> Path:
    body = {"model": "mock", "messages": [{"role": "user", "content": "hello there"}], "max_tokens": 16}
    if stream:
        body["stream"] = True
    path.write_text(
        f"wrk.method = 'POST'\nwrk.body = {json.dumps(json.dumps(body))}\n"
        "wrk.headers['Content-Type'] = 'application/json'\n"
        f"wrk.headers['Authorization'] = 'Bearer {key}'\n"
    )
    return path


def per_core(pid: int, url: str, script: Path, connections: int, duration: float) -> float:
    """Requests per CPU-second of the gateway while wrk drives it for `duration` seconds."""
    before = cpu_seconds(pid)
    seconds = max(1, round(duration))  # wrk takes whole seconds
    cmd = ["taskset", "-c", "0", "wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "-s", str(script), url]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=duration + 30).stdout
    used = cpu_seconds(pid) - before
    done = int(next(line for line in out.splitlines() if "requests in" in line).split()[0])
    return done / used if used > 0 else 0.0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--before", required=True, help="another source tree (its src/ goes on PYTHONPATH)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--duration", type=int, default=4, help="seconds per point")
    ap.add_argument("--loads", default=LOADS, help="mode:connections, comma-separated")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "before_after.json"))
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="mxn-before-after-"))
    port = free_port()
    procs = [subprocess.Popen(
        ["taskset", "-c", "0", sys.executable, str(ROOT / "bench" / "mock_upstream.py"), "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )]  # fmt: skip
    servers: dict[str, tuple[int, str, str]] = {}
    try:
        for name, tree in (("after", ROOT), ("before", Path(args.before).resolve())):
            home = tmp / name
            home.mkdir()
            cmd, env, base = mxn_target(f"http://127.0.0.1:{port}/v1", {}, home)
            env["MXN_DATABASE_URL"] = f"sqlite+aiosqlite:///{home}/mxn.db"
            if name == "before":
                env["PYTHONPATH"] = str(tree / "src")
            log = (home / "serve.log").open("w")
            proc = subprocess.Popen(
                ["taskset", "-c", "1", *cmd], env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT, cwd=tree
            )
            procs.append(proc)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                try:
                    if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.2)
            else:
                raise RuntimeError(f"{name} not ready: {(home / 'serve.log').read_text()[-2000:]}")
            servers[name] = (proc.pid, f"{base}/v1/chat/completions", bench_key(base))
        results = []
        for load in args.loads.split(","):
            mode, _, c = load.partition(":")
            runs: dict[str, list[float]] = {"after": [], "before": []}
            stream = mode == "stream"
            scripts = {n: wrk_script(tmp / f"{n}-{mode}.lua", key, stream) for n, (_, _, key) in servers.items()}
            for name, (pid, url, _) in servers.items():  # warm-up, unmeasured
                per_core(pid, url, scripts[name], int(c), 1.0)
            for turn in range(args.rounds):
                for name in ("after", "before") if turn % 2 == 0 else ("before", "after"):
                    pid, url, _ = servers[name]
                    runs[name].append(round(per_core(pid, url, scripts[name], int(c), args.duration)))
            medians = {n: statistics.median(v) for n, v in runs.items()}
            row = {"mode": mode, "concurrency": int(c), "rounds": runs, "median": medians,
                   "after_over_before": round(medians["after"] / medians["before"], 3)}  # fmt: skip
            print(json.dumps(row), flush=True)
            results.append(row)
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(15)
    print("\n| load | c | after req/CPU-s | before req/CPU-s | after / before | rounds after · before |")
    print("|---|---:|---:|---:|---:|---|")
    for r in results:
        rounds = f"{' '.join(map(str, r['rounds']['after']))} · {' '.join(map(str, r['rounds']['before']))}"
        print(f"| {r['mode']} | {r['concurrency']} | {r['median']['after']:.0f} | {r['median']['before']:.0f} "
              f"| {r['after_over_before']} | {rounds} |")  # fmt: skip
    report = {"tool": "bench/before_after.py", "before": args.before, "settings": vars(args), "results": results}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
