"""Two `mxn serve` replicas sharing PostgreSQL and Redis: quota, rate limits and codes stay exact."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import httpx
import openai
import pytest
from openai import OpenAI

from tests.conftest import Proc, mxn, pg_database, start_serve, wait_for
from tests.e2e.conftest import ADMIN_KEY

pytestmark = pytest.mark.postgres  # the replicas share a PostgreSQL database (and Redis)

CATALOG = """
models:
  - {{name: acct-chat, context_length: 4096, tokenizer: "tiktoken:cl100k_base"}}
deployments:
  - model: acct-chat
    chip: nvidia
    endpoints: [{{url: "{nousage}"}}]
  - model: acct-chat
    chip: amd
    endpoints: [{{url: "{dies}"}}]
"""


@dataclass
class Replicas:
    urls: list[str]
    database_url: str
    procs: list[Proc]

    def admin(self, i: int = 0) -> httpx.Client:
        return httpx.Client(base_url=self.urls[i], headers={"authorization": f"Bearer {ADMIN_KEY}"}, timeout=30)

    def user_key(self, name: str, *flags: str, group: str = "unlimited") -> tuple[int, str]:
        if not any(u["name"] == name for u in self.admin().get("/admin/users").json()["data"]):
            mxn("users", "create", name, "--group", group, database_url=self.database_url)
        key = mxn("keys", "create", "--user", name, *flags, database_url=self.database_url).stdout.split()[-1]
        key_id = max(k["id"] for k in self.admin().get("/admin/keys", params={"user": name}).json()["data"])
        return key_id, key

    def usage(self, key_id: int) -> list[dict]:
        return [r for r in self.admin().get("/admin/usage").json()["data"] if r["key_id"] == key_id]


@pytest.fixture(scope="module")
def replicas(upstreams, redis_url, tmp_path_factory) -> Iterator[Replicas]:  # type: ignore[no-untyped-def]
    tmp = tmp_path_factory.mktemp("replicas")
    catalog = tmp / "catalog.yaml"
    catalog.write_text(CATALOG.format(nousage=upstreams["nousage"].url, dies=upstreams["dies"].url))
    env = {"MXN_ADMIN_KEY": ADMIN_KEY, "MXN_REDIS_URL": redis_url, "MXN_DEMO": "0"}
    for database_url in pg_database():
        procs: list[Proc] = []
        try:
            for i in range(2):
                log = tmp / f"serve{i}.log"
                procs.append(start_serve(log, database_url, "--catalog", str(catalog), env=env))
            yield Replicas([p.url for p in procs], database_url, procs)
        finally:
            for p in procs:
                p.stop()


def client(replicas: Replicas, i: int, key: str) -> OpenAI:
    return OpenAI(base_url=f"{replicas.urls[i % 2]}/maas/acct-chat/nvidia/", api_key=key, max_retries=0, timeout=60)


MESSAGES = [{"role": "user", "content": "count me"}]


def wait_for_usage(replicas: Replicas, key_id: int, count: int) -> list[dict]:
    def enough() -> list[dict] | None:
        rows = replicas.usage(key_id)
        return rows if len(rows) >= count else None

    return wait_for(enough, 15, f"{count} usage records of key {key_id}")


def test_quota_for_exactly_50_admits_exactly_50_of_200(replicas: Replicas) -> None:
    _, probe = replicas.user_key("calibrate")
    r = client(replicas, 0, probe).chat.completions.create(model="acct-chat", messages=MESSAGES)
    cost = r.usage.prompt_tokens + r.usage.completion_tokens
    completion = r.usage.completion_tokens
    key_id, key = replicas.user_key("quota50", "--quota", str(50 * cost))

    def one(i: int) -> str:
        try:
            client(replicas, i, key).chat.completions.create(
                model="acct-chat", messages=MESSAGES, max_tokens=completion
            )
            return "ok"
        except openai.RateLimitError as exc:
            return str(exc.body.get("code") if isinstance(exc.body, dict) else exc.body)

    with ThreadPoolExecutor(40) as pool:
        outcomes = Counter(pool.map(one, range(200)))
    assert outcomes == {"ok": 50, "insufficient_quota": 150}
    rows = wait_for_usage(replicas, key_id, 200)
    balance = replicas.admin(1).get(f"/admin/keys/{key_id}").json()["quota"]
    spent = sum(row["cost"] for row in rows)
    assert balance == 50 * cost - spent == 0
    assert sum(row["status"] == 200 for row in rows) == 50


def test_rpm_limit_admits_exactly_n_across_replicas_with_the_right_retry_after(replicas: Replicas) -> None:
    n = 5
    _, key = replicas.user_key("rpm5", "--rpm", str(n))
    barrier = threading.Barrier(15)
    first_admitted: list[float] = []

    def one(i: int) -> tuple[int, dict[str, str]]:
        barrier.wait(10)
        r = httpx.post(
            f"{replicas.urls[i % 2]}/maas/acct-chat/nvidia/chat/completions",
            json={"messages": MESSAGES},
            headers={"authorization": f"Bearer {key}"},
            timeout=30,
        )
        if r.status_code == 200:
            first_admitted.append(time.time())
        return r.status_code, dict(r.headers)

    start_time = time.time()
    with ThreadPoolExecutor(15) as pool:
        results = list(pool.map(one, range(15)))
    statuses = Counter(status for status, _ in results)
    assert statuses == {200: n, 429: 15 - n}
    ok_headers = next(h for status, h in results if status == 200)
    assert ok_headers["x-ratelimit-limit-requests"] == str(n)
    # The window frees its first slot 60 s after the first admission: Retry-After says so, to the second.
    limited = [h for status, h in results if status == 429]
    expected = 60 - (time.time() - start_time)
    for h in limited:
        assert abs(int(h["retry-after"]) - expected) <= 1.5, (h["retry-after"], expected)
        assert h["x-ratelimit-remaining-requests"] == "0"
    # A later request on either replica is still refused inside the window.
    r = httpx.post(
        f"{replicas.urls[1]}/maas/acct-chat/nvidia/chat/completions",
        json={"messages": MESSAGES},
        headers={"authorization": f"Bearer {key}"},
        timeout=30,
    )
    assert r.status_code == 429 and r.json()["error"]["code"] == "rate_limit_exceeded"


def test_a_code_redeemed_by_20_concurrent_requests_counts_once(replicas: Replicas) -> None:
    mxn("users", "create", "redeemer", "--quota", "100", database_url=replicas.database_url)
    _, key = replicas.user_key("redeemer")
    code = mxn("codes", "create", "--quota", "1000", "--count", "1", database_url=replicas.database_url).stdout.split()[
        -1
    ]
    barrier = threading.Barrier(20)

    def one(i: int) -> int:
        barrier.wait(10)
        return httpx.post(
            f"{replicas.urls[i % 2]}/api/codes/redeem",
            json={"code": code},
            headers={"authorization": f"Bearer {key}"},
            timeout=30,
        ).status_code

    with ThreadPoolExecutor(20) as pool:
        statuses = Counter(pool.map(one, range(20)))
    assert statuses == {200: 1, 404: 19}
    me = httpx.get(f"{replicas.urls[0]}/api/me", headers={"authorization": f"Bearer {key}"}).json()
    assert me["quota"] == 1100


def test_upstream_dying_mid_stream_settles_to_what_was_streamed(replicas: Replicas) -> None:
    key_id, key = replicas.user_key("streamer", "--quota", "100000")
    body = {"messages": [{"role": "user", "content": "one two three four five six"}], "stream": True, "max_tokens": 500}
    r = httpx.post(
        f"{replicas.urls[0]}/maas/acct-chat/amd/chat/completions",
        json=body,
        headers={"authorization": f"Bearer {key}"},
        timeout=30,
    )
    assert r.status_code == 200 and r.text.rstrip().endswith("data: [DONE]") and '"error"' in r.text
    (row,) = wait_for_usage(replicas, key_id, 1)
    assert row["status"] == 502 and 0 < row["completion_tokens"] < 500
    assert row["cost"] == row["prompt_tokens"] + row["completion_tokens"]
    balance = replicas.admin().get(f"/admin/keys/{key_id}").json()["quota"]
    assert balance == 100000 - row["cost"]


def test_keys_never_appear_in_clear(replicas: Replicas) -> None:
    key_id, key = replicas.user_key("secretive")
    client(replicas, 0, key).chat.completions.create(model="acct-chat", messages=MESSAGES)
    with replicas.admin() as admin:
        listed = admin.get("/admin/keys").text + admin.get(f"/admin/keys/{key_id}").text
        listed += admin.get("/admin/usage", params={"format": "csv"}).text
    me = httpx.get(f"{replicas.urls[1]}/api/me", headers={"authorization": f"Bearer {key}"}).text
    assert key not in listed and key not in me and key[3:] not in listed
    logs = "".join(p.output() for p in replicas.procs)
    assert key not in logs and key[3:20] not in logs
    dump = _database_text(replicas.database_url)
    assert key not in dump and key[3:20] not in dump


def _database_text(url: str) -> str:
    """Every table's rows as text, to grep for secrets."""
    import asyncio

    import asyncpg

    async def dump() -> str:
        conn = await asyncpg.connect(url.replace("postgresql+asyncpg", "postgresql"))
        try:
            tables = [r[0] for r in await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname='public'")]
            return "\n".join([str(await conn.fetch(f'SELECT * FROM "{t}"')) for t in tables])
        finally:
            await conn.close()

    return asyncio.run(dump())
