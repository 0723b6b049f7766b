"""The deployment files: Dockerfile, compose.yaml (+ deploy/nginx.conf) and the Helm chart.

No container engine or Kubernetes runs here, so the files are checked with the tools that read them
(`docker-compose config`, `helm lint` / `helm template`, Kubernetes' JSON schemas), and the compose topology
— two gateways started together on one PostgreSQL and Redis, behind nginx with the file's own config — is run
with real processes in place of containers."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import compose
import httpx
import kubernetes_validate
import openai
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from mxn.config import Settings
from tests.conftest import ROOT, Proc, first_start_key, free_port, pg_database, start, wait_for

COMPOSE = Path(compose.__file__).parent / "docker-compose"  # the Go binary itself: its wrapper drops exit codes
HELM = Path(sys.executable).parent / "helm"
CHART = ROOT / "deploy/helm/mxn"
KUBERNETES = "1.30.0"
SETTINGS = {f"MXN_{name.upper()}" for name in Settings.model_fields}

pytestmark = pytest.mark.e2e  # docker-compose, helm, pip, nginx and `mxn serve` run as processes


def _compose(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("MXN_", "POSTGRES_"))}
    return subprocess.run(
        [str(COMPOSE), "-f", str(ROOT / "compose.yaml"), *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**base, **env},
        timeout=60,
    )


def compose_config(*profiles: str, **env: str) -> dict[str, Any]:
    flags = [arg for p in profiles for arg in ("--profile", p)]
    done = _compose(*flags, "config", "--format", "json", env={"MXN_SECRET": "s" * 64, **env})
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout))


# --- compose.yaml ---


def test_compose_is_two_gateways_behind_nginx_on_postgres_and_redis() -> None:
    config = compose_config()
    services = config["services"]
    assert set(services) == {"gateway-1", "gateway-2", "lb", "postgres", "redis"}
    one, two = services["gateway-1"], services["gateway-2"]
    assert one["image"] == two["image"] and one["environment"] == two["environment"]
    env = one["environment"]
    assert set(env) <= SETTINGS, f"not settings of mxn: {set(env) - SETTINGS}"
    assert env["MXN_DATABASE_URL"].startswith("postgresql+asyncpg://") and "@postgres:5432/" in env["MXN_DATABASE_URL"]
    assert env["MXN_REDIS_URL"] == "redis://redis:6379/0"
    assert env["MXN_SECRET"] == "s" * 64
    for gateway in (one, two):
        assert "ports" not in gateway  # only the load balancer is reachable from outside
        assert gateway["depends_on"]["postgres"]["condition"] == "service_healthy"
        assert gateway["depends_on"]["redis"]["condition"] == "service_healthy"
        assert gateway["depends_on"]["ray-head"]["required"] is False
        # The catalogue mount comes from a folder that exists.
        assert all(Path(v["source"]).exists() for v in gateway["volumes"] if v["type"] == "bind")
    lb = services["lb"]
    assert [p["published"] for p in lb["ports"]] == ["8000"] and lb["ports"][0]["target"] == 80
    (conf,) = [Path(v["source"]) for v in lb["volumes"]]
    assert conf == ROOT / "deploy/nginx.conf"
    assert re.findall(r"^\s*server (\S+:\d+)", conf.read_text(), re.M) == ["gateway-1:8000", "gateway-2:8000"]
    # The password given once reaches both the database and the gateways' URL.
    env = compose_config(POSTGRES_PASSWORD="pw9")["services"]
    assert env["postgres"]["environment"]["POSTGRES_PASSWORD"] == "pw9"
    assert ":pw9@postgres" in env["gateway-2"]["environment"]["MXN_DATABASE_URL"]


def test_compose_ray_profile_adds_a_head_that_advertises_its_chips() -> None:
    services = compose_config("ray", MXN_RAY_ADDRESS="ray://ray-head:10001")["services"]
    head = services["ray-head"]
    assert head["image"] == services["gateway-1"]["image"]
    command = " ".join(head["command"])
    assert "ray start --head --block --port=6379 --ray-client-server-port=10001" in command
    assert "mxn chips --ray-resources" in command
    assert services["gateway-1"]["environment"]["MXN_RAY_ADDRESS"] == "ray://ray-head:10001"


def test_compose_refuses_to_start_without_a_secret() -> None:
    done = _compose("config", "-q", env={})
    assert done.returncode != 0 and "MXN_SECRET" in done.stderr


@pytest.fixture()
def pg_url() -> Iterator[str]:
    yield from pg_database()


def _nginx(tmp: Path, upstreams: list[int]) -> Proc:
    """nginx with deploy/nginx.conf, the gateways' compose names replaced by these local ports."""
    conf = (ROOT / "deploy/nginx.conf").read_text()
    for n, port in enumerate(upstreams, 1):
        conf = conf.replace(f"gateway-{n}:8000", f"127.0.0.1:{port}")
    port = free_port()
    conf = conf.replace("listen 80;", f"listen 127.0.0.1:{port};").replace("/tmp/nginx.pid", str(tmp / "nginx.pid"))
    (tmp / "nginx.conf").write_text(conf)
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    cmd = [nginx, "-p", str(tmp), "-c", str(tmp / "nginx.conf"), "-e", str(tmp / "error.log"), "-g", "daemon off;"]
    return start(cmd, f"http://127.0.0.1:{port}/healthz", tmp / "nginx.log")


def test_the_compose_topology_serves_and_fails_over(
    tmp_path: Path, pg_url: str, redis_url: str, demo_data_dir: Path
) -> None:
    """compose.yaml's gateways (its environment, the store URLs pointed here) start at the same moment on an
    empty PostgreSQL, and serve through nginx with deploy/nginx.conf; one stops, the other goes on; every
    request is counted once."""
    env = compose_config()["services"]["gateway-1"]["environment"]
    env |= {"MXN_DATABASE_URL": pg_url, "MXN_REDIS_URL": redis_url, "MXN_DATA_DIR": str(demo_data_dir)}
    ports = [free_port(), free_port()]
    cmds = [[sys.executable, "-m", "mxn", "serve", "--port", str(p)] for p in ports]
    with ThreadPoolExecutor(2) as pool:  # both run their first start at once, as `docker compose up` does
        started = [
            pool.submit(start, cmd, f"http://127.0.0.1:{p}/readyz", tmp_path / f"g{p}.log", env, 120)
            for cmd, p in zip(cmds, ports, strict=True)
        ]
        gateways = [f.result() for f in started]
    procs = list(gateways)
    try:
        firsts = [g for g in gateways if "First start" in g.output()]
        assert len(firsts) == 1, "exactly one replica makes the admin user"
        key = first_start_key(firsts[0].output())
        lb = _nginx(tmp_path, ports)
        procs.append(lb)
        client = openai.OpenAI(base_url=lb.url + "/v1", api_key=key, max_retries=0)
        maas = openai.OpenAI(base_url=lb.url + "/maas/mxn-demo/cpu", api_key=key, max_retries=0)

        def chat(i: int) -> str:
            reply = (client if i % 2 else maas).chat.completions.create(
                model="mxn-demo", messages=[{"role": "user", "content": f"hello {i}"}], max_tokens=8
            )
            return reply.choices[0].message.content or ""

        with ThreadPoolExecutor(4) as pool:
            assert len(list(pool.map(chat, range(12)))) == 12
        # Streaming passes through nginx chunk by chunk.
        stream = client.chat.completions.create(
            model="mxn-demo", messages=[{"role": "user", "content": "hi"}], max_tokens=8, stream=True
        )
        assert len([c for c in stream if c.choices and c.choices[0].delta.content]) > 1
        served = [_chat_requests(g.url, key) for g in gateways]
        assert sum(served) == 13 and all(served), f"least_conn spreads over both replicas: {served}"

        gateways[0].stop()  # one replica goes away; nginx sends everything to the other
        assert [chat(i) for i in range(6)]
        assert _chat_requests(gateways[1].url, key) == served[1] + 6

        # Usage: each request once, whichever replica served it.
        with httpx.Client(base_url=lb.url, headers={"authorization": f"Bearer {key}"}, timeout=30) as admin:
            rows = wait_for(lambda: _usage_rows(admin, 19), 20, "19 usage rows")
        assert len(rows) == 19
    finally:
        for proc in procs:
            proc.stop()


def _chat_requests(url: str, key: str) -> int:
    metrics = httpx.get(url + "/metrics", headers={"authorization": f"Bearer {key}"}, timeout=10).text
    families = {f.name: f for f in text_string_to_metric_families(metrics)}
    return int(sum(s.value for s in families["mxn_requests"].samples if s.name == "mxn_requests_total"))


def _usage_rows(admin: httpx.Client, want: int) -> list[dict[str, Any]] | None:
    rows = [r for r in admin.get("/admin/usage").json()["data"] if r["model"] == "mxn-demo"]
    return rows if len(rows) >= want else None


# --- Dockerfile ---


def _dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of every instruction, continuation lines joined."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def test_dockerfile_copies_what_the_build_context_has() -> None:
    kept = [line[1:] for line in (ROOT / ".dockerignore").read_text().splitlines() if line.startswith("!")]
    for op, args in _dockerfile():
        if op == "COPY" and not args.startswith("--from"):
            *sources, _dest = args.split()
            for source in sources:
                assert (ROOT / source).exists(), source
                assert source.rstrip("/") in {k.rstrip("/") for k in kept}, f"{source} is not in the build context"


def test_dockerfile_runs_mxn_with_real_settings() -> None:
    instructions = _dockerfile()
    env = " ".join(args for op, args in instructions if op == "ENV")
    names = set(re.findall(r"(MXN_[A-Z_]+)=", env))
    assert names and names <= SETTINGS, names - SETTINGS
    assert ("ENTRYPOINT", '["mxn"]') in instructions and ("CMD", '["serve"]') in instructions
    assert "/healthz" in dict(instructions)["HEALTHCHECK"]
    assert any(op == "USER" and args == "mxn" for op, args in instructions)


def test_the_installed_package_has_every_file_it_reads() -> None:
    """The image installs mxn from a wheel (`pip install .`), not from the checkout: every file under src/mxn
    must be in it (migrations, recipes, the console, tokenizer data, ...)."""
    with tempfile.TemporaryDirectory() as out:
        subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", out, str(ROOT)],
            check=True,
            capture_output=True,
            timeout=300,
        )
        (wheel,) = Path(out).glob("mxn-*.whl")
        names = set(zipfile.ZipFile(wheel).namelist())
    tracked = subprocess.run(["git", "ls-files", "src/mxn"], capture_output=True, text=True, cwd=ROOT, check=True)
    missing = [p for p in tracked.stdout.split() if p.removeprefix("src/") not in names]
    assert not missing, f"not in the wheel: {missing}"


# --- the Helm chart ---


def helm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(HELM), *args], capture_output=True, text=True, timeout=60)


def render(*sets: str) -> list[dict[str, Any]]:
    args = [a for s in ("secret.value=" + "s" * 64, *sets) for a in ("--set", s)]
    done = helm("template", "r", str(CHART), *args)
    assert done.returncode == 0, done.stderr
    return [d for d in yaml.safe_load_all(done.stdout) if d]


def kinds(docs: list[dict[str, Any]]) -> list[str]:
    return sorted(f"{d['kind']}/{d['metadata']['name']}" for d in docs)


def test_helm_lint() -> None:
    done = helm("lint", "--strict", str(CHART), "--set", "secret.value=x")
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize(
    "sets",
    [
        (),
        ("ray.head.enabled=true", "ingress.enabled=true", "replicaCount=3"),
        (
            "postgresql.enabled=false",
            "postgresql.url=postgresql+asyncpg://u:p@db:5432/mxn",
            "redis.enabled=false",
            "redis.url=redis://cache:6379/1",
            "ray.address=ray://raycluster-head-svc:10001",
            "secret.existingSecret=mine",
        ),
    ],
    ids=["defaults", "ray-head-ingress", "external-services"],
)
def test_rendered_chart_is_valid_kubernetes(sets: tuple[str, ...]) -> None:
    docs = render(*sets)
    for doc in docs:
        kubernetes_validate.validate(doc, KUBERNETES, strict=True)
    (gateway,) = [d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "r-mxn"]
    (container,) = gateway["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e for e in container["env"]}
    assert set(env) <= SETTINGS, set(env) - SETTINGS
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert gateway["spec"]["template"]["spec"]["securityContext"]["runAsUser"] == 10001
    secret_name = env["MXN_SECRET"]["valueFrom"]["secretKeyRef"]["name"]
    (chart_secret,) = [d for d in docs if d["kind"] == "Secret"]
    if "secret.existingSecret=mine" in sets:
        assert secret_name == "mine" and "MXN_SECRET" not in chart_secret["stringData"]
        assert chart_secret["stringData"]["MXN_DATABASE_URL"] == "postgresql+asyncpg://u:p@db:5432/mxn"
        assert env["MXN_REDIS_URL"]["value"] == "redis://cache:6379/1"
        assert env["MXN_RAY_ADDRESS"]["value"] == "ray://raycluster-head-svc:10001"
        assert not {"StatefulSet/r-mxn-postgresql", "Deployment/r-mxn-redis"} & set(kinds(docs))
    else:
        assert secret_name == "r-mxn" and chart_secret["stringData"]["MXN_SECRET"] == "s" * 64
        assert "@r-mxn-postgresql:5432/" in chart_secret["stringData"]["MXN_DATABASE_URL"]
        assert env["MXN_REDIS_URL"]["value"] == "redis://r-mxn-redis:6379/0"
        assert {"StatefulSet/r-mxn-postgresql", "Deployment/r-mxn-redis", "Service/r-mxn"} <= set(kinds(docs))
    if "ray.head.enabled=true" in sets:
        assert env["MXN_RAY_ADDRESS"]["value"] == "ray://r-mxn-ray-head:10001"
        assert {"Deployment/r-mxn-ray-head", "Service/r-mxn-ray-head", "Ingress/r-mxn"} <= set(kinds(docs))
        assert gateway["spec"]["replicas"] == 3


def test_the_schema_check_rejects_what_kubernetes_would() -> None:
    """The validator is not a rubber stamp: a misspelt field or a wrong type in a rendered object fails it."""
    (gateway,) = [d for d in render() if d["kind"] == "Deployment" and d["metadata"]["name"] == "r-mxn"]
    gateway["spec"]["replica"] = 2
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(gateway, KUBERNETES, strict=True)
    del gateway["spec"]["replica"]
    gateway["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "8000"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(gateway, KUBERNETES, strict=True)


def test_chart_carries_a_catalogue_as_written() -> None:
    path = ROOT / "examples/genstudio.yaml"
    done = helm("template", "r", str(CHART), "--set", "secret.value=x", "--set-file", f"catalog={path}")
    assert done.returncode == 0, done.stderr
    docs = [d for d in yaml.safe_load_all(done.stdout) if d]
    (config_map,) = [d for d in docs if d["kind"] == "ConfigMap"]
    assert yaml.safe_load(config_map["data"]["catalog.yaml"]) == yaml.safe_load(path.read_text())
    (gateway,) = [d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "r-mxn"]
    env = {e["name"]: e.get("value") for e in gateway["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["MXN_CATALOG"] == "/etc/mxn/catalog.yaml"


@pytest.mark.parametrize(
    ("sets", "says"),
    [
        ((), "secret.value (MXN_SECRET) or secret.existingSecret is required"),
        (("secret.value=x", "replicaCount=two"), "replicaCount: Invalid type"),
        (("secret.value=x", "replicas=2"), "Additional property replicas is not allowed"),
        (("secret.value=x", "postgresql.enabled=false"), "postgresql.url is required"),
        (("secret.value=x", "redis.enabled=false"), "redis.url is required"),
        (("secret.value=x", "env.LOG_LEVEL=debug"), "LOG_LEVEL"),
    ],
    ids=["no-secret", "bad-type", "unknown-value", "no-database", "no-redis", "not-a-setting"],
)
def test_chart_refuses_bad_values_with_a_reason(sets: tuple[str, ...], says: str) -> None:
    done = helm("template", "r", str(CHART), *[a for s in sets for a in ("--set", s)])
    assert done.returncode != 0 and says in done.stderr, done.stderr
