"""Every error status of SPEC §2, each in OpenAI's shape, each from the check that produces it."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest
from openai import OpenAI

from tests.conftest import Server, mxn, wait_for

CHAT = "/maas/qwen1.5-14b-chat/nvidia/chat/completions"
MSG = [{"role": "user", "content": "hi"}]


def assert_error(r: httpx.Response, status: int, code: str | None = None, param: str | None = None) -> dict[str, Any]:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert "Traceback" not in r.text
    if code is not None:
        assert err["code"] == code, err
    if param is not None:
        assert err["param"] == param, err
    return err


def test_missing_and_wrong_keys_get_401(server: Server) -> None:
    assert_error(httpx.post(server.url + CHAT, json={"messages": MSG}), 401, "missing_api_key")
    with server.client("sk-" + "x" * 48) as c:
        assert_error(c.post(CHAT, json={"messages": MSG}), 401, "invalid_api_key")
        assert_error(c.get("/v1/models"), 401)
        assert_error(c.get("/api/maas/user/v2/model/list"), 401)
    r = httpx.post(server.url + CHAT, json={"messages": MSG}, headers={"api-key": server.key})
    assert r.status_code == 200  # the `api-key:` header works too


def test_identity_is_never_taken_from_a_user_id_header(server: Server) -> None:
    headers = {"INFINI_USERINFO_V1": "10241024-1024-1024-1024-10241024102410241024"}
    r = httpx.post(
        server.url + CHAT,
        json={"messages": MSG},
        headers=headers,
        cookies={"INFINI_USERINFO_V1": "10241024-1024-1024-1024-10241024102410241024"},
    )
    assert_error(r, 401)


def test_revoked_key_gets_401(server: Server) -> None:
    mxn("users", "create", "revokee", database_url=server.database_url)
    created = mxn("keys", "create", "--user", "revokee", database_url=server.database_url)
    key = created.stdout.strip().splitlines()[-1]
    with server.client(key) as c:
        assert c.post(CHAT, json={"messages": MSG}).status_code == 200
        key_id = next(iter(server.admin().get("/admin/keys", params={"user": "revokee"}).json()["data"]))["id"]
        mxn("keys", "revoke", str(key_id), database_url=server.database_url)
        # Revoked from another process (the CLI): the server notices within its auth refresh (1 s).
        revoked_at = time.monotonic()

        def refused() -> httpx.Response | None:
            r = c.post(CHAT, json={"messages": MSG})
            return None if r.status_code == 200 else r

        r = wait_for(refused, 5, "the revoked key refused", interval=0.1)
        assert_error(r, 401, "key_disabled")
        assert time.monotonic() - revoked_at < 2.5


def test_key_without_the_model_or_chip_gets_403(server: Server) -> None:
    mxn("users", "create", "narrow", database_url=server.database_url)
    key = (
        mxn(
            "keys",
            "create",
            "--user",
            "narrow",
            "--models",
            "qwen-72b",
            "--chips",
            "nvidia",
            database_url=server.database_url,
        )
        .stdout.strip()
        .splitlines()[-1]
    )
    with server.client(key) as c:
        assert_error(c.post(CHAT, json={"messages": MSG}), 403, "model_not_allowed")
        assert_error(c.post("/maas/qwen-72b/amd/completions", json={"prompt": "x"}), 403, "chip_not_allowed")
        assert c.post("/maas/qwen-72b/nvidia/completions", json={"prompt": "x", "max_tokens": 3}).status_code == 200


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": MSG, "temperature": 2.5}, "temperature"),
        ({"messages": MSG, "temperature": "hot"}, "temperature"),
        ({"messages": MSG, "top_p": 0}, "top_p"),
        ({"messages": MSG, "top_k": 0}, "top_k"),
        ({"messages": MSG, "n": 11}, "n"),
        ({"messages": MSG, "presence_penalty": -2.5}, "presence_penalty"),
        ({"messages": MSG, "frequency_penalty": 3}, "frequency_penalty"),
        ({"messages": MSG, "repetition_penalty": 0}, "repetition_penalty"),
        ({"messages": MSG, "min_p": 1.5}, "min_p"),
        ({"messages": MSG, "max_tokens": 0}, "max_tokens"),
        ({"messages": MSG, "stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"messages": MSG, "stream_options": {"include_usage": True}}, "stream_options"),
        ({"messages": MSG, "top_logprobs": 3}, "top_logprobs"),
        ({"messages": MSG, "use_beam_search": True, "n": 1}, "n"),
        ({"messages": MSG, "use_beam_search": True, "n": 2, "temperature": 0.5}, "temperature"),
        ({"messages": MSG, "use_beam_search": True, "n": 2, "temperature": 0, "top_k": 5}, "top_k"),
        ({"messages": MSG, "length_penalty": 1.2}, "length_penalty"),
        ({"messages": MSG, "n": 2, "temperature": 0}, "n"),
        ({"messages": MSG, "n": 3, "best_of": 2}, "best_of"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "wizard", "content": "x"}]}, "messages.0.role"),
        ({"messages": "hello"}, "messages"),
        ({"messages": MSG, "stream": "yes"}, "stream"),
    ],
)
def test_invalid_parameters_get_400_naming_the_parameter(server: Server, body: dict[str, Any], param: str) -> None:
    with server.client() as c:
        assert_error(c.post(CHAT, json=body), 400, param=param)


def test_beam_search_with_its_rules_is_accepted(server: Server) -> None:
    body = {
        "messages": MSG,
        "use_beam_search": True,
        "n": 2,
        "temperature": 0,
        "top_p": 1,
        "top_k": -1,
        "length_penalty": 1.2,
        "max_tokens": 4,
    }
    with server.client() as c:
        assert c.post(CHAT, json=body).status_code == 200


def test_context_length_exceeded_before_anything_is_sent(server: Server) -> None:
    with server.client() as c:
        err = assert_error(
            c.post("/maas/chatglm3-6b/nvidia/chat/completions", json={"messages": MSG, "max_tokens": 600}),
            400,
            "context_length_exceeded",
        )
        assert "512" in err["message"]
        long = [{"role": "user", "content": "词 " * 600}]
        assert_error(
            c.post("/maas/chatglm3-6b/nvidia/chat/completions", json={"messages": long}), 400, "context_length_exceeded"
        )


def test_malformed_and_hostile_bodies(server: Server) -> None:
    with server.client() as c:
        assert_error(
            c.post(CHAT, content=b'{"messages": [', headers={"content-type": "application/json"}), 400, "invalid_json"
        )
        assert_error(c.post(CHAT, content=b"[1, 2]"), 400, "invalid_json")
        assert_error(c.post(CHAT, content=b""), 400)
        deep = {"messages": MSG, "x": 1}
        node: dict[str, Any] = deep
        for _ in range(100):
            node["x"] = {}
            node = node["x"]
        assert_error(c.post(CHAT, json=deep), 400, "invalid_json")
        huge = b'{"messages": [{"role": "user", "content": "' + b"a" * (9 * 1024 * 1024) + b'"}]}'
        assert_error(c.post(CHAT, content=huge), 413, "request_too_large")


def test_unknown_fields_are_refused_on_maas_only_routes(server: Server) -> None:
    with server.client() as c:
        assert_error(
            c.post("/maas/qwen1.5-14b-chat/nvidia/token_count", json={"prompt": "x", "evil": 1}), 400, param="evil"
        )
        assert_error(c.post("/maas/qwen1.5-14b-chat/nvidia/token_count", json={"prompt": 5}), 400, param="prompt")


def test_unknown_model_and_wrong_chip_get_404(server: Server) -> None:
    with server.client() as c:
        assert_error(c.post("/maas/gpt-9/nvidia/chat/completions", json={"messages": MSG}), 404, "model_not_found")
        err = assert_error(
            c.post("/maas/qwen-72b/moorethreads/chat/completions", json={"messages": MSG}), 404, "model_not_on_chip"
        )
        assert "amd" in err["message"] and "nvidia" in err["message"]
        assert_error(c.post("/v1/chat/completions", json={"model": "nope", "messages": MSG}), 404, "model_not_found")
        assert_error(c.post("/v1/chat/completions", json={"messages": MSG}), 400, "missing_model")
        assert_error(c.get("/v1/no-such-route"), 404)


def test_wrong_model_kind_gets_400(server: Server) -> None:
    with server.client() as c:
        assert_error(
            c.post("/v1/chat/completions", json={"model": "emb-small", "messages": MSG}), 400, "wrong_model_kind"
        )
        assert_error(c.post("/v1/embeddings", json={"model": "qwen-72b@nvidia", "input": "x"}), 400, "wrong_model_kind")


def test_stopped_deployment_gets_503_naming_its_state(server: Server) -> None:
    with server.client() as c:
        err = assert_error(c.post("/maas/qwen1.5-14b-chat/iluvatar/chat/completions", json={"messages": MSG}), 503)
    assert "stopped" in err["message"]


def test_failing_upstream_gets_502(server: Server) -> None:
    with server.client() as c:
        err = assert_error(c.post("/maas/chatglm3-6b/amd/chat/completions", json={"messages": MSG}), 502)
        assert "engine crashed" in err["message"]
        r = c.post("/maas/chatglm3-6b/amd/chat/completions", json={"messages": MSG, "stream": True})
        assert_error(r, 502)


def test_busy_upstream_gets_429_with_retry_after(server: Server) -> None:
    with server.client() as c:
        r = c.post("/maas/chatglm3-6b/moorethreads/chat/completions", json={"messages": MSG})
    assert_error(r, 429, "upstream_rate_limited")
    assert r.headers["retry-after"] == "7"


def test_key_used_from_an_address_outside_its_allowlist_gets_403(server: Server) -> None:
    mxn("users", "create", "fenced", database_url=server.database_url)
    outside = mxn("keys", "create", "--user", "fenced", "--ips", "10.0.0.0/8", database_url=server.database_url)
    inside = mxn(
        "keys", "create", "--user", "fenced", "--ips", "127.0.0.1/32,10.0.0.0/8", database_url=server.database_url
    )
    with server.client(outside.stdout.strip().splitlines()[-1]) as c:
        assert_error(c.post(CHAT, json={"messages": MSG}), 403, "ip_not_allowed")
    with server.client(inside.stdout.strip().splitlines()[-1]) as c:
        assert c.post(CHAT, json={"messages": MSG}).status_code == 200


def test_upstream_rejection_is_a_400(server: Server) -> None:
    # An endpoint with no `supports:` list forwards top_k; this upstream refuses it with 400.
    with server.admin() as admin:
        ep = admin.post(
            "/admin/endpoints",
            json={"deployment": "chatglm3-6b@nvidia", "url": server.upstreams["strict"].url, "priority": 5},
        ).json()
        try:
            with server.client() as c:
                err = assert_error(
                    c.post("/maas/chatglm3-6b/nvidia/chat/completions", json={"messages": MSG, "top_k": 5}),
                    400,
                    "upstream_rejected",
                )
            assert "top_k" in err["message"]
        finally:
            admin.delete(f"/admin/endpoints/{ep['id']}")


def test_slow_upstream_gets_504(server: Server) -> None:
    with server.client() as c:
        r = c.post("/maas/qwen-72b/biren/completions", json={"prompt": "x", "stream": True, "max_tokens": 5})
    assert_error(r, 504, "upstream_timeout")


def test_stream_that_dies_midway_ends_with_an_error_event_and_done(server: Server) -> None:
    with server.client() as c:
        r = c.post("/maas/qwen-72b/amd/completions", json={"prompt": "a b c d", "stream": True, "max_tokens": 5})
    assert r.status_code == 200
    events = [e for e in r.text.split("\n\n") if e]
    assert events[-1] == "data: [DONE]"
    assert '"error"' in events[-2] and '"text"' in events[0]


def test_sdk_raises_typed_errors(server: Server) -> None:
    import openai

    client = OpenAI(base_url=f"{server.url}/v1", api_key="sk-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        client.chat.completions.create(model="qwen-72b", messages=MSG)
    client = OpenAI(base_url=f"{server.url}/v1", api_key=server.key, max_retries=0)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=MSG)
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="qwen-72b@nvidia", messages=MSG, temperature=9)


def test_bad_account_input_is_refused_and_changes_nothing(server: Server) -> None:
    db = server.database_url
    before = server.admin().get("/admin/keys").json()["data"]
    bad = mxn("users", "create", "negative", "--quota", "-5", database_url=db, check=False)
    assert bad.returncode == 1 and "quota may not be negative" in bad.stderr
    mxn("users", "create", "bad-input", database_url=db)
    for flags, words in (
        (["--ips", "10.0.0.300/8"], "ips"),
        (["--rpm", "-1"], "rpm may not be negative"),
        (["--expires", "soon"], "expires"),
        (["--quota", "-3"], "quota"),
    ):
        done = mxn("keys", "create", "--user", "bad-input", *flags, database_url=db, check=False)
        assert done.returncode == 1 and words in done.stderr and "Traceback" not in done.stderr
    with server.admin() as admin:
        r = admin.post("/admin/users", json={"name": "neg2", "quota": -1})
        assert r.status_code == 400 and r.json()["error"]["param"] == "quota"
        r = admin.post("/admin/keys", json={"user": "bad-input", "ips": ["not-an-ip"]})
        assert r.status_code == 400 and r.json()["error"]["param"] == "ips"
        assert admin.get("/admin/keys").json()["data"] == before
        users = [u["name"] for u in admin.get("/admin/users").json()["data"]]
    assert "negative" not in users and "neg2" not in users


def test_expired_key_and_disabled_user_get_401(server: Server) -> None:
    import time

    db = server.database_url
    mxn("users", "create", "short-lived", database_url=db)
    key = mxn("keys", "create", "--user", "short-lived", "--expires", "2s", database_url=db).stdout.split()[-1]
    with server.client(key) as c:
        assert c.post(CHAT, json={"messages": MSG}).status_code == 200
        time.sleep(2.5)  # not a wait: the key's 2 s of life pass; it must be refused then, not eventually
        assert_error(c.post(CHAT, json={"messages": MSG}), 401, "key_expired")
    mxn("users", "create", "to-disable", database_url=db)
    key = mxn("keys", "create", "--user", "to-disable", database_url=db).stdout.split()[-1]
    with server.admin() as admin:
        user_id = next(u["id"] for u in admin.get("/admin/users").json()["data"] if u["name"] == "to-disable")
        assert admin.patch(f"/admin/users/{user_id}", json={"enabled": False}).status_code == 200
    with server.client(key) as c:
        assert_error(c.post(CHAT, json={"messages": MSG}), 401, "key_disabled")


def test_a_private_model_is_invisible_to_other_users(server: Server) -> None:
    mxn("users", "create", "outsider", database_url=server.database_url)
    key = mxn("keys", "create", "--user", "outsider", database_url=server.database_url).stdout.split()[-1]
    with server.client(key) as c:
        assert_error(
            c.post("/maas/private-model/nvidia/chat/completions", json={"messages": MSG}), 404, "model_not_found"
        )
        assert "private-model" not in c.get("/v1/models").text
    with server.client() as c:  # the admin still reaches it
        assert c.post("/maas/private-model/nvidia/chat/completions", json={"messages": MSG}).status_code == 200


@pytest.mark.parametrize(
    ("upstream", "timeouts", "cut_after"),
    [("slow", {"first_token": 5, "between_tokens": 0.5}, "between_tokens"), ("slowish", {"total": 0.5}, "total")],
)
def test_idle_and_total_timeouts_end_a_started_stream_cleanly(
    server: Server, upstream: str, timeouts: dict[str, float], cut_after: str
) -> None:
    with server.temporary_cell(
        "chatglm3-6b", "iluvatar", {"url": server.upstreams[upstream].url, "timeouts": timeouts}
    ):
        body = {"messages": [{"role": "user", "content": "one two three four five six"}], "stream": True}
        with server.client() as c:
            r = c.post("/maas/chatglm3-6b/iluvatar/chat/completions", json=body, timeout=30)
        events = [e for e in r.text.split("\n\n") if e]
        assert r.status_code == 200 and events[-1] == "data: [DONE]", cut_after
        assert '"content"' in events[0] and '"upstream_timeout"' in events[-2], cut_after


def test_a_refused_connection_fails_over_to_the_next_endpoint(server: Server) -> None:
    # Nothing listens on port 9 here: the connection is refused and the next endpoint answers.
    refused = {"url": "http://127.0.0.1:9/v1", "priority": 1, "timeouts": {"connect": 0.3}}
    with server.temporary_cell("chatglm3-6b", "iluvatar", refused, {"url": server.upstreams["sse"].url}):
        with server.client() as c:
            r = c.post("/maas/chatglm3-6b/iluvatar/chat/completions", json={"messages": MSG}, timeout=30)
        assert r.status_code == 200
