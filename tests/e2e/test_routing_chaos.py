"""Endpoints failing under load: failover, breakers, clean stream errors, exact usage; graceful SIGTERM; metrics."""

from __future__ import annotations

import signal
import threading
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest
from openai import OpenAI
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import Proc, first_start_key, mxn, start_serve, start_upstream, wait_for

PROMPT = "alpha beta gamma delta epsilon zeta eta theta"  # the fake echoes it word by word
EXPECTED = f"echo(1): {PROMPT}"


@dataclass
class Cluster:
    url: str
    key: str
    db: str
    server: Proc
    upstreams: list[Proc]
    ports: list[int]
    tmp: Path


def _catalog(tmp: Path, urls: list[str]) -> Path:
    path = tmp / "chaos.yaml"
    endpoints = "".join(f'      - {{url: "{u}"}}\n' for u in urls)
    path.write_text(
        f"models: [{{name: chaos, tokenizer: 'tiktoken:cl100k_base'}}]\n"
        f"deployments:\n  - model: chaos\n    chip: nvidia\n    endpoints:\n{endpoints}"
    )
    return path


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    upstreams = [start_upstream(tmp_path, "sse", "--delay", "0.04") for _ in range(3)]
    ports = [int(u.url.rsplit(":", 1)[1].split("/")[0]) for u in upstreams]
    db = f"sqlite+aiosqlite:///{tmp_path / 'chaos.db'}"
    env = {"MXN_DEMO": "0", "MXN_HEALTH_INTERVAL": "0.5", "MXN_BREAKER_COOLDOWN": "1"}
    catalog = _catalog(tmp_path, [u.url for u in upstreams])
    server = start_serve(tmp_path / "serve.log", db, "--catalog", str(catalog), env=env)
    c = Cluster(server.url, first_start_key(server.output()), db, server, upstreams, ports, tmp_path)
    try:
        yield c
    finally:
        server.stop()
        for u in c.upstreams:
            u.stop()


def test_an_endpoint_killed_and_restarted_under_load(cluster: Cluster) -> None:
    client = OpenAI(base_url=f"{cluster.url}/maas/chaos/nvidia/", api_key=cluster.key, max_retries=0, timeout=30)
    done = Counter[str]()
    lock = threading.Lock()

    def one(i: int) -> str:
        messages = [{"role": "user", "content": PROMPT}]
        if i % 2:
            r = client.chat.completions.create(model="chaos", messages=messages)
            outcome = "ok" if r.choices[0].message.content == EXPECTED else "wrong"
        else:
            got = []
            try:
                for chunk in client.chat.completions.create(model="chaos", messages=messages, stream=True):
                    got.append(chunk)
                text = "".join(c.choices[0].delta.content or "" for c in got if c.choices)
                outcome = "ok" if text == EXPECTED else "wrong"
            except openai.APIError as exc:
                # Only a stream that had begun may fail: then it ends with an error event, never a hang.
                outcome = "cut" if got else f"failed before streaming: {exc!r}"
        with lock:
            done[outcome] += 1
        return outcome

    def chaos() -> None:
        wait_for(lambda: sum(done.values()) >= 120, 120, "120 requests answered", interval=0.02)
        cluster.upstreams[0].popen.kill()  # SIGKILL: its open streams break off mid-way
        cluster.upstreams[0].popen.wait()
        wait_for(lambda: sum(done.values()) >= 280, 120, "280 requests answered", interval=0.02)
        cluster.upstreams[0] = start_upstream(cluster.tmp, "sse", "--delay", "0.04", port=cluster.ports[0])

    with ThreadPoolExecutor(1) as chaos_pool, ThreadPoolExecutor(32) as pool:
        killer = chaos_pool.submit(chaos)
        outcomes = Counter(pool.map(one, range(500)))
        killer.result(90)  # a chaos that failed fails the test
    # Every request either succeeded, or was a stream already under way when its upstream died.
    assert set(outcomes) <= {"ok", "cut"}, outcomes
    assert outcomes["ok"] >= 450 and sum(outcomes.values()) == 500
    # Non-stream requests never saw the failure: they had not started, so they failed over.
    assert outcomes["cut"] <= 32

    with httpx.Client(base_url=cluster.url, headers={"authorization": f"Bearer {cluster.key}"}) as admin:

        def back_in_rotation() -> dict | None:
            """The restarted endpoint comes back: checks pass, the breaker closes (on a probe sent meanwhile)."""
            ep = admin.get("/admin/endpoints").json()["data"][0]
            changes = [c["change"] for c in ep["health"]["changes"]]
            back = any("breaker closed" in c or "back in rotation" in c for c in changes)
            if ep["health"]["breaker"] == "closed" and ep["health"]["healthy"] and back:
                return ep
            client.chat.completions.create(model="chaos", messages=[{"role": "user", "content": "x"}])
            return None

        ep = wait_for(back_in_rotation, 15, "the restarted endpoint back in rotation")
        changes = [c["change"] for c in ep["health"]["changes"]]
        # Out of rotation by whichever noticed first: the breaker (failed requests) or a health check.
        assert any("breaker open" in c or "health check failed" in c for c in changes), changes
        (cell,) = admin.get("/admin/cells").json()["data"]
        assert cell["state"] == "running" and len(cell["endpoints"]) == 3
        assert ep["health"]["breaker"] == "closed" and ep["health"]["healthy"], ep["health"]
        metrics = admin.get("/metrics").text

    families = {f.name: f for f in text_string_to_metric_families(metrics)}
    requests = sum(s.value for s in families["mxn_requests"].samples if s.name == "mxn_requests_total")
    assert requests >= 500
    in_flight = [s.value for s in families["mxn_in_flight"].samples]
    assert in_flight and all(v == 0 for v in in_flight)  # nothing leaked
    assert {s.labels["endpoint"] for s in families["mxn_breaker_state"].samples} >= {"1"}
    attempts = Counter(
        s.labels["result"]
        for s in families["mxn_upstream_attempts"].samples
        if s.name == "mxn_upstream_attempts_total" and s.value
    )
    assert attempts.keys() == {"ok", "error"}

    # Usage: one record per request, none lost, none twice; statuses as the clients saw them.
    cluster.server.stop()
    rows = [r for r in _usage(cluster.db) if r["model"] == "chaos"]
    extra = requests - 500  # the probes sent while waiting for the breaker to close
    assert len(rows) == 500 + extra
    statuses = Counter(r["status"] for r in rows)
    assert statuses[200] == outcomes["ok"] + extra and sum(statuses.values()) - statuses[200] == outcomes["cut"]


def _usage(db: str) -> list[dict]:
    import json

    return json.loads(mxn("usage", "--format", "json", database_url=db).stdout)


def test_sigterm_lets_16_open_streams_finish_and_flushes_usage(cluster: Cluster) -> None:
    url = f"{cluster.url}/maas/chaos/nvidia/chat/completions"
    started = threading.Barrier(17)

    def one(_: int) -> str:
        body = {"messages": [{"role": "user", "content": PROMPT + " " + PROMPT}], "stream": True}
        with httpx.stream("POST", url, json=body, headers={"authorization": f"Bearer {cluster.key}"}, timeout=60) as r:
            lines = r.iter_lines()
            first = next(lines)
            started.wait(30)
            return "\n".join([first, *lines])

    with ThreadPoolExecutor(16) as pool:
        futures = [pool.submit(one, i) for i in range(16)]
        started.wait(30)  # all 16 streams are open and have their first chunk
        cluster.server.popen.send_signal(signal.SIGTERM)
        texts = [f.result(timeout=60) for f in futures]
    assert cluster.server.popen.wait(40) == 0
    for text in texts:
        assert text.rstrip().endswith("data: [DONE]") and '"error"' not in text
        assert text.count('"content"') >= 17  # every word of the long answer arrived
    rows = [r for r in _usage(cluster.db) if r["model"] == "chaos"]
    assert len(rows) == 16 and {r["status"] for r in rows} == {200}


def test_a_client_that_goes_away_cancels_its_upstream_request(cluster: Cluster) -> None:
    body = {"messages": [{"role": "user", "content": " ".join([PROMPT] * 20)}], "stream": True}
    headers = {"authorization": f"Bearer {cluster.key}"}
    with httpx.stream(
        "POST", f"{cluster.url}/maas/chaos/nvidia/chat/completions", json=body, headers=headers, timeout=30
    ) as r:
        lines = r.iter_lines()
        next(lines), next(lines)
    with httpx.Client(base_url=cluster.url, headers=headers) as admin:

        def in_flight() -> int:
            return sum(e["health"]["in_flight"] for e in admin.get("/admin/endpoints").json()["data"] if e["health"])

        wait_for(lambda: in_flight() == 0, 5, "no request in flight", interval=0.1)
        # The only request of this cluster's fresh store: its record comes in the usage writer's next batch.
        rows = wait_for(lambda: admin.get("/admin/usage").json()["data"], 10, "the usage record of the stream")
    assert rows[0]["status"] == 499 and rows[0]["error"] == "client_closed"
    assert 0 < rows[0]["completion_tokens"] < 160  # charged for what was streamed before the client left
