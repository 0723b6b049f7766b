"""Schemathesis drives every operation of the app's own OpenAPI document against a real `mxn serve`.

No answer may be a 5xx, and every 4xx is JSON in the OpenAI error shape. The server is our own (SQLite, fake
upstreams), not the shared e2e one: the fuzzer deletes users, keys and deployments through /admin. User routes
run first and /admin last, so that the catalogue the user routes reach is still whole. Examples are bounded and
derandomized, so a run is reproducible; MXN_FUZZ_EXAMPLES=300 explores further by hand.

Each operation gets its own Hypothesis test over schemathesis' strategies, rather than the pytest plugin's
`schemathesis.pytest.from_fixture` (the schema exists only once the server runs), whose lazy test fails under
pytest 9.2 (`'Function' object has no attribute '_nodeid'`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import ignored_auth

from tests.conftest import Proc, start_serve, start_upstream

ADMIN_KEY = "fuzz-admin-key-0123456789abcdef"
MODELS = ["chat-a", "text-b", "emb-c", "chat-a@nvidia", "chat-a@amd"]
CHIPS = ["nvidia", "amd"]
CATALOG = """
chips:
  - {{id: nvidia, name: NVIDIA}}
  - {{id: amd, name: AMD, alias: "accelerator A"}}
models:
  - {{name: chat-a, context_length: 2048, tokenizer: "tiktoken:cl100k_base", kind: chat, family: a,
     defaults: {{temperature: 0.7, top_p: 0.8}}}}
  - {{name: text-b, context_length: 2048, tokenizer: "tiktoken:cl100k_base", kind: completion}}
  - {{name: emb-c, context_length: 256, tokenizer: "tiktoken:cl100k_base", kind: embedding}}
deployments:
  - {{model: chat-a, chip: nvidia, endpoints: [{{url: "{sse}"}}]}}
  - {{model: chat-a, chip: amd, endpoints: [{{url: "{jsonl}", stream_format: jsonl}}]}}
  - {{model: text-b, chip: nvidia, endpoints: [{{url: "{sse}"}}]}}
  - {{model: emb-c, chip: nvidia, endpoints: [{{url: "{sse}"}}]}}
"""

# Bounded and reproducible: the whole file runs in about a minute on two cores.
SETTINGS = settings(
    max_examples=int(os.environ.get("MXN_FUZZ_EXAMPLES", "25")),
    deadline=None,
    derandomize=True,
    database=None,
    phases=[Phase.explicit, Phase.generate, Phase.shrink],
    suppress_health_check=list(HealthCheck),
)
CONFIG = schemathesis.Config.from_dict(
    {
        # The test sends real credentials itself, and `ignored_auth` then checks that they are needed.
        "generation": {"with-security-parameters": False},
        # Names that exist, often enough that generation reaches the upstream and not only the 404s.
        "dictionaries": {"models": {"values": MODELS}, "chips": {"values": CHIPS}},
        "parameters": {
            "path.model": {"dictionary": "models", "probability": 0.7},
            "path.chip": {"dictionary": "chips", "probability": 0.7},
            "body.model": {"dictionary": "models", "probability": 0.7},
        },
    }
)


@dataclass
class FuzzServer:
    url: str
    key: str  # a user's key without limits: every route but /admin
    spare_key: str  # another user's, for the routes that revoke or delete the caller's own keys
    proc: Proc


def _user_key(admin: httpx.Client, name: str) -> str:
    r = admin.post("/admin/users", json={"name": name, "password": "a-long-password"})
    assert r.status_code == 201, r.text
    unlimited = {"rpm": 0, "rpd": 0, "tpm": 0, "concurrency": 0}  # the default group allows 12 requests a minute
    r = admin.post("/admin/keys", json={"user": name, **unlimited})
    assert r.status_code == 201, r.text
    return str(r.json()["key"])


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FuzzServer]:
    tmp = tmp_path_factory.mktemp("fuzz")
    upstreams = {mode: start_upstream(tmp, mode) for mode in ("sse", "jsonl")}
    proc = None
    try:
        catalog = tmp / "catalog.yaml"
        catalog.write_text(CATALOG.format(**{mode: p.url for mode, p in upstreams.items()}))
        # Failed authentications are throttled per address: ignored_auth sends them on purpose, so the throttle is off.
        env = {"MXN_ADMIN_KEY": ADMIN_KEY, "MXN_DEMO": "false", "MXN_DATA_DIR": str(tmp), "MXN_AUTH_FAIL_LIMIT": "0"}
        db = f"sqlite+aiosqlite:///{tmp / 'mxn.db'}"
        proc = start_serve(tmp / "serve.log", db, "--catalog", str(catalog), env=env)
        with httpx.Client(base_url=proc.url, headers={"authorization": f"Bearer {ADMIN_KEY}"}) as admin:
            yield FuzzServer(proc.url, _user_key(admin, "fuzz"), _user_key(admin, "fuzz-spare"), proc)
    finally:
        if proc is not None:
            proc.stop()
        for p in upstreams.values():
            p.stop()


@pytest.fixture(scope="module")
def api(fuzz_server: FuzzServer) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_url(f"{fuzz_server.url}/openapi.json", config=CONFIG)


def openai_error_shape(
    ctx: schemathesis.CheckContext, response: schemathesis.Response, case: schemathesis.Case
) -> bool | None:
    """Every 4xx/5xx is `{"error": {"message": str, "type": str, "param": str|null, "code": str|null}}` (Anthropic's
    `{"type": "error", "error": {"type": str, "message": str}}` on the Messages API)."""
    if response.status_code < 400:
        return None
    try:
        body = response.json()
    except ValueError:
        raise AssertionError(f"a {response.status_code} that is not JSON: {response.text[:300]!r}")
    error = body.get("error") if isinstance(body, dict) else None
    assert isinstance(error, dict), f"no 'error' object in a {response.status_code}: {body!r:.300}"
    assert isinstance(error.get("message"), str) and error["message"], f"no message: {error!r:.300}"
    assert isinstance(error.get("type"), str) and error["type"], f"no type: {error!r:.300}"
    if "/messages" in case.path:  # the Anthropic Messages API answers in Anthropic's shape: no param, no code
        assert body.get("type") == "error" and set(error) == {"type", "message"}, f"not Anthropic's: {body!r:.300}"
        return None
    for name in ("param", "code"):
        assert name in error and isinstance(error[name], str | None), f"bad {name}: {error!r:.300}"
    return None


def _key(case: schemathesis.Case, server: FuzzServer) -> str:
    if case.path.startswith("/admin/"):
        return ADMIN_KEY
    if case.method == "DELETE" or case.path.endswith("/revoke"):
        return server.spare_key
    return server.key


def _check(case: schemathesis.Case, server: FuzzServer) -> None:
    headers = {"authorization": f"Bearer {_key(case, server)}"}
    response = case.call(base_url=server.url, headers=headers, timeout=30)
    try:
        case.validate_response(response, checks=[not_a_server_error, openai_error_shape, ignored_auth], headers=headers)
    except BaseExceptionGroup as exc:  # schemathesis' FailureGroup
        raise AssertionError(f"{exc}\n{case.as_curl_command(headers)}") from exc


def _describe(exc: BaseException) -> str:
    # Hypothesis groups distinct failures, and wraps one that did not happen again (the store had moved on).
    if isinstance(exc, BaseExceptionGroup):
        return f"{exc}\n" + "\n".join(_describe(e) for e in exc.exceptions)
    return str(exc)


def _fuzz(schema: schemathesis.BaseSchema, server: FuzzServer) -> None:
    """Every operation in turn, valid and invalid input alike; the failures of all operations, reported together."""
    failures = []
    for result in schema.get_all_operations():
        operation = result.ok()
        cases = st.one_of(
            operation.as_strategy(GenerationMode.POSITIVE), operation.as_strategy(GenerationMode.NEGATIVE)
        )

        @settings(SETTINGS)
        @given(case=cases)
        def run(case: schemathesis.Case) -> None:
            _check(case, server)

        try:
            run()
        except (AssertionError, BaseExceptionGroup) as exc:
            failures.append(f"--- {operation.label}\n{_describe(exc)}")
    if failures:
        print(f"server log: {server.proc.log}\n{server.proc.output()[-6000:]}")
    assert not failures, "\n".join(failures)


def test_user_routes_answer_no_5xx_and_openai_errors(api: schemathesis.BaseSchema, fuzz_server: FuzzServer) -> None:
    _fuzz(api.exclude(path_regex="^/admin/"), fuzz_server)


def test_admin_routes_answer_no_5xx_and_openai_errors(api: schemathesis.BaseSchema, fuzz_server: FuzzServer) -> None:
    # After the user routes: the fuzzer deletes users, keys and deployments here.
    _fuzz(api.include(path_regex="^/admin/"), fuzz_server)
