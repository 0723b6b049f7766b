"""One `mxn serve` per store (SQLite, PostgreSQL) in front of fake upstreams of every kind."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.conftest import Server, first_start_key, start_serve, start_upstream

CATALOG = """
chips:
  - {{id: nvidia, name: NVIDIA}}
  - {{id: amd, name: AMD}}
  - {{id: biren, name: Biren, alias: "accelerator E"}}
models:
  - {{name: qwen1.5-14b-chat, context_length: 2048, tokenizer: qwen, family: qwen, kind: chat,
     defaults: {{temperature: 0.7, top_p: 0.8, repetition_penalty: 1.05}}}}
  - {{name: chatglm3-6b, context_length: 512, family: chatglm, kind: chat}}
  - {{name: qwen-72b, context_length: 2048, tokenizer: qwen, family: qwen, kind: completion}}
  - {{name: emb-small, context_length: 256, tokenizer: "tiktoken:cl100k_base", kind: embedding}}
  - {{name: private-model, context_length: 1024, public: false}}
deployments:
  - model: qwen1.5-14b-chat
    chip: nvidia
    price: {{input: 1.0, output: 2.0}}
    disclosure: {{chip_model: H800, count: 1, engine: vllm}}
    endpoints:
      - {{url: "${{SSE_URL}}", upstream_model: Qwen/Qwen1.5-14B-Chat}}
  - model: qwen1.5-14b-chat
    chip: biren
    endpoints:
      - {{url: "{jsonl}", stream_format: jsonl}}
  - model: qwen1.5-14b-chat
    chip: amd
    endpoints:
      - {{url: "{nousage}"}}
  - model: qwen1.5-14b-chat
    chip: iluvatar
    endpoints:
      - {{url: "{sse}", state: stopped}}
  - model: chatglm3-6b
    chip: nvidia
    endpoints:
      - {{url: "{strict}", supports: [seed]}}
  - model: chatglm3-6b
    chip: amd
    endpoints:
      - {{url: "{fail}"}}
  - model: chatglm3-6b
    chip: biren
    endpoints:
      - {{url: "{fail}", priority: 1}}
      - {{url: "{sse}", priority: 0}}
  - model: qwen-72b
    chip: nvidia
    endpoints:
      - {{url: "{sse}"}}
  - model: qwen-72b
    chip: amd
    endpoints:
      - {{url: "{dies}"}}
  - model: qwen-72b
    chip: biren
    endpoints:
      - {{url: "{slow}", timeouts: {{first_token: 0.5}}}}
  - model: chatglm3-6b
    chip: moorethreads
    endpoints:
      - {{url: "{busy}"}}
  - model: emb-small
    chip: nvidia
    endpoints:
      - {{url: "{sse}"}}
  - model: private-model
    chip: nvidia
    endpoints:
      - {{url: "{sse}"}}
"""

ADMIN_KEY = "test-admin-key-0123456789abcdef"


@pytest.fixture(scope="session")
def upstreams(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, object]]:
    tmp = tmp_path_factory.mktemp("upstreams")
    procs = {}
    try:
        for mode in ("sse", "jsonl", "nousage", "fail", "dies", "busy"):
            procs[mode] = start_upstream(tmp, mode)
        procs["strict"] = start_upstream(tmp, "sse", "--reject", "top_k,presence_penalty")
        procs["slow"] = start_upstream(tmp, "sse", "--delay", "2")
        procs["slowish"] = start_upstream(tmp, "sse", "--delay", "0.3")
        yield procs
    finally:
        for p in procs.values():
            p.stop()


@pytest.fixture(scope="session")
def catalog_file(upstreams, tmp_path_factory):  # type: ignore[no-untyped-def]
    path = tmp_path_factory.mktemp("catalog") / "catalog.yaml"
    path.write_text(CATALOG.format(**{k: p.url for k, p in upstreams.items()}))
    return path


@pytest.fixture(scope="session")
def server(database_url, catalog_file, upstreams, tmp_path_factory) -> Iterator[Server]:  # type: ignore[no-untyped-def]
    log = tmp_path_factory.mktemp("server") / "serve.log"
    # Every test's wrong keys and passwords come from 127.0.0.1: throttling them (tested in test_hardening.py, from
    # addresses of their own) would make one test's 401s another's 429s.
    env = {"MXN_ADMIN_KEY": ADMIN_KEY, "SSE_URL": upstreams["sse"].url, "MXN_AUTH_FAIL_LIMIT": "0"}
    proc = start_serve(log, database_url, "--catalog", str(catalog_file), env=env)
    try:
        yield Server(proc.url, first_start_key(proc.output()), ADMIN_KEY, database_url, proc, upstreams)
    finally:
        proc.stop()
