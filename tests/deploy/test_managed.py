"""Managed deployments end to end: `mxn deploy` starts embedded-engine servers (`mxn engine`) as replicas, the
gateway registers them and serves through them with the `openai` SDK; replicas that die come back; scale and
undeploy stop them. Once on this machine (local placement), once on a two-node Ray cluster."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import Proc, free_port, mxn, start_serve, wait_for

pytestmark = pytest.mark.e2e

ADMIN = "adm-" + "d" * 28


def _managed(gateway: Proc) -> list[dict[str, Any]]:
    r = httpx.get(gateway.url + "/admin/managed", headers={"authorization": f"Bearer {ADMIN}"}, timeout=10)
    assert r.status_code == 200, r.text
    return list(r.json()["data"])


def _nodes(gateway: Proc) -> dict[str, Any]:
    r = httpx.get(gateway.url + "/admin/nodes", headers={"authorization": f"Bearer {ADMIN}"}, timeout=30)
    assert r.status_code == 200, r.text
    return dict(r.json())


def _running(gateway: Proc, count: int) -> list[dict[str, Any]] | None:
    data = _managed(gateway)
    if len(data) == 1 and data[0]["state"] == "running" and data[0]["running"] == count:
        instances = data[0]["instances"]
        if len(instances) == count and all(i["state"] == "running" for i in instances):
            return list(instances)
    return None


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    with open(f"/proc/{pid}/stat") as f:  # a zombie is gone too: it only waits for its parent to reap it
        return f.read().split(") ")[1].startswith("Z")


def _chat(client: openai.OpenAI, model: str) -> str:
    r = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=4)
    assert r.choices[0].message.content
    assert r.usage is not None and r.usage.completion_tokens > 0
    return r.choices[0].message.content


def _serve_through_every_replica(gateway: Proc, key: str, instances: list[dict[str, Any]]) -> None:
    """Concurrent requests through the gateway (both route forms) reach every replica's engine."""
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=key, max_retries=0)
    maas = openai.OpenAI(base_url=gateway.url + "/maas/mxn-demo/cpu", api_key=key, max_retries=0)
    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(lambda i: _chat(client if i % 2 else maas, "mxn-demo"), range(12)))
    assert len(answers) == 12
    for instance in instances:
        health = httpx.get(instance["url"].removesuffix("/v1") + "/health", timeout=5).json()
        assert health["steps"] > 0, f"replica {instance['index']} served nothing"


@pytest.fixture()
def gateway_env(tmp_path: Path) -> dict[str, str]:
    return {
        "MXN_DEMO": "false",
        "MXN_ADMIN_KEY": ADMIN,
        "MXN_DATA_DIR": str(tmp_path / "data"),
        "MXN_DEPLOY_INTERVAL": "0.5",
        "MXN_HEALTH_INTERVAL": "1",
        "MXN_CATALOG_REFRESH": "1",
    }


def _user_key(db: str) -> str:
    mxn("users", "create", "deployer", database_url=db)
    created = mxn("keys", "create", "--user", "deployer", "--rpm", "1000", "--rpd", "100000", database_url=db)
    return created.stdout.strip().splitlines()[-1]


def test_local_placement(tmp_path: Path, demo_data_dir: Path, gateway_env: dict[str, str]) -> None:
    db = f"sqlite+aiosqlite:///{tmp_path / 'mxn.db'}"
    gateway_env = {**gateway_env, "MXN_ENGINE_CPUS": "0"}
    gateway = start_serve(tmp_path / "serve.log", db, env=gateway_env)
    try:
        key = _user_key(db)
        model_dir = str(demo_data_dir / "models" / "mxn-demo")
        out = mxn("deploy", model_dir, "--chip", "cpu", "--replicas", "2", "--wait", "180", database_url=db)
        assert "mxn-demo@cpu is running" in out.stdout
        instances = wait_for(lambda: _running(gateway, 2), 120, "running")
        assert len({i["url"] for i in instances}) == 2
        # MXN_ENGINE_CPUS keeps each engine, and what it starts, to core 0; its disclosure counts that core.
        for instance in instances:
            assert os.sched_getaffinity(instance["pid"]) == {0}
            assert instance["hardware"]["cores"] == 1
        node = _nodes(gateway)
        assert node["placement"] == "local" and node["leader"] is True
        assert sorted(node["data"][0]["replicas"]) == ["mxn-demo@cpu/mxn#0", "mxn-demo@cpu/mxn#1"]
        assert any(d["chip"] == "cpu" for d in node["data"][0]["devices"])
        _serve_through_every_replica(gateway, key, instances)

        # A replica's engine dies: the deployment keeps serving, and the replica comes back.
        lost = instances[0]
        os.kill(lost["pid"], signal.SIGKILL)
        client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=key, max_retries=0)
        for _ in range(4):
            _chat(client, "mxn-demo")
        back = wait_for(lambda: (r := _running(gateway, 2)) and r[0]["pid"] != lost["pid"] and r, 120, "restarted")
        assert back[0]["restarts"] >= 1

        mxn("scale", "mxn-demo@cpu", "--replicas", "1", "--wait", "60", database_url=db)
        wait_for(lambda: _gone(back[1]["pid"]), 30, "the surplus replica stopped")
        _chat(client, "mxn-demo")

        # A replica that cannot be placed (no NVIDIA device here) is shown pending, with why.
        mxn("deploy", "/models/big", "--chip", "nvidia", "--devices", "2", database_url=db)

        def pending() -> dict[str, Any] | None:
            big = next(m for m in _managed(gateway) if m["deployment"] == "big@nvidia")
            return big if big["instances"] and big["instances"][0]["state"] == "pending" else None

        big = wait_for(pending, 20, "the unplaceable replica pending")
        assert big["state"] == "deploying" and big["running"] == 0
        assert "needs 2 free nvidia device(s), this machine has 0" in big["instances"][0]["detail"]
        mxn("undeploy", "big@nvidia", "--wait", "30", database_url=db)

        # The gateway is killed outright: its engines die with it rather than linger.
        kept = _running(gateway, 1)
        assert kept is not None
        gateway.popen.kill()
        gateway.popen.wait(10)
        wait_for(lambda: _gone(kept[0]["pid"]), 30, "the orphaned engine gone")
        gateway = start_serve(tmp_path / "serve2.log", db, env=gateway_env)
        wait_for(lambda: _running(gateway, 1), 120, "running again after the gateway restarted")
        _chat(client.with_options(base_url=gateway.url + "/v1"), "mxn-demo")

        out = mxn("undeploy", "mxn-demo@cpu", "--wait", "60", database_url=db)
        assert "is gone" in out.stdout
        assert _managed(gateway) == []
        r = httpx.get(gateway.url + "/v1/models", headers={"authorization": f"Bearer {key}"})
        assert "mxn-demo" not in {m["id"] for m in r.json()["data"]}
    finally:
        gateway.stop()


def test_deploy_refuses_bad_requests_and_changes_nothing(tmp_path: Path) -> None:
    db = f"sqlite+aiosqlite:///{tmp_path / 'mxn.db'}"
    bad = [
        (["deploy", "/m", "--chip", "cpu", "--engine", "tgi"], "unknown engine 'tgi'"),
        (["deploy", "/m", "--chip", "biren", "--engine", "mxn"], "does not run on chip 'biren'"),
        (["deploy", "/m", "--chip", "cpu", "--replicas", "0"], "replicas"),
        (["scale", "nothing@cpu", "--replicas", "2"], "does not exist"),
        (["undeploy", "nothing", "--chip", "cpu"], "does not exist"),
    ]
    for args, message in bad:
        done = mxn(*args, database_url=db, check=False)
        assert done.returncode != 0 and message in done.stderr, (args, done.stderr)
        assert "Traceback" not in done.stderr
    listed = mxn("deployments", "--json", database_url=db)
    assert json.loads(listed.stdout) == {"data": []}
    mxn("deploy", "/m", "--chip", "cpu", "--name", "m", database_url=db)
    again = mxn("deploy", "/m", "--chip", "cpu", "--name", "m", database_url=db, check=False)
    assert again.returncode == 1 and "runs on mxn already" in again.stderr
    # A second engine in the same cell is welcome; then scale and undeploy must say which one.
    mxn("deploy", "/m.gguf", "--chip", "cpu", "--name", "m", "--engine", "llamacpp", database_url=db)
    both = {
        (d["deployment"], d["engine"]) for d in json.loads(mxn("deployments", "--json", database_url=db).stdout)["data"]
    }
    assert both == {("m@cpu", "mxn"), ("m@cpu", "llamacpp")}
    which = mxn("scale", "m@cpu", "--replicas", "2", database_url=db, check=False)
    assert which.returncode != 0 and "say which one" in which.stderr and "llamacpp, mxn" in which.stderr
    assert (
        "(llamacpp): 2 replica(s)"
        in mxn("scale", "m@cpu", "--replicas", "2", "--engine", "llamacpp", database_url=db).stdout
    )


@pytest.fixture()
def ray_cluster(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Two Ray nodes on this machine, each advertising room for two CPU replicas (`chip:cpu`), on loopback; the
    head also listens for Ray clients (`ray://`), as a gateway outside the cluster reaches it."""
    cluster_utils = pytest.importorskip("ray.cluster_utils")
    # Ray would otherwise put its nodes on the machine's outward address; tests stay on 127.0.0.1.
    monkeypatch.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    node = {"num_cpus": 1, "resources": {"chip:cpu": 2}, "node_ip_address": "127.0.0.1"}
    head = {**node, "include_dashboard": False, "ray_client_server_port": free_port()}
    cluster = cluster_utils.Cluster(initialize_head=True, head_node_args=head)
    cluster.client_address = f"ray://127.0.0.1:{head['ray_client_server_port']}"
    cluster.add_node(**node)
    cluster.wait_for_nodes()
    try:
        yield cluster
    finally:
        cluster.shutdown()


@pytest.mark.parametrize("via", ["gcs", "client"])
def test_ray_placement(
    tmp_path: Path, demo_data_dir: Path, gateway_env: dict[str, str], ray_cluster: Any, via: str
) -> None:
    """The gateway on a node of the cluster (`host:port`), or outside it as a Ray client (`ray://host:port`)."""
    db = f"sqlite+aiosqlite:///{tmp_path / 'mxn.db'}"
    address = ray_cluster.address if via == "gcs" else ray_cluster.client_address
    env = {**gateway_env, "MXN_RAY_ADDRESS": address, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    gateway = start_serve(tmp_path / "serve.log", db, env=env)
    try:
        key = _user_key(db)
        model_dir = str(demo_data_dir / "models" / "mxn-demo")
        mxn("deploy", model_dir, "--chip", "cpu", "--replicas", "2", "--wait", "240", database_url=db)
        instances = wait_for(lambda: _running(gateway, 2), 240, "running")
        nodes = _nodes(gateway)
        assert nodes["placement"] == "ray"
        assert [n["resources"]["chip:cpu"] for n in nodes["data"]] == [2.0, 2.0]
        # Spread: one replica on each node.
        assert sorted(len(n["replicas"]) for n in nodes["data"]) == [1, 1]
        _serve_through_every_replica(gateway, key, instances)

        # The node that is not the head goes away with its replica.
        head = ray_cluster.head_node.node_id
        worker = next(n for n in ray_cluster.worker_nodes)
        lost = next(i for i in instances if i["node"] == worker.node_id)
        ray_cluster.remove_node(worker)
        client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=key, max_retries=0)
        for _ in range(4):
            _chat(client, "mxn-demo")  # the surviving replica serves meanwhile
        back = wait_for(
            lambda: (r := _running(gateway, 2)) and all(i["node"] == head for i in r) and r,
            240,
            "the lost replica placed again",
        )
        assert back[lost["index"]]["url"] != lost["url"]
        _serve_through_every_replica(gateway, key, back)

        mxn("undeploy", "mxn-demo@cpu", "--wait", "120", database_url=db)
        assert _managed(gateway) == []
        assert all(n["replicas"] == [] for n in _nodes(gateway)["data"] if n["alive"])
    finally:
        gateway.stop()
