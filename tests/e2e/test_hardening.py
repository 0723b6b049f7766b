"""Security hardening against real `mxn serve` processes: failed-auth throttling (one process, and two replicas
sharing Redis), no identity from headers, no secret in logs or errors, security headers, CORS.

Every client address is a loopback address of its own (127.0.0.0/8 all reaches the server), so that each test's
failures throttle only that test's address.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import re
import secrets
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import httpx
import pytest

from tests.conftest import Proc, first_start_key, mxn, start_serve, wait_for

ADMIN_KEY = "hardening-admin-" + secrets.token_hex(8)
LIMIT, WINDOW = 4, 6.0
THROTTLE_ENV = {"MXN_AUTH_FAIL_LIMIT": str(LIMIT), "MXN_AUTH_FAIL_WINDOW": str(WINDOW)}
PASSWORD = "alice-pw-" + secrets.token_hex(6)
_addresses = (f"127.0.{i // 250}.{2 + i % 250}" for i in itertools.count(1))


@dataclass
class Gateway:
    url: str
    database_url: str
    proc: Proc
    first_key: str  # the first-start admin user's
    alice_key: str  # a plain user's, alice has PASSWORD

    def client(self, address: str, key: str | None = None, url: str | None = None) -> httpx.Client:
        """A client whose requests come from `address`."""
        headers = {"authorization": f"Bearer {key}"} if key else {}
        transport = httpx.HTTPTransport(local_address=address)
        return httpx.Client(base_url=url or self.url, transport=transport, headers=headers, timeout=30)


def add_alice(database_url: str) -> str:
    mxn("users", "create", "alice", "--password-stdin", database_url=database_url, stdin=PASSWORD + "\n")
    return mxn("keys", "create", "--user", "alice", database_url=database_url).stdout.split()[-1]


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("hardening")
    database_url = f"sqlite+aiosqlite:///{tmp / 'mxn.db'}"
    env = {"MXN_ADMIN_KEY": ADMIN_KEY, "MXN_DEMO": "0", "MXN_LOG_LEVEL": "debug", **THROTTLE_ENV}
    proc = start_serve(tmp / "serve.log", database_url, env=env)
    try:
        yield Gateway(proc.url, database_url, proc, first_start_key(proc.output()), add_alice(database_url))
    finally:
        proc.stop()


def bad_key() -> str:
    return "sk-" + secrets.token_urlsafe(36).replace("-", "").replace("_", "")


def assert_throttled(r: httpx.Response) -> None:
    assert r.status_code == 429, r.text
    assert r.json() == {
        "error": {
            "message": "Too many failed authentication attempts from your address; try again later.",
            "type": "rate_limit_error",
            "param": None,
            "code": "too_many_auth_failures",
        }
    }
    assert 1 <= int(r.headers["retry-after"]) <= WINDOW


def login(c: httpx.Client, password: str) -> httpx.Response:
    return c.post("/api/login", json={"name": "alice", "password": password})


def test_failed_keys_throttle_every_attempt_from_that_address_until_the_window_ends(gw: Gateway) -> None:
    address = next(_addresses)
    with gw.client(address) as c:
        for i in range(LIMIT):
            # Bearer or api-key, /v1 or /api: all are attempts of the same address.
            headers = {"authorization": f"Bearer {bad_key()}"} if i % 2 else {"api-key": bad_key()}
            assert c.get("/v1/models" if i % 2 else "/api/me", headers=headers).status_code == 401
        throttled_at = time.monotonic()
        assert_throttled(c.get("/v1/models", headers={"authorization": f"Bearer {bad_key()}"}))
        # Right credentials too: otherwise the guesser would simply be told when it guessed right.
        assert_throttled(c.get("/v1/models", headers={"authorization": f"Bearer {gw.alice_key}"}))
        assert_throttled(c.get("/admin/users", headers={"authorization": f"Bearer {ADMIN_KEY}"}))
        assert_throttled(login(c, PASSWORD))
        # No key is not an attempt: still the usual 401.
        assert c.get("/v1/models").json()["error"]["code"] == "missing_api_key"
    with gw.client(next(_addresses), gw.alice_key) as other:
        assert other.get("/v1/models").status_code == 200
    with gw.client(address, gw.alice_key) as c:

        def lifted() -> int | None:
            status = c.get("/v1/models").status_code
            return None if status == 429 else status

        status = wait_for(lifted, throttled_at + WINDOW + 5 - time.monotonic(), "the throttle lifted", interval=0.25)
        assert status == 200
        assert time.monotonic() - throttled_at >= WINDOW - 1.5  # not before the window (as the server saw it) ended


def test_wrong_admin_keys_are_throttled_and_right_ones_are_not_counted(gw: Gateway) -> None:
    with gw.client(next(_addresses), ADMIN_KEY) as c:
        for _ in range(LIMIT + 3):
            assert c.get("/admin/users").status_code == 200
        for _ in range(LIMIT - 1):
            assert c.get("/admin/users", headers={"authorization": "Bearer admin"}).status_code == 401
        assert c.get("/admin/users").status_code == 200
        assert c.get("/admin/users", headers={"authorization": "Bearer admin123"}).status_code == 401
        assert_throttled(c.get("/admin/users"))
        assert_throttled(c.get("/admin/users", headers={"authorization": f"Bearer {gw.first_key}"}))


def test_wrong_passwords_are_throttled_and_right_ones_are_not_counted(gw: Gateway) -> None:
    with gw.client(next(_addresses)) as c:
        for _ in range(LIMIT + 1):
            assert login(c, PASSWORD).status_code == 200
        for _ in range(LIMIT):
            assert login(c, "guess").json()["error"]["code"] == "invalid_credentials"
        assert_throttled(login(c, PASSWORD))
    with gw.client(next(_addresses)) as c:
        # An unknown name is a failure like any other, and is answered the same way.
        for _ in range(LIMIT):
            r = c.post("/api/login", json={"name": "nobody", "password": "guess"})
            assert r.json()["error"] == {
                "message": "wrong user name or password",
                "type": "authentication_error",
                "param": None,
                "code": "invalid_credentials",
            }
        assert_throttled(login(c, PASSWORD))


def test_the_second_verification_password_is_throttled_too(gw: Gateway) -> None:
    with gw.client(next(_addresses), gw.alice_key) as c:
        for _ in range(LIMIT):
            r = c.post("/api/keys/1/rotate", json={"password": "guess"})
            assert r.json()["error"]["code"] == "wrong_password"
        assert_throttled(c.post("/api/keys/1/rotate", json={"password": PASSWORD}))


def password_burst(gateways: list[Gateway], n: int = 12) -> Counter[int]:
    """`n` logins at once from one fresh address, spread over `gateways`; one of them (the 7th) is right."""
    address, barrier = next(_addresses), threading.Barrier(n)

    def one(i: int) -> int:
        with gateways[i % len(gateways)].client(address) as c:
            barrier.wait(10)
            return login(c, PASSWORD if i == 6 else f"guess-{i}").status_code

    with ThreadPoolExecutor(n) as pool:
        return Counter(pool.map(one, range(n)))


def test_concurrent_password_guesses_cannot_exceed_the_limit(gw: Gateway) -> None:
    statuses = password_burst([gw])
    # Each attempt is counted before argon2 checks it: of a burst, only LIMIT are checked at all (the right
    # password among them, if it was one of those), the rest are refused unchecked.
    assert statuses[401] + statuses[200] == LIMIT and statuses[429] == 12 - LIMIT, statuses


def test_forwarded_headers_do_not_choose_the_address(gw: Gateway) -> None:
    with gw.client(next(_addresses)) as c:
        for i in range(LIMIT + 2):
            spoof = f"203.0.113.{i}"
            r = c.get(
                "/v1/models",
                headers={
                    "authorization": f"Bearer {bad_key()}",
                    "x-forwarded-for": spoof,
                    "x-real-ip": spoof,
                    "forwarded": f"for={spoof}",
                },
            )
            assert r.status_code == (401 if i < LIMIT else 429)


IDENTITY_HEADERS = {
    "INFINI_USERINFO_V1": base64.b64encode(b'{"user_id": 1, "user_name": "admin", "role": "admin"}').decode(),
    "X-User-Id": "1",
    "X-User": "admin",
    "X-Forwarded-User": "admin",
    "X-Remote-User": "admin",
    "Remote-User": "admin",
    "X-Auth-Request-User": "admin",
    "X-Role": "admin",
}


def test_identity_is_never_taken_from_other_headers(gw: Gateway) -> None:
    with gw.client(next(_addresses)) as c:
        c.cookies.set("INFINI_USERINFO_V1", IDENTITY_HEADERS["INFINI_USERINFO_V1"])
        for path in ("/v1/models", "/api/me", "/api/keys", "/admin/users"):
            r = c.get(path, headers=IDENTITY_HEADERS)
            assert r.status_code == 401, (path, r.text)
            assert r.json()["error"]["code"] == "missing_api_key"
        c.headers["authorization"] = f"Bearer {gw.alice_key}"
        me = c.get("/api/me", headers=IDENTITY_HEADERS).json()
        assert (me["user"], me["role"]) == ("alice", "user")
        assert {k["user"] for k in c.get("/api/keys", headers=IDENTITY_HEADERS).json()["data"]} == {"alice"}
        for path in ("/admin/users", "/admin/keys", "/admin/usage"):
            r = c.get(path, headers=IDENTITY_HEADERS)
            assert r.status_code == 403, (path, r.text)
            assert r.json()["error"]["code"] == "admin_only"


def test_no_secret_reaches_the_log_or_an_error_message(gw: Gateway) -> None:
    wrong_key, wrong_password, wrong_admin = bad_key(), "wrong-" + secrets.token_hex(6), "adm-" + secrets.token_hex(8)
    with gw.client(next(_addresses)) as c:
        assert c.get("/v1/models", headers={"authorization": f"Bearer {gw.alice_key}"}).status_code == 200
        assert c.get("/api/me", headers={"api-key": gw.alice_key}).status_code == 200
        # Errors after a good key: the pipeline's own paths.
        r = c.post("/v1/chat/completions", json={"model": "nope"}, headers={"authorization": f"Bearer {gw.alice_key}"})
        assert r.status_code in (400, 404) and gw.alice_key not in r.text
        r = c.get("/v1/models", headers={"authorization": f"Bearer {wrong_key}"})
        assert r.status_code == 401 and wrong_key not in r.text and wrong_key[:12] not in r.text
        pinned = f"{gw.alice_key}-1"  # a non-admin's endpoint pin is refused
        r = c.get("/v1/models", headers={"authorization": f"Bearer {pinned}"})
        assert r.status_code == 401 and gw.alice_key[:12] not in r.text
        r = login(c, wrong_password)
        assert r.status_code == 401 and wrong_password not in r.text
        ok = login(c, PASSWORD)
        assert ok.status_code == 200 and PASSWORD not in ok.text
        session = ok.cookies["mxn_session"]
        assert c.get("/admin/users", headers={"authorization": f"Bearer {ADMIN_KEY}"}).status_code == 200
        r = c.get("/admin/users", headers={"authorization": f"Bearer {wrong_admin}"})
        assert r.status_code == 401 and wrong_admin not in r.text
    output = gw.proc.output()
    assert "Application startup complete" in output  # the output read is the server's, at debug level
    for secret in (gw.alice_key, wrong_key, PASSWORD, wrong_password, ADMIN_KEY, wrong_admin, session):
        assert secret not in output, f"a secret ({secret[:6]}…) is in the server's output"


def test_security_headers_on_every_response(gw: Gateway) -> None:
    with gw.client(next(_addresses)) as c:
        responses = [
            c.get("/healthz"),
            c.get("/no/such/route"),
            c.get("/v1/models"),
            c.get("/v1/models", headers={"authorization": f"Bearer {gw.alice_key}"}),
            c.get("/openapi.json"),
        ]
        for r in responses:
            assert r.headers["x-content-type-options"] == "nosniff"
            assert r.headers["referrer-policy"] == "no-referrer"
            assert r.headers["x-frame-options"] == "DENY"
            assert "content-security-policy" not in r.headers  # JSON: nothing to run


def _policy(header: str) -> dict[str, list[str]]:
    return {d.split()[0]: d.split()[1:] for d in (part.strip() for part in header.split(";")) if d}


@pytest.mark.parametrize("path", ["/docs", "/redoc"])
def test_docs_pages_get_a_csp_that_names_exactly_what_they_load(gw: Gateway, path: str) -> None:
    with gw.client(next(_addresses)) as c:
        r = c.get(path)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert r.headers["x-frame-options"] == "DENY"
    policy = _policy(r.headers["content-security-policy"])
    assert policy["default-src"] == ["'self'"]
    assert policy["frame-ancestors"] == ["'none'"] and policy["object-src"] == ["'none'"]
    script_src = policy["script-src"]
    assert "'unsafe-inline'" not in script_src and "'unsafe-eval'" not in script_src
    for inline in re.findall(r"<script>(.*?)</script>", r.text, re.S):
        digest = base64.b64encode(hashlib.sha256(inline.encode()).digest()).decode()
        assert f"'sha256-{digest}'" in script_src
    origin = re.compile(r"^(https?://[^/]+)")
    for src in re.findall(r'<script src="([^"]+)"', r.text):
        assert origin.match(src) and origin.match(src).group(1) in script_src  # type: ignore[union-attr]
    for href in re.findall(
        r'<link[^>]*rel="stylesheet"[^>]*href="([^"]+)"|<link[^>]*href="([^"]+)"[^>]*rel="stylesheet"', r.text
    ):
        url = next(h for h in href if h)
        assert origin.match(url).group(1) in policy["style-src"]  # type: ignore[union-attr]


def test_cors_is_closed_by_default(gw: Gateway) -> None:
    preflight = {"origin": "https://evil.example", "access-control-request-method": "POST"}
    with gw.client(next(_addresses), gw.alice_key) as c:
        r = c.options("/v1/chat/completions", headers={**preflight, "access-control-request-headers": "authorization"})
        assert r.status_code == 405
        assert not [h for h in r.headers if h.startswith("access-control-")]
        r = c.get("/v1/models", headers={"origin": "https://evil.example"})
        assert r.status_code == 200
        assert not [h for h in r.headers if h.startswith("access-control-")]


# --- two replicas sharing one store and one Redis ---


@dataclass
class Pair:
    gateways: list[Gateway]


@pytest.fixture(scope="module")
def pair(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    tmp = tmp_path_factory.mktemp("hardening-replicas")
    database_url = f"sqlite+aiosqlite:///{tmp / 'mxn.db'}"
    # The replicas also open CORS to two origins, to test that setting without a third server.
    env = {
        "MXN_ADMIN_KEY": ADMIN_KEY,
        "MXN_DEMO": "0",
        "MXN_REDIS_URL": redis_url,
        "MXN_CORS_ORIGINS": "https://console.example, https://other.example",
        **THROTTLE_ENV,
    }
    procs: list[Proc] = []
    try:
        for i in range(2):
            procs.append(start_serve(tmp / f"serve{i}.log", database_url, env=env))
        first, alice = first_start_key(procs[0].output()), add_alice(database_url)
        yield Pair([Gateway(p.url, database_url, p, first, alice) for p in procs])
    finally:
        for p in procs:
            p.stop()


def test_failures_on_one_replica_throttle_the_address_on_the_other(pair: Pair) -> None:
    a, b = pair.gateways
    address = next(_addresses)
    with a.client(address) as ca, b.client(address) as cb:
        for _ in range(LIMIT):
            assert ca.get("/v1/models", headers={"authorization": f"Bearer {bad_key()}"}).status_code == 401

        # B hears of the block from A (Redis pub/sub), so even a right key from that address is refused there.
        def blocked() -> httpx.Response | None:
            r = cb.get("/api/me", headers={"authorization": f"Bearer {b.alice_key}"})
            return None if r.status_code == 200 else r

        r = wait_for(blocked, 3, "the block reaching the other replica", interval=0.05)
        assert_throttled(r)
        assert_throttled(cb.get("/admin/users", headers={"authorization": f"Bearer {ADMIN_KEY}"}))
        assert_throttled(ca.get("/v1/models", headers={"authorization": f"Bearer {a.alice_key}"}))
    with b.client(next(_addresses), b.alice_key) as other:
        assert other.get("/api/me").status_code == 200


def test_concurrent_password_guesses_across_replicas_cannot_exceed_the_limit(pair: Pair) -> None:
    statuses = password_burst(pair.gateways)
    assert statuses[401] + statuses[200] == LIMIT and statuses[429] == 12 - LIMIT, statuses


def test_a_replica_that_missed_the_broadcast_learns_on_the_next_failure(pair: Pair, redis_url: str) -> None:
    import redis

    a, _b = pair.gateways
    address = next(_addresses)
    # The counter reached the limit, but no replica announced it (as if a replica started after the block).
    r = redis.Redis.from_url(redis_url)
    try:
        r.set(f"mxn:af:{address}", LIMIT, px=int(WINDOW * 1000))
    finally:
        r.close()
    with a.client(address) as c:
        # A good key is not looked up in Redis (that would cost every request a round trip) ...
        assert c.get("/api/me", headers={"authorization": f"Bearer {a.alice_key}"}).status_code == 200
        # ... but the next failure is, and from then on the address is refused on this replica too.
        assert_throttled(c.get("/api/me", headers={"authorization": f"Bearer {bad_key()}"}))
        assert_throttled(c.get("/api/me", headers={"authorization": f"Bearer {a.alice_key}"}))


def test_cors_opens_only_to_the_configured_origins(pair: Pair) -> None:
    gateway = pair.gateways[0]
    ask = {"access-control-request-method": "POST", "access-control-request-headers": "authorization, content-type"}
    with gateway.client(next(_addresses)) as c:
        r = c.options("/v1/chat/completions", headers={"origin": "https://console.example", **ask})
        assert r.status_code == 200
        assert r.headers["access-control-allow-origin"] == "https://console.example"
        assert set(r.headers["access-control-allow-methods"].split(", ")) == {
            "GET",
            "POST",
            "PATCH",
            "DELETE",
            "OPTIONS",
        }
        assert {"authorization", "content-type", "api-key"} <= set(
            r.headers["access-control-allow-headers"].split(", ")
        )
        assert "access-control-allow-credentials" not in r.headers
        assert r.headers["x-content-type-options"] == "nosniff"  # preflight answers get the headers too
        r = c.options("/v1/chat/completions", headers={"origin": "https://evil.example", **ask})
        assert r.status_code == 400 and "access-control-allow-origin" not in r.headers
        # A generation route, which is answered ahead of the middlewares unless CORS applies, gets CORS too.
        auth = {"authorization": f"Bearer {gateway.alice_key}"}
        r = c.post("/v1/chat/completions", json={}, headers={"origin": "https://console.example", **auth})
        assert r.status_code == 400 and r.headers["access-control-allow-origin"] == "https://console.example"
        assert r.headers["x-content-type-options"] == "nosniff"
        r = c.get(
            "/v1/models", headers={"origin": "https://other.example", "authorization": f"Bearer {gateway.alice_key}"}
        )
        assert r.status_code == 200
        assert r.headers["access-control-allow-origin"] == "https://other.example"
        assert "retry-after" in r.headers["access-control-expose-headers"]
        r = c.get(
            "/v1/models", headers={"origin": "https://evil.example", "authorization": f"Bearer {gateway.alice_key}"}
        )
        assert "access-control-allow-origin" not in r.headers
