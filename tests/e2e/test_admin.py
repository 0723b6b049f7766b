"""/admin: the catalogue and accounts are editable over HTTP, and edits serve at once."""

from __future__ import annotations

import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.conftest import Server, wait_for


def test_admin_needs_the_admin_key_or_an_admin_users_key(server: Server) -> None:
    assert httpx.get(server.url + "/admin/models").status_code == 401
    assert httpx.get(server.url + "/admin/models", headers={"authorization": "Bearer wrong"}).status_code == 401
    with server.admin() as admin:
        admin.post("/admin/users", json={"name": "plain", "password": "longenough"})
        key = admin.post("/admin/keys", json={"user": "plain"}).json()["key"]
    with server.client(key) as c:
        r = c.get("/admin/models")
        assert r.status_code == 403 and r.json()["error"]["code"] == "admin_only"
    with server.client() as c:  # the first-start key belongs to the admin user
        assert c.get("/admin/models").status_code == 200


def test_a_deployment_added_through_admin_serves_immediately(server: Server) -> None:
    with server.admin() as admin:
        assert (
            admin.post("/admin/chips", json={"id": "metax", "name": "MetaX", "alias": "accelerator B"}).status_code
            == 201
        )
        assert (
            admin.post(
                "/admin/models", json={"name": "llama-2-7b-chat", "context_length": 4096, "family": "llama"}
            ).status_code
            == 201
        )
        dep = admin.post(
            "/admin/deployments",
            json={"model": "llama-2-7b-chat", "chip": "metax", "price": {"input": 0.5, "output": 1}},
        )
        assert dep.status_code == 201, dep.text
        ep = admin.post(
            "/admin/endpoints",
            json={
                "deployment": "llama-2-7b-chat@metax",
                "url": server.upstreams["sse"].url,
                "api_key": "upstream-secret",
                "weight": 3,
            },
        )
        assert ep.status_code == 201, ep.text
        view = ep.json()
        assert view["deployment"] == "llama-2-7b-chat@metax" and view["state"] == "running" and view["weight"] == 3
        assert "upstream-secret" not in ep.text
        with server.client() as c:
            r = c.post(
                "/maas/llama-2-7b-chat/metax/chat/completions", json={"messages": [{"role": "user", "content": "x"}]}
            )
            assert r.status_code == 200, r.text
            # Stopping the only endpoint makes the cell answer 503 with its state.
            assert admin.patch(f"/admin/endpoints/{view['id']}", json={"state": "stopped"}).json()["state"] == "stopped"
            r = c.post(
                "/maas/llama-2-7b-chat/metax/chat/completions", json={"messages": [{"role": "user", "content": "x"}]}
            )
            assert r.status_code == 503 and "stopped" in r.json()["error"]["message"]
        assert admin.delete(f"/admin/deployments/{dep.json()['id']}").status_code == 200
        assert admin.delete("/admin/models/llama-2-7b-chat").status_code == 200


def test_admin_bad_input_changes_nothing(server: Server) -> None:
    with server.admin() as admin:
        before = admin.get("/admin/models").json()["data"]
        r = admin.post("/admin/models", json={"name": "x", "context_length": "long"})
        assert r.status_code == 400 and r.json()["error"]["param"] == "context_length"
        r = admin.post("/admin/models", json={"name": "x", "surprise": 1})
        assert r.status_code == 400 and r.json()["error"]["param"] == "surprise"
        r = admin.post("/admin/catalog", content="models:\n  - {name: y, context_length: -5}\n")
        assert r.status_code == 400 and "request body:2" in r.json()["error"]["message"]
        r = admin.post("/admin/deployments", json={"model": "qwen-72b", "chip": "nvidia"})
        assert r.status_code == 409
        r = admin.post("/admin/endpoints", json={"deployment": "nope@nvidia", "url": "http://127.0.0.1:1/v1"})
        assert r.status_code == 404
        assert admin.get("/admin/models").json()["data"] == before


def test_admin_pin_suffix_sends_to_one_endpoint(server: Server) -> None:
    with server.admin() as admin:
        eps = [e for e in admin.get("/admin/endpoints").json()["data"] if e["deployment"] == "chatglm3-6b@biren"]
    failing = next(e for e in eps if e["url"] == server.upstreams["fail"].url)
    working = next(e for e in eps if e["url"] == server.upstreams["sse"].url)
    body = {"messages": [{"role": "user", "content": "x"}]}
    with server.client(f"{server.key}-{failing['id']}") as c:
        assert c.post("/maas/chatglm3-6b/biren/chat/completions", json=body).status_code == 502
    with server.client(f"{server.key}-{working['id']}") as c:
        assert c.post("/maas/chatglm3-6b/biren/chat/completions", json=body).status_code == 200


def test_admin_lists_have_data(server: Server) -> None:
    with server.admin() as admin:
        for what in ("users", "keys", "chips", "models", "deployments", "endpoints"):
            r = admin.get(f"/admin/{what}")
            assert r.status_code == 200 and isinstance(r.json()["data"], list) and r.json()["data"], what
        keys = admin.get("/admin/keys").json()["data"]
        one = admin.get(f"/admin/keys/{keys[0]['id']}").json()
        assert one["prefix"] == keys[0]["prefix"] and one["id"] == keys[0]["id"]
        assert admin.get("/admin/users/not-a-number").json()["error"]["code"] == "user_not_found"
        assert admin.get("/admin/chips/no-such-chip").status_code == 404
        assert admin.get("/admin/models/qwen-72b").json()["context_length"] == 2048
    assert all("key_hash" not in k and "key" not in k for k in keys)
    assert "/admin/models" in httpx.get(server.url + "/openapi.json").text


def test_a_cell_limit_applies_to_everyone_together(server: Server) -> None:
    with server.temporary_cell("qwen-72b", "iluvatar", {"url": server.upstreams["slowish"].url}) as dep:
        with server.admin() as admin:
            r = admin.patch(f"/admin/deployments/{dep['id']}", json={"limits": {"concurrency": 1}})
        assert r.json()["limits"]["concurrency"] == 1
        url = "/maas/qwen-72b/iluvatar/completions"
        with server.client() as c:
            with c.stream("POST", url, json={"prompt": "x y z", "stream": True}) as first:
                # Streaming now, chunks 0.3 s apart: the first holds the cell's only slot.
                assert first.status_code == 200
                second = c.post(url, json={"prompt": "y"})
                assert second.status_code == 429 and second.headers["retry-after"] == "1"
                first.read()
            assert c.post(url, json={"prompt": "z"}).status_code == 200  # the slot came back


def test_an_endpoint_concurrency_cap_holds_under_a_burst(server: Server) -> None:
    with server.temporary_cell("chatglm3-6b", "iluvatar", {"url": server.upstreams["slow"].url, "max_concurrency": 1}):
        url = "/maas/chatglm3-6b/iluvatar/chat/completions"
        body = {"messages": [{"role": "user", "content": "a"}]}  # answered in about 4 s
        barrier = threading.Barrier(6)

        def one(_: int) -> int:
            barrier.wait(10)
            return c.post(url, json=body).status_code

        with server.client() as c, ThreadPoolExecutor(6) as pool:
            statuses = Counter(pool.map(one, range(6)))
        assert statuses == {200: 1, 429: 5}


def test_a_client_leaving_a_non_stream_request_cancels_it(server: Server) -> None:
    with (
        server.temporary_cell("chatglm3-6b", "iluvatar", {"url": server.upstreams["slow"].url}),
        server.admin() as admin,
    ):
        body = {"messages": [{"role": "user", "content": "one two three four"}]}
        wait_for(server.usage_written, 10, "earlier tests' usage records written")  # batches go out every 0.5 s
        before = max((r["id"] for r in admin.get("/admin/usage").json()["data"]), default=0)
        with server.client() as c, pytest.raises(httpx.ReadTimeout):
            c.post("/maas/chatglm3-6b/iluvatar/chat/completions", json=body, timeout=0.7)
        # Noticed at the disconnect, written in the next batch.
        rows = wait_for(
            lambda: [r for r in admin.get("/admin/usage").json()["data"] if r["id"] > before],
            10,
            "the usage record of the request the client left",
        )
        (row,) = rows
        assert row["model"] == "chatglm3-6b" and row["chip"] == "iluvatar"
        assert row["status"] == 499 and row["error"] == "client_closed" and row["cost"] == 0
