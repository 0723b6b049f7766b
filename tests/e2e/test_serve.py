"""`mxn serve` as an operator meets it: first start, bad catalogue, several workers, CLI on the same store."""

from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from tests.conftest import ROOT, Server, first_start_key, free_port, mxn, start


def test_invalid_catalogue_makes_serve_exit_naming_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("models:\n  - {name: a}\ndeployments:\n  - model: a\n    chip: nvidia\n    moderation: false\n")
    db = tmp_path / "x.db"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "mxn",
            "serve",
            "--port",
            str(free_port()),
            "--catalog",
            str(bad),
            "--database-url",
            f"sqlite+aiosqlite:///{db}",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert done.returncode == 2
    assert f"{bad}:4:" in done.stderr and "moderation_off_confirmed" in done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    assert not db.exists()  # nothing was written


def test_catalogue_reapply_through_the_cli_changes_nothing(server: Server, catalog_file: Path) -> None:
    env = {"SSE_URL": server.upstreams["sse"].url}
    done = mxn("catalog", "apply", str(catalog_file), database_url=server.database_url, env=env)
    assert "(0 created, 0 updated, 0 removed)" in done.stdout


def test_first_start_prints_credentials_once_and_workers_share_one_store(tmp_path: Path) -> None:
    db = f"sqlite+aiosqlite:///{tmp_path / 'w.db'}"
    port = free_port()
    cmd = [sys.executable, "-m", "mxn", "serve", "--port", str(port), "--workers", "2", "--database-url", db]
    proc = start(cmd, f"http://127.0.0.1:{port}/readyz", tmp_path / "w.log", env={"MXN_DEMO": "0"})
    try:
        key = first_start_key(proc.output())
        url = f"http://127.0.0.1:{port}/v1/models"

        def get(_: int) -> int:
            return httpx.get(url, headers={"authorization": f"Bearer {key}"}, timeout=10).status_code

        with ThreadPoolExecutor(8) as pool:
            assert set(pool.map(get, range(40))) == {200}
        assert proc.output().count("Started server process") == 2
    finally:
        proc.stop()
    # A second start on the same store makes no new admin and prints no secret.
    proc = start(
        [*cmd[:-4], "--database-url", db], f"http://127.0.0.1:{port}/readyz", tmp_path / "w2.log", env={"MXN_DEMO": "0"}
    )
    try:
        assert "API key:" not in proc.output()
    finally:
        proc.stop()


def test_users_and_keys_cli(tmp_path: Path) -> None:
    db = f"sqlite+aiosqlite:///{tmp_path / 'cli.db'}"
    mxn("users", "create", "alice", "--password-stdin", database_url=db, stdin="correct horse\n")
    again = mxn("users", "create", "alice", database_url=db, check=False)
    assert again.returncode == 1 and "already exists" in again.stderr and "Traceback" not in again.stderr
    keys = [
        mxn("keys", "create", "--user", "alice", "--rpm", "5", database_url=db).stdout.strip().splitlines()[-1]
        for _ in range(5)
    ]
    assert all(k.startswith("sk-") and len(k) >= 35 for k in keys) and len(set(keys)) == 5
    sixth = mxn("keys", "create", "--user", "alice", database_url=db, check=False)
    assert sixth.returncode == 1 and "at most 5" in sixth.stderr
    listing = mxn("keys", "list", "--json", database_url=db).stdout
    assert all(k not in listing for k in keys)  # only hashes are stored; the list shows prefixes
    assert '"rpm": 5' in listing


def test_usage_records_survive_a_clean_shutdown(tmp_path: Path, upstreams) -> None:  # type: ignore[no-untyped-def]
    db = f"sqlite+aiosqlite:///{tmp_path / 'shutdown.db'}"
    catalog = tmp_path / "c.yaml"
    url = upstreams["sse"].url
    catalog.write_text(
        f'models: [{{name: m}}]\ndeployments: [{{model: m, chip: nvidia, endpoints: [{{url: "{url}"}}]}}]\n'
    )
    port = free_port()
    cmd = [sys.executable, "-m", "mxn", "serve", "--port", str(port), "--catalog", str(catalog), "--database-url", db]
    proc = start(cmd, f"http://127.0.0.1:{port}/readyz", tmp_path / "s.log", env={"MXN_DEMO": "0"})
    key = first_start_key(proc.output())
    try:
        with httpx.Client(timeout=30, headers={"authorization": f"Bearer {key}"}) as c:
            for _ in range(20):
                r = c.post(
                    f"http://127.0.0.1:{port}/v1/chat/completions",
                    json={"model": "m", "messages": [{"role": "user", "content": "x"}]},
                )
                assert r.status_code == 200
    finally:
        proc.stop()  # SIGTERM right away: the last batch must still be written
    assert proc.popen.returncode == 0 and "Application shutdown complete" in proc.output(), proc.output()
    rows = mxn("usage", "--format", "json", database_url=db).stdout
    assert rows.count('"status": 200') == 20
