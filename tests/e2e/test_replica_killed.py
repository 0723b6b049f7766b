"""One of two replicas SIGKILLed under load, on PostgreSQL and Redis: every request a client saw answered in full
has its usage record, once; the survivor moves the dead replica's journal into the store and gives back what its
holds had not spent, so that the balance spent is the recorded cost (at most what the requests in flight at the
kill had reserved more)."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest
from openai import OpenAI
from sqlalchemy import func, select

from mxn.store.db import create_engine, sessionmaker
from mxn.store.models import ApiKey, QuotaHold, Usage, User
from tests.conftest import BIG_GROUP, one_cell_catalog, pg_database, start_serve, start_upstream, wait_for

pytestmark = pytest.mark.postgres

ADMIN = "sk-admin-replica-killed-test"
USER_QUOTA, KEY_QUOTA = 10**8, 5 * 10**7
MAX_TOKENS = 16
CLIENTS, KILL_AT, RUN_FOR = 16, 3.0, 6.0


def _store(url: str) -> dict[str, object]:
    """What the store says after the run: balances, usage records by request id, holds left."""

    async def read() -> dict[str, object]:
        engine = create_engine(url)
        try:
            async with sessionmaker(engine)() as s:
                user = (await s.execute(select(User.quota).where(User.name == "u"))).scalar_one()
                key = (await s.execute(select(ApiKey.quota).where(ApiKey.quota.is_not(None)))).scalar_one()
                records = (await s.execute(select(Usage.request_id, Usage.cost, Usage.status))).all()
                holds = (await s.execute(select(func.count()).select_from(QuotaHold))).scalar_one()
                return {"user": user, "key": key, "records": records, "holds": holds}
        finally:
            await engine.dispose()

    return asyncio.run(read())


def test_a_replica_killed_under_load_loses_no_usage_record_and_keeps_no_balance(redis_url: str, tmp_path: Path) -> None:
    upstream = start_upstream(tmp_path, "sse", "--delay", "0.01")  # requests are in flight at the kill
    catalog = one_cell_catalog(tmp_path, upstream.url)
    database = pg_database()
    url = next(database)
    env = {
        "MXN_DEMO": "0",
        "MXN_ADMIN_KEY": ADMIN,
        "MXN_REDIS_URL": redis_url,
        "MXN_USAGE_JOURNAL_DIR": str(tmp_path / "journal"),  # shared, as by replicas on one host
    }
    args = ("--catalog", str(catalog))
    replicas = []
    try:
        replicas.append(start_serve(tmp_path / "a.log", url, *args, env=env))
        replicas.append(start_serve(tmp_path / "b.log", url, *args, env=env))
        with httpx.Client(base_url=replicas[0].url, headers={"authorization": f"Bearer {ADMIN}"}, timeout=30) as a:
            assert a.post("/admin/groups", json=BIG_GROUP).status_code == 201
            assert a.post("/admin/users", json={"name": "u", "quota": USER_QUOTA, "group": "big"}).status_code == 201
            key = a.post("/admin/keys", json={"user": "u", "quota": KEY_QUOTA}).json()["key"]

        answered: list[str] = []  # request ids of answers seen in full
        failed: Counter[str] = Counter()
        lock = threading.Lock()
        stop_at = time.monotonic() + RUN_FOR

        def client(i: int) -> None:
            sdks = [OpenAI(base_url=f"{r.url}/v1", api_key=key, max_retries=0, timeout=10) for r in replicas]
            n = 0
            while time.monotonic() < stop_at and n < 2000:
                n += 1
                sdk, stream = sdks[(i + n) % 2], (i + n) % 4 < 2
                messages = [{"role": "user", "content": f"client {i} request {n}"}]
                try:
                    if stream:
                        chunks = sdk.chat.completions.create(
                            model="m", messages=messages, max_tokens=MAX_TOKENS, stream=True,
                            stream_options={"include_usage": True},
                        )  # fmt: skip
                        usage = [c.usage for c in chunks if c.usage]  # ends at [DONE], or raises
                        assert usage, "a whole stream carries its usage"
                        request_id = chunks.response.headers["x-request-id"]
                    else:
                        raw = sdk.chat.completions.with_raw_response.create(
                            model="m", messages=messages, max_tokens=MAX_TOKENS
                        )
                        assert raw.parse().usage
                        request_id = raw.headers["x-request-id"]
                except (openai.APIError, httpx.HTTPError) as exc:
                    with lock:
                        failed[type(exc).__name__] += 1
                    continue
                with lock:
                    answered.append(request_id)

        with ThreadPoolExecutor(CLIENTS) as pool:
            running = [pool.submit(client, i) for i in range(CLIENTS)]
            time.sleep(KILL_AT)
            os.kill(replicas[1].popen.pid, signal.SIGKILL)
            replicas[1].popen.wait(10)
            for done in running:
                done.result()

        # The survivor sweeps every 10 s; the dead replica's leases run 15 s past its last renewal.
        wait_for(lambda: _store(url)["holds"] == 0, 60, "every hold ended", interval=1)
        store = _store(url)
        records = store["records"]
        assert isinstance(records, list)
        by_id = Counter(r.request_id for r in records)
        missing = [r for r in answered if by_id[r] != 1]
        recorded = sum(r.cost for r in records)
        spent_user, spent_key = USER_QUOTA - store["user"], KEY_QUOTA - store["key"]  # type: ignore[operator]
        # What the requests in flight at the kill (one per client at most) had reserved: prompt and completion.
        in_flight = CLIENTS * (64 + MAX_TOKENS)
        print(
            f"\nanswered {len(answered)}, failed {dict(failed)}, records {len(records)}, missing {len(missing)}, "
            f"user spent {spent_user} key spent {spent_key} recorded {recorded} (bound {in_flight})"
        )
        assert len(answered) > 200 and failed, "load on both replicas, and the kill was seen"
        assert not missing, f"{len(missing)} answered requests without exactly one record"
        assert len(by_id) == len(records), "no record twice"
        for spent in (spent_user, spent_key):
            assert 0 <= spent - recorded <= in_flight, (spent, recorded, in_flight)
        for line in replicas[0].output().splitlines():
            assert "Traceback" not in line, replicas[0].output()[-4000:]
        assert "of a replica that stopped" in replicas[0].output(), "the dead replica's holds were given back"
    finally:
        for proc in replicas:
            proc.stop()
        upstream.stop()
        database.close()
