"""/api for users: console login sessions, their own keys with the password asked again, usage, CSV."""

from __future__ import annotations

import csv
import io

import httpx

from tests.conftest import Server, mxn, wait_for

CHAT = "/maas/qwen1.5-14b-chat/nvidia/chat/completions"
MSG = [{"role": "user", "content": "hi"}]


def _user(server: Server, name: str) -> None:
    mxn("users", "create", name, "--password-stdin", database_url=server.database_url, stdin="s3cret-pass\n")


def test_login_session_creates_a_key_once_with_the_password_again(server: Server) -> None:
    _user(server, "console-user")
    with httpx.Client(base_url=server.url, timeout=30) as web:
        assert web.post("/api/login", json={"name": "console-user", "password": "nope"}).status_code == 401
        r = web.post("/api/login", json={"name": "console-user", "password": "s3cret-pass"})
        assert r.status_code == 200 and "httponly" in r.headers["set-cookie"].lower()
        assert web.get("/api/me").json()["user"] == "console-user"
        # Creating a key needs the password again.
        r = web.post("/api/keys", json={"name": "laptop", "password": "wrong"})
        assert r.status_code == 403 and r.json()["error"]["code"] == "wrong_password"
        r = web.post("/api/keys", json={"name": "laptop", "password": "s3cret-pass"})
        assert r.status_code == 201
        key, key_id = r.json()["key"], r.json()["id"]
        listed = web.get("/api/keys").text
        assert key not in listed and r.json()["prefix"] in listed
        # The session itself can chat (the console's playground) and its usage is the user's.
        assert web.post(CHAT, json={"messages": MSG}).status_code == 200
        # A cookie alone cannot post a form: JSON is required (cross-site forms cannot send it).
        r = web.post(CHAT, content=b"messages=x", headers={"content-type": "application/x-www-form-urlencoded"})
        assert r.status_code == 403 and r.json()["error"]["code"] == "csrf"
        with server.client(key) as c:
            assert c.post(CHAT, json={"messages": MSG}).status_code == 200
        # Rotate: the old key stops working, the new one works.
        new = web.post(f"/api/keys/{key_id}/rotate", json={"password": "s3cret-pass"}).json()["key"]
        with server.client(key) as c:
            assert c.post(CHAT, json={"messages": MSG}).status_code == 401
        with server.client(new) as c:
            assert c.post(CHAT, json={"messages": MSG}).status_code == 200

        def usage_csv() -> tuple[httpx.Response, list[dict[str, str]]] | None:
            usage = web.get("/api/usage", params={"format": "csv"})
            rows = list(csv.DictReader(io.StringIO(usage.text)))
            return (usage, rows) if len(rows) >= 3 else None

        # Usage records are written in batches, every half second.
        usage, rows = wait_for(usage_csv, 10, "3 usage records", interval=0.1)
        assert usage.headers["content-type"].startswith("text/csv") and len(rows) == 3
        assert {r["user"] for r in rows} == {"console-user"} and all(int(r["prompt_tokens"]) > 0 for r in rows)
        assert web.post(f"/api/keys/{key_id}/revoke", json={}).json()["enabled"] is False
        assert web.post("/api/logout").status_code == 200
        assert web.get("/api/me").status_code == 401


def test_users_cannot_touch_each_others_keys(server: Server) -> None:
    _user(server, "alice-api")
    _user(server, "bob-api")
    alice = mxn("keys", "create", "--user", "alice-api", database_url=server.database_url).stdout.split()[-1]
    with server.admin() as admin:
        bob_key = next(k for k in admin.get("/admin/keys").json()["data"] if k["user"] == "alice-api")["id"]
    with httpx.Client(base_url=server.url, timeout=30) as web:
        web.post("/api/login", json={"name": "bob-api", "password": "s3cret-pass"})
        assert web.post(f"/api/keys/{bob_key}/revoke", json={}).status_code == 404
        assert web.delete(f"/api/keys/{bob_key}").status_code == 404
    with server.client(alice) as c:
        assert c.post(CHAT, json={"messages": MSG}).status_code == 200


def test_default_group_limits_apply_to_a_new_users_key(server: Server) -> None:
    mxn("users", "create", "free-tier", database_url=server.database_url)
    key = mxn("keys", "create", "--user", "free-tier", database_url=server.database_url).stdout.split()[-1]
    with server.client(key) as c:
        r = c.post(CHAT, json={"messages": MSG})
        assert r.headers["x-ratelimit-limit-requests"] == "12" and r.headers["x-ratelimit-remaining-requests"] == "11"
        assert r.headers["x-ratelimit-limit-tokens"] == "12000000"
        statuses = [c.post(CHAT, json={"messages": MSG}).status_code for _ in range(12)]
    assert statuses.count(200) == 11 and statuses[-1] == 429
