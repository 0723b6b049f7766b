"""Alerts end to end: raised by real traffic through `mxn serve`, delivered to a real HTTP webhook, signed."""

from __future__ import annotations

import hashlib
import hmac
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tests.conftest import Proc, Server, first_start_key, free_port, mxn, start_serve, start_upstream, wait_for

SECRET = "whsec-test-0123456789"
KINDS = ("usage_spike", "new_ip", "quota_80", "quota_100", "endpoint_down")
CATALOG = """
models:
  - {{name: chat-model, context_length: 4096, tokenizer: "tiktoken:cl100k_base"}}
deployments:
  - model: chat-model
    chip: nvidia
    endpoints: [{{url: "{good}"}}]
  - model: chat-model
    chip: amd
    endpoints: [{{url: "{bad}"}}]
"""


class Webhook:
    """A real HTTP server that records every delivery; its first answer is a 500, to make mxn retry."""

    def __init__(self) -> None:
        self.received: list[tuple[dict[str, str], bytes]] = []
        self.calls = 0
        self.port = free_port()
        app = Starlette(routes=[Route("/hook", self.hook, methods=["POST"])])
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    async def hook(self, request: Request) -> Response:
        self.calls += 1
        if self.calls == 1:
            return Response("try again", status_code=500)
        self.received.append((dict(request.headers), await request.body()))
        return Response("ok")

    def deliveries(self, kind: str) -> list[dict[str, Any]]:
        out = []
        for headers, body in list(self.received):
            ts, signature = headers["x-mxn-timestamp"], headers["x-mxn-signature"]
            expected = "sha256=" + hmac.new(SECRET.encode(), f"{ts}.".encode() + body, hashlib.sha256).hexdigest()
            assert hmac.compare_digest(signature, expected), "a delivery with a bad signature"
            assert abs(time.time() - int(ts)) < 120
            alert = orjson.loads(body)
            if alert["kind"] == kind:
                out.append(alert)
        return out

    def __enter__(self) -> Webhook:
        self.thread.start()
        wait_for(lambda: self.server.started, 10, "the webhook receiver listening", interval=0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Webhook, Proc]]:
    tmp = tmp_path_factory.mktemp("alerts")
    good = start_upstream(tmp, "sse")
    bad = start_upstream(tmp, "fail")
    catalog = tmp / "catalog.yaml"
    catalog.write_text(CATALOG.format(good=good.url, bad=bad.url))
    db = f"sqlite+aiosqlite:///{tmp / 'mxn.db'}"
    with Webhook() as hook:
        env = {
            "MXN_ADMIN_KEY": "sk-admin-alerts",
            "MXN_ALERT_WEBHOOK": f"http://127.0.0.1:{hook.port}/hook",
            "MXN_ALERT_WEBHOOK_SECRET": SECRET,
            "MXN_ALERT_BACKOFF": "0.2",
            "MXN_ALERT_INTERVAL": "0.5",
            "MXN_ALERT_SPIKE_WINDOW": "3",
            "MXN_ALERT_SPIKE_BASELINE": "2",
            "MXN_ALERT_SPIKE_FACTOR": "3",
            "MXN_ALERT_SPIKE_MIN_TOKENS": "100",
            "MXN_BREAKER_FAILURES": "2",
        }
        proc = start_serve(tmp / "serve.log", db, "--catalog", str(catalog), env=env)
        try:
            yield Server(proc.url, first_start_key(proc.output()), "sk-admin-alerts", db, proc, {}), hook, proc
        finally:
            proc.stop()
            good.stop()
            bad.stop()


def user_with_key(server: Server, name: str, quota: int | None = None) -> tuple[str, int]:
    # The `unlimited` group: no rate limits in the way of the traffic these tests make.
    args = ["users", "create", name, "--group", "unlimited"] + (["--quota", str(quota)] if quota is not None else [])
    mxn(*args, database_url=server.database_url)
    key = mxn("keys", "create", "--user", name, database_url=server.database_url).stdout.strip().splitlines()[-1]
    with server.admin() as admin:
        user_id = next(u["id"] for u in admin.get("/admin/users").json()["data"] if u["name"] == name)
    return key, user_id


def chat(server: Server, key: str, local_address: str = "127.0.0.1", chip: str = "nvidia") -> httpx.Response:
    transport = httpx.HTTPTransport(local_address=local_address)
    with httpx.Client(base_url=server.url, transport=transport, timeout=30) as c:
        return c.post(
            f"/maas/chat-model/{chip}/chat/completions",
            headers={"authorization": f"Bearer {key}"},
            json={"model": "chat-model", "messages": [{"role": "user", "content": "hello there, how are you"}]},
        )


def admin_alerts(server: Server, kind: str) -> list[dict[str, Any]]:
    with server.admin() as admin:
        return list(admin.get("/admin/alerts", params={"kind": kind}).json()["data"])


def test_key_used_from_a_new_address(setup: tuple[Server, Webhook, Proc]) -> None:
    server, hook, _ = setup
    key, _ = user_with_key(server, "roaming")
    assert chat(server, key).status_code == 200
    assert chat(server, key).status_code == 200
    assert not [a for a in admin_alerts(server, "new_ip") if a["details"]["ip"] == "127.0.0.2"]
    assert chat(server, key, "127.0.0.2").status_code == 200
    alert = wait_for(lambda: [a for a in hook.deliveries("new_ip") if a["details"]["ip"] == "127.0.0.2"])[0]
    assert alert["details"]["known"] == ["127.0.0.1"]
    assert chat(server, key, "127.0.0.2").status_code == 200  # the same new address alerts once
    time.sleep(1)  # not a wait: nothing marks a second alert not coming; this is the time it would have had
    assert len([a for a in admin_alerts(server, "new_ip") if a["details"]["ip"] == "127.0.0.2"]) == 1


def test_quota_80_and_100_percent(setup: tuple[Server, Webhook, Proc]) -> None:
    server, hook, _ = setup
    key, user_id = user_with_key(server, "thrifty", quota=200)
    statuses = []
    for _ in range(40):  # bounded: each request costs about 20 tokens of 200
        statuses.append(chat(server, key).status_code)
        if statuses[-1] == 429:
            break
    assert statuses[-1] == 429 and statuses.count(200) >= 5
    for kind in ("quota_80", "quota_100"):
        sent = wait_for(lambda kind=kind: [a for a in hook.deliveries(kind) if a["user_id"] == user_id])
        assert len(sent) == 1, kind
    # The user sees their own alerts, and nobody else's.
    with httpx.Client(base_url=server.url, headers={"authorization": f"Bearer {key}"}) as c:
        mine = c.get("/api/alerts").json()["data"]
    assert {a["kind"] for a in mine} == {"quota_80", "quota_100"}
    assert all(a["user_id"] == user_id for a in mine)


def test_usage_spike_against_the_keys_own_baseline(setup: tuple[Server, Webhook, Proc]) -> None:
    server, hook, _ = setup
    key, _ = user_with_key(server, "bursty")
    key_id = int(mxn("keys", "list", "--user", "bursty", database_url=server.database_url).stdout.split()[0])
    for _ in range(3):  # a quiet baseline: one request every 1.5 s
        assert chat(server, key).status_code == 200
        time.sleep(1.5)  # not a wait: the pace of the baseline is what the spike is measured against
    assert not [a for a in admin_alerts(server, "usage_spike") if a["key_id"] == key_id]
    for _ in range(12):  # then a burst
        assert chat(server, key).status_code == 200
    alert = wait_for(lambda: [a for a in hook.deliveries("usage_spike") if a["key_id"] == key_id])[0]
    assert alert["details"]["tokens"] >= 100 and alert["details"]["tokens"] >= 3 * alert["details"]["baseline"]


def test_endpoint_down_and_delivery_retried(setup: tuple[Server, Webhook, Proc]) -> None:
    server, hook, _ = setup
    # Two failures open the breaker (502 from the failing upstream, then 503: nothing left to try).
    assert [chat(server, server.key, chip="amd").status_code for _ in range(3)] == [502, 502, 503]
    alert = wait_for(lambda: hook.deliveries("endpoint_down"))[0]
    assert alert["details"]["deployment"] == "chat-model@amd"
    # The webhook answered its very first delivery with 500: that alert was sent again, and arrived.
    assert hook.calls >= 2
    listed = wait_for(lambda: [a for k in KINDS for a in admin_alerts(server, k) if a["delivered_at"]])
    assert any(a["attempts"] >= 2 for a in listed)
    # Every alert raised in this module reached the webhook, each exactly once.
    all_alerts = wait_for(
        lambda: (x := [a for k in KINDS for a in admin_alerts(server, k)]) and all(a["delivered_at"] for a in x) and x
    )
    ids = [orjson.loads(body)["id"] for _, body in hook.received]
    assert len(ids) == len(set(ids)) and set(ids) >= {a["id"] for a in all_alerts}
