"""Moderation end to end (SPEC §4) with the `openai` SDK against a real `mxn serve` and real fake upstreams."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.conftest import Proc, Server, first_start_key, free_port, mxn, start_serve, start_upstream, wait_for

CATALOG = """
chips:
  - {{id: nvidia, name: NVIDIA}}
  - {{id: amd, name: AMD}}
models:
  - {{name: chat-model, context_length: 2048, tokenizer: "tiktoken:cl100k_base"}}
  - {{name: text-model, context_length: 2048, tokenizer: "tiktoken:cl100k_base", kind: completion}}
moderation:
  keywords: [Secret Plan, 禁止词]
  keyword_files: [./words.txt]
  regexes: ["\\\\b\\\\d{{17}}[\\\\dXx]\\\\b"]
deployments:
  - model: chat-model
    chip: nvidia
    endpoints: [{{url: "{up}"}}]
  - model: chat-model
    chip: amd
    moderation:
      keywords: [amd-only-word]
      classifier: {{url: "{classifier}", timeout: 1.0, fail: open}}
    endpoints: [{{url: "{up}"}}]
  - model: text-model
    chip: nvidia
    moderation:
      classifier: {{url: "http://127.0.0.1:{dead}/moderations", timeout: 0.5, fail: closed}}
    endpoints: [{{url: "{up}"}}]
"""

# The fake upstream answers "reverse: X" with X reversed, so the answer holds what the question does not.
HIDDEN = "reverse: " + "this is the secret plan and then much more text follows here"[::-1]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("moderation")
    up = start_upstream(tmp, "sse", "--delay", "0.02")
    (tmp / "words.txt").write_text("# one word a line\nfile-word\n\n")
    catalog = tmp / "catalog.yaml"
    catalog.write_text(
        CATALOG.format(up=up.url, classifier=up.url.removesuffix("/v1") + "/moderations", dead=free_port())
    )
    db = f"sqlite+aiosqlite:///{tmp / 'mxn.db'}"
    admin_key = "sk-admin-moderation-test"
    proc = start_serve(tmp / "serve.log", db, "--catalog", str(catalog), env={"MXN_ADMIN_KEY": admin_key})
    try:
        yield Server(proc.url, first_start_key(proc.output()), admin_key, db, proc, {"up": up})
    finally:
        proc.stop()
        up.stop()


def sdk(server: Server, chip: str = "nvidia", model: str = "chat-model") -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/maas/{model}/{chip}", api_key=server.key, max_retries=0)


def upstream_last(up: Proc) -> dict[str, object]:
    return dict(httpx.get(up.url.removesuffix("/v1") + "/_last").json())


def usage_rows(server: Server) -> list[dict[str, object]]:
    with server.admin() as admin:
        return list(admin.get("/admin/usage").json()["data"])


@pytest.mark.parametrize(
    "text",
    ["Tell me the SECRET PLAN please", "说出禁止词", "my id is 11010519491231002X", "a FILE-WORD here"],
)
def test_input_that_fails_is_refused_and_never_sent_upstream(server: Server, text: str) -> None:
    up = server.upstreams["up"]
    sdk(server).chat.completions.create(model="chat-model", messages=[{"role": "user", "content": "harmless"}])
    before = upstream_last(up)
    with pytest.raises(openai.PermissionDeniedError) as err:
        sdk(server).chat.completions.create(
            model="chat-model", messages=[{"role": "system", "content": "be nice"}, {"role": "user", "content": text}]
        )
    assert err.value.status_code == 403
    assert err.value.code == "content_filter"
    assert upstream_last(up) == before  # nothing reached the upstream


def test_refused_input_costs_nothing_and_is_recorded(server: Server) -> None:
    with pytest.raises(openai.PermissionDeniedError):
        sdk(server).chat.completions.create(
            model="chat-model", messages=[{"role": "user", "content": [{"type": "text", "text": "secret plan"}]}]
        )
    rows = wait_for(
        lambda: [r for r in usage_rows(server) if r["status"] == 403 and r["error"] == "content_filter"],
        10,
        "the refused request's usage record",
    )
    assert rows and rows[0]["cost"] == 0 and rows[0]["completion_tokens"] == 0


def test_blocked_output_non_stream_is_cut_before_the_hit(server: Server) -> None:
    r = sdk(server).chat.completions.create(model="chat-model", messages=[{"role": "user", "content": HIDDEN}])
    assert r.choices[0].finish_reason == "content_filter"
    assert r.choices[0].message.content == "echo(1): this is the "
    assert (r.model_extra or {}).get("blocked") is True
    clean = sdk(server).chat.completions.create(model="chat-model", messages=[{"role": "user", "content": "hello"}])
    assert clean.choices[0].finish_reason == "stop" and "blocked" not in (clean.model_extra or {})


def test_blocked_output_stream_hit_split_across_chunks(server: Server) -> None:
    up = server.upstreams["up"]
    before = httpx.get(up.url.removesuffix("/v1") + "/_streams").json()
    stream = sdk(server).chat.completions.create(
        model="chat-model", messages=[{"role": "user", "content": HIDDEN}], stream=True
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    # The upstream sent " secret" and " plan" as two chunks; not a character of the hit went out.
    assert text == "echo(1): this is the "
    last = chunks[-1]
    assert (last.model_extra or {}).get("blocked") is True
    assert last.choices[0].finish_reason == "content_filter"
    assert all(not (c.model_extra or {}).get("blocked") for c in chunks[:-1])

    # Generation stopped upstream: the stream was closed long before its remaining words were sent.
    def cancelled() -> dict | None:
        after = httpx.get(up.url.removesuffix("/v1") + "/_streams").json()
        return after if after["cancelled"] > before["cancelled"] else None

    after = wait_for(cancelled, 5, f"the upstream stream cancelled (before: {before})", interval=0.05)
    assert after["cancelled"] == before["cancelled"] + 1, (before, after)
    assert after["completed"] == before["completed"]


def test_stream_ends_with_blocked_chunk_then_done_on_the_wire(server: Server) -> None:
    body = {
        "model": "chat-model",
        "messages": [{"role": "user", "content": HIDDEN}],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    with server.client() as c:
        raw = c.post("/maas/chat-model/nvidia/chat/completions", json=body).text
    events = [e.removeprefix("data: ") for e in raw.strip().split("\n\n")]
    assert events[-1] == "[DONE]"
    assert '"blocked":true' in events[-3] and '"content_filter"' in events[-3]
    assert '"usage"' in events[-2]  # include_usage still gets its closing usage chunk


def test_per_deployment_rules_and_classifier(server: Server) -> None:
    msg = [{"role": "user", "content": "say amd-only-word"}]
    assert sdk(server, "nvidia").chat.completions.create(model="chat-model", messages=msg).choices
    with pytest.raises(openai.PermissionDeniedError):
        sdk(server, "amd").chat.completions.create(model="chat-model", messages=msg)
    # The global rules apply to amd too; the classifier flags what no keyword lists.
    for text in ("the secret plan", "this is classifier-bad"):
        with pytest.raises(openai.PermissionDeniedError):
            sdk(server, "amd").chat.completions.create(model="chat-model", messages=[{"role": "user", "content": text}])
    ok = sdk(server, "amd").chat.completions.create(model="chat-model", messages=[{"role": "user", "content": "fine"}])
    assert ok.choices[0].finish_reason == "stop"


def test_classifier_down_fails_closed_when_told_to(server: Server) -> None:
    with pytest.raises(openai.PermissionDeniedError) as err:
        sdk(server, "nvidia", "text-model").completions.create(model="text-model", prompt="anything")
    assert err.value.code == "content_filter"


def test_moderation_off_only_after_confirmation_and_audited(server: Server, tmp_path: Path) -> None:
    blocked = [{"role": "user", "content": "the secret plan"}]
    with server.admin() as admin:
        dep = next(d for d in admin.get("/admin/deployments").json()["data"] if d["name"] == "chat-model@nvidia")
        r = admin.patch(f"/admin/deployments/{dep['id']}", json={"moderation": False})
        assert r.status_code == 400 and r.json()["error"]["code"] == "confirmation_required"
        with pytest.raises(openai.PermissionDeniedError):  # still on
            sdk(server).chat.completions.create(model="chat-model", messages=blocked)
        r = admin.patch(f"/admin/deployments/{dep['id']}", json={"moderation": False, "confirm": True})
        assert r.status_code == 200 and r.json()["moderation"] is False
        try:
            answer = sdk(server).chat.completions.create(model="chat-model", messages=blocked)
            assert answer.choices[0].message.content == "echo(1): the secret plan"
            events = admin.get("/admin/audit", params={"action": "moderation.off"}).json()["data"]
            assert events[0]["actor"] == "admin-key" and events[0]["ip"] == "127.0.0.1"
            assert events[0]["target"] == f"dep_id={dep['id']}"
        finally:
            assert admin.patch(f"/admin/deployments/{dep['id']}", json={"moderation": True}).status_code == 200
        with pytest.raises(openai.PermissionDeniedError):
            sdk(server).chat.completions.create(model="chat-model", messages=blocked)


def test_cli_turns_moderation_off_only_with_confirmation(server: Server) -> None:
    refused = mxn("moderation", "off", "chat-model@amd", database_url=server.database_url, stdin="n\n", check=False)
    assert refused.returncode != 0
    mxn("moderation", "off", "chat-model@amd", "--yes", database_url=server.database_url)
    try:
        with server.admin() as admin:
            events = admin.get("/admin/audit", params={"action": "moderation.off"}).json()["data"]
            assert events[0]["actor"].startswith("cli") and events[0]["details"] == {"deployment": "chat-model@amd"}
            dep = next(d for d in admin.get("/admin/deployments").json()["data"] if d["name"] == "chat-model@amd")
            assert dep["moderation"] is False
    finally:
        mxn("moderation", "on", "chat-model@amd", database_url=server.database_url)


def test_catalogue_turning_moderation_off_needs_confirmation(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "models:\n  - {name: m}\ndeployments:\n  - model: m\n    chip: cpu\n    moderation: false\n"
        "    endpoints: [{url: 'http://127.0.0.1:1/v1'}]\n"
    )
    done = subprocess.run(
        [sys.executable, "-m", "mxn", "catalog", "check", str(bad)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode != 0
    assert f"{bad}:4" in done.stderr + done.stdout and "moderation_off_confirmed" in done.stderr + done.stdout


def test_rule_sets_through_the_admin_api(server: Server) -> None:
    with server.admin() as admin:
        r = admin.post("/admin/moderation", json={"deployment": "chat-model@nvidia", "keywords": ["runtime-word"]})
        assert r.status_code == 201, r.text
        rule_id = r.json()["id"]
        try:
            with pytest.raises(openai.PermissionDeniedError):
                sdk(server).chat.completions.create(
                    model="chat-model", messages=[{"role": "user", "content": "a RUNTIME-WORD"}]
                )
            bad = admin.patch(f"/admin/moderation/{rule_id}", json={"regexes": ["(unclosed"]})
            assert bad.status_code == 400 and bad.json()["error"]["type"] == "invalid_request_error"
            listed = admin.get("/admin/moderation").json()["data"]
            assert {r["source"] for r in listed} == {"catalog", "admin"}
        finally:
            assert admin.delete(f"/admin/moderation/{rule_id}").status_code == 200
        answer = sdk(server).chat.completions.create(
            model="chat-model", messages=[{"role": "user", "content": "a RUNTIME-WORD"}]
        )
        assert answer.choices[0].finish_reason == "stop"
