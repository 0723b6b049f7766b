"""Redis stopped for 10 s under `mxn serve`, a Redis of the test's own: with `local`, two replicas go on answering,
each within its share of every limit (never a 500 or 503, the outage logged once); with `closed`, requests with
limits get 503 `limiter_unavailable`; either way shared enforcement is back within about 2 s of Redis answering."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import httpx
import pytest
import redis

from tests.conftest import BIG_GROUP, Proc, one_cell_catalog, pg_database, start_serve, start_upstream, wait_for
from tests.stores import PrivateRedis

ADMIN = "sk-admin-redis-outage-test"
BODY = {"model": "m", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 5}
OUTAGE = 10.0
MAX_REQUESTS = 1000  # during the outage, whatever the pace
BEAT_EVERY = 2.0  # ResilientLimiter's heartbeat
RECOVERY = 2.5  # probes every 0.5 s; the rest is scheduling on two busy cores
RPM = 40


def accounts(url: str, keys: dict[str, dict[str, int]]) -> dict[str, str]:
    """A user in a group with limits far above this load, and keys of it with these limits of their own."""
    with httpx.Client(base_url=url, headers={"authorization": f"Bearer {ADMIN}"}, timeout=30) as admin:
        assert admin.post("/admin/groups", json=BIG_GROUP).status_code == 201
        assert admin.post("/admin/users", json={"name": "u", "quota": 10**9, "group": "big"}).status_code == 201
        made = {}
        for name, limits in keys.items():
            r = admin.post("/admin/keys", json={"user": "u", "name": name, **limits})
            assert r.status_code == 201, r.text
            made[name] = r.json()["key"]
        return made


def ask(c: httpx.Client, key: str, stream: bool = False) -> httpx.Response:
    return c.post("/v1/chat/completions", json={**BODY, "stream": stream}, headers={"authorization": f"Bearer {key}"})


def outcome(r: httpx.Response) -> str:
    """`ok`, or the status and error code; a refusal must say when to retry."""
    if r.status_code == 200:
        return "ok"
    assert r.headers.get("retry-after"), (r.status_code, r.headers)
    return f"{r.status_code} {r.json()['error']['code']}"


def ready(c: httpx.Client) -> bool:
    return bool(c.get("/readyz").json()["status"] == "ready")


def env(tmp: Path, redis_url: str, **extra: str) -> dict[str, str]:
    return {
        "MXN_DEMO": "0",
        "MXN_ADMIN_KEY": ADMIN,
        "MXN_REDIS_URL": redis_url,
        "MXN_USAGE_JOURNAL_DIR": str(tmp / "journal"),
        **extra,
    }


def assert_outage_logged_once(proc: Proc) -> int:
    """What runs on Redis (the limiter, the auth-failure counter) logged one line when it went and one when it was
    back, no traceback; returns the lines said about the outage."""
    wait_for(lambda: proc.output().count(" recovered after ") >= 2, 5, "both recoveries logged")
    log = proc.output()
    assert "Traceback" not in log, log[-3000:]
    for dependency in ("redis", "auth-failure counter"):
        assert log.count(f"{dependency} unavailable") == 1, log[-3000:]
        assert log.count(f"{dependency} recovered") == 1, log[-3000:]
    return sum(" unavailable" in line or " recovered after " in line for line in log.splitlines())


@pytest.mark.postgres  # the replicas share a PostgreSQL database
def test_redis_down_for_10s_local_replicas_keep_within_their_shares_and_shared_limits_resume_at_once(
    private_redis: PrivateRedis, tmp_path: Path
) -> None:
    upstream = start_upstream(tmp_path, "sse")
    catalog = one_cell_catalog(tmp_path, upstream.url)
    procs: list[Proc] = []
    try:
        for database_url in pg_database():
            try:
                for i in range(2):
                    procs.append(
                        start_serve(
                            tmp_path / f"serve{i}.log",
                            database_url,
                            "--catalog",
                            str(catalog),
                            env=env(tmp_path, private_redis.url),
                        )
                    )
                _local_outage(private_redis, procs)
            finally:
                for p in procs:
                    p.stop()
    finally:
        upstream.stop()


def _local_outage(private_redis: PrivateRedis, procs: list[Proc]) -> None:
    keys = accounts(procs[0].url, {"probe": {}, "limited": {"rpm": RPM}, "after": {"rpm": 4}})
    clients = [httpx.Client(base_url=p.url, timeout=30) for p in procs]
    try:
        for c in clients:
            assert ask(c, keys["probe"]).status_code == 200
        # Each replica learns the live replicas at its heartbeat: both must have read the list holding both.
        with redis.Redis(port=private_redis.port) as r:
            wait_for(lambda: r.zcard("mxn:replicas") == 2, 10, "both replicas registered")
        time.sleep(BEAT_EVERY + 0.5)

        private_redis.stop()
        seen = [Counter[str](), Counter[str]()]
        others, limits = Counter[str](), set()
        sent, started = 0, time.monotonic()
        while time.monotonic() - started < OUTAGE and sent < MAX_REQUESTS:
            i = sent % 2
            r = ask(clients[i], keys["limited"], stream=sent % 4 >= 2)
            seen[i][outcome(r)] += 1
            limits.add(r.headers.get("x-ratelimit-limit-requests"))
            if sent % 10 < 2:  # logins and the admin key are counted in Redis too: they go on, unthrottled
                admin = clients[i].get("/admin/keys", headers={"authorization": f"Bearer {ADMIN}"})
                others[f"admin {admin.status_code}"] += 1
                others[f"wrong key {ask(clients[i], 'sk-wrong').status_code}"] += 1
            sent += 1
            time.sleep(0.05)
        down = [c.get("/readyz") for c in clients]
        assert all(r.status_code == 200 and "redis is not reachable" in r.json()["down"] for r in down), down
        print(f"local, Redis down {OUTAGE:g} s: replica 0 {dict(seen[0])}, replica 1 {dict(seen[1])}; {dict(others)}")
        print(f"local: x-ratelimit-limit-requests meanwhile {limits}")
        assert set(others) == {"admin 200", "wrong key 401"}, others
        # Each replica admitted its share of the limit, exactly; the rest were told to wait, never a 5xx.
        assert [s["ok"] for s in seen] == [RPM // 2, RPM // 2], seen
        assert set(seen[0] + seen[1]) == {"ok", "429 rate_limit_exceeded"}, seen

        private_redis.start()
        answering = time.monotonic()
        wait_for(lambda: all(ready(c) for c in clients), 5, "both replicas ready", interval=0.05)
        recovered = time.monotonic() - answering
        # Shared again: a limit of 4 used up on one replica is used up on the other (alone, each would have 2).
        assert [ask(clients[0], keys["after"]).status_code for _ in range(4)] == [200] * 4
        assert [outcome(ask(clients[1], keys["after"])) for _ in range(2)] == ["429 rate_limit_exceeded"] * 2
        print(f"local: both replicas ready and on shared limits {recovered:.2f} s after Redis answered")
        assert recovered < RECOVERY
    finally:
        for c in clients:
            c.close()
    print(f"local: log lines about the outage, per replica: {[assert_outage_logged_once(p) for p in procs]}")


def test_redis_down_for_10s_closed_refuses_limited_requests_with_503_and_serves_again_at_once(
    private_redis: PrivateRedis, tmp_path: Path
) -> None:
    upstream = start_upstream(tmp_path, "sse")
    catalog = one_cell_catalog(tmp_path, upstream.url)
    serve = start_serve(
        tmp_path / "serve.log",
        f"sqlite+aiosqlite:///{tmp_path / 'mxn.db'}",
        "--catalog",
        str(catalog),
        env=env(tmp_path, private_redis.url, MXN_LIMITS_WHEN_REDIS_DOWN="closed"),
    )
    try:
        unlimited = {"rpm": 0, "rpd": 0, "tpm": 0, "concurrency": 0}
        keys = accounts(serve.url, {"limited": {"rpm": RPM}, "unlimited": unlimited})
        with httpx.Client(base_url=serve.url, timeout=30) as c:
            assert ask(c, keys["limited"]).status_code == 200
            private_redis.stop()
            seen, free = Counter[str](), Counter[str]()
            sent, started = 0, time.monotonic()
            while time.monotonic() - started < OUTAGE and sent < MAX_REQUESTS:
                seen[outcome(ask(c, keys["limited"], stream=sent % 2 == 1))] += 1
                if sent % 10 == 0:  # a key without limits needs nothing of Redis
                    free[outcome(ask(c, keys["unlimited"]))] += 1
                sent += 1
                time.sleep(0.05)
            print(f"closed, Redis down {OUTAGE:g} s: limited key {dict(seen)}, key without limits {dict(free)}")
            assert set(seen) == {"503 limiter_unavailable"} and seen.total() >= 50, seen
            assert set(free) == {"ok"}, free

            private_redis.start()
            answering = time.monotonic()
            wait_for(lambda: ask(c, keys["limited"]).status_code == 200, 5, "answered again", interval=0.05)
            recovered = time.monotonic() - answering
            print(f"closed: answered again {recovered:.2f} s after Redis answered")
            assert recovered < RECOVERY
            assert ready(c)
        print(f"closed: log lines about the outage: {assert_outage_logged_once(serve)}")
    finally:
        serve.stop()
        upstream.stop()
