"""The catalogue file: validation with line numbers, env interpolation, idempotent apply."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import delete, update

from mxn.catalog.apply import apply_catalog
from mxn.catalog.loader import CatalogError, load_catalog, parse_catalog
from mxn.catalog.registry import EndpointInfo, EndpointState, load_catalog_snapshot
from mxn.engines import EndpointConfig, Unavailable
from mxn.engines.pool import EnginePool
from mxn.moderation.rules import RuleCache
from mxn.store.db import create_engine, sessionmaker
from mxn.store.migrate import upgrade
from mxn.store.models import Endpoint

ROOT = Path(__file__).resolve().parent.parent

GOOD = """\
chips:
  - {id: biren, name: Biren, alias: "accelerator E"}
models:
  - {name: qwen1.5-14b-chat, context_length: 32768, tokenizer: qwen2, kind: chat, family: qwen,
     defaults: {temperature: 0.7}}
deployments:
  - model: qwen1.5-14b-chat
    chip: biren
    price: {input: 1.0, output: 2.0}
    endpoints:
      - url: ${UP_URL:-http://127.0.0.1:9001/v1}
        api_key: ${UP_KEY}
        upstream_model: Qwen/Qwen1.5-14B-Chat
"""


def test_env_interpolation(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UP_KEY", "k-123")
    spec = parse_catalog(GOOD)
    ep = spec.deployments[0].endpoints[0]
    assert (ep.url, ep.api_key) == ("http://127.0.0.1:9001/v1", "k-123")
    monkeypatch.setenv("UP_URL", "http://10.1.2.3:8000/v1")
    assert parse_catalog(GOOD).deployments[0].endpoints[0].url == "http://10.1.2.3:8000/v1"


def test_missing_env_var_names_its_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("UP_KEY", raising=False)
    with pytest.raises(CatalogError, match=r"^c.yaml:12: environment variable UP_KEY is not set"):
        parse_catalog(GOOD, "c.yaml")


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        ("models:\n  - {name: a, context_length: 0}\n", 2, "context_length"),
        ("models:\n  - name: a\n    kind: chat\n    colour: red\n", 4, "colour"),
        ("models:\n  - {name: a, tokenizer: 'tiktoken:nope'}\n", 2, "unknown tiktoken encoding"),
        ("models:\n  - {name: a}\ndeployments:\n  - {model: b, chip: nvidia}\n", 4, "model 'b' is not in"),
        ("models:\n  - {name: a}\ndeployments:\n  - {model: a, chip: quantum}\n", 4, "chip 'quantum'"),
        (
            "models:\n  - {name: a}\ndeployments:\n  - model: a\n    chip: nvidia\n    moderation: false\n",
            4,
            "moderation_off_confirmed",
        ),
        (
            "models:\n  - {name: a}\ndeployments:\n  - model: a\n    chip: nvidia\n"
            "    endpoints:\n      - {weight: 1}\n",
            7,
            "url",
        ),
        ("models: [\n", 2, "not valid YAML"),
        ("- just a list\n", 1, "top level"),
        ("moderation:\n  regexes: ['(']\n", 2, "does not compile"),
    ],
)
def test_invalid_files_name_the_line(text: str, line: int, words: str) -> None:
    with pytest.raises(CatalogError) as info:
        parse_catalog(text, "bad.yaml")
    assert str(info.value).startswith(f"bad.yaml:{line}: "), str(info.value)
    assert words in str(info.value)


def test_example_genstudio_catalogue() -> None:
    spec = load_catalog(ROOT / "examples/genstudio.yaml")
    assert len(spec.models) == 24 and len(spec.chips) == 7 and len(spec.deployments) == 43
    ctx = {m.name: m.context_length for m in spec.models}
    assert ctx["qwen-14b-chat"] == 8192 and ctx["chatglm2-6b"] == 32768 and ctx["llama-2-70b"] == 4096
    chips = {d.chip for d in spec.deployments if d.model == "llama-2-7b-chat"}
    assert chips == {"nvidia", "amd", "iluvatar", "metax", "moorethreads", "biren"}


def test_apply_is_idempotent(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'c.db'}"
    upgrade(url)
    spec = load_catalog(ROOT / "examples/genstudio.yaml")

    async def twice() -> tuple[dict[str, int], dict[str, int], dict[str, int]]:
        engine = create_engine(url)
        try:
            async with sessionmaker(engine)() as s:
                first = await apply_catalog(s, spec)
            async with sessionmaker(engine)() as s:
                second = await apply_catalog(s, spec)
            spec.deployments.pop()  # the file no longer lists a cell's endpoint: it goes
            async with sessionmaker(engine)() as s:
                third = await apply_catalog(s, spec)
            return first, second, third
        finally:
            await engine.dispose()

    first, second, third = asyncio.run(twice())
    assert first["created"] == 7 + 24 + 43 + 43
    assert second == {"created": 0, "updated": 0, "removed": 0}
    assert third == {"created": 0, "updated": 0, "removed": 0}  # deployments stay; only their file endpoints go


class _Engine(Unavailable):
    """Records its config and how often it was closed."""

    def __init__(self, config: EndpointConfig) -> None:
        super().__init__("recorded")
        self.config, self.closed = config, 0

    async def close(self) -> None:
        self.closed += 1


TWO_ENDPOINTS = """\
models:
  - {name: m, context_length: 4096}
deployments:
  - model: m
    chip: nvidia
    endpoints:
      - {url: "http://a:8000/v1"}
      - {url: "http://b:8000/v1"}
"""


def test_a_reload_keeps_unchanged_engines_rebuilds_changed_ones_and_closes_removed_ones(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'c.db'}"
    upgrade(url)
    built: list[_Engine] = []

    def factory(config: EndpointConfig, _client: object) -> _Engine:
        built.append(_Engine(config))
        return built[-1]

    async def reloads() -> list[dict[int, EndpointInfo]]:
        db = create_engine(url)
        sessions = sessionmaker(db)
        pool, rules = EnginePool(None, factory), RuleCache()

        async def snapshot() -> dict[int, EndpointInfo]:
            catalog = await load_catalog_snapshot(sessions, pool, rules)
            return {e.id: e for e in catalog.cells[("m", "nvidia")].endpoints}

        async def change(*statements: Any) -> None:
            async with sessions() as s:
                for statement in statements:
                    await s.execute(statement)
                await s.commit()

        try:
            async with sessions() as s:
                await apply_catalog(s, parse_catalog(TWO_ENDPOINTS))
            first = await snapshot()
            a, b = sorted(first)
            await change(update(Endpoint).where(Endpoint.id == a).values(state="stopped", weight=5))
            second = await snapshot()  # the operator's state and weight are not the engine's business
            await change(update(Endpoint).where(Endpoint.id == a).values(url="http://a2:8000/v1"))
            third = await snapshot()
            await change(delete(Endpoint).where(Endpoint.id == b))
            fourth = await snapshot()
            await pool.close()
            return [first, second, third, fourth]
        finally:
            await db.dispose()

    first, second, third, fourth = asyncio.run(reloads())
    a, b = sorted(first)
    assert first[a].state is EndpointState.RUNNING and second[a].state is EndpointState.STOPPED
    assert second[a].engine is first[a].engine and second[b].engine is first[b].engine
    assert third[a].engine is not first[a].engine and third[a].config.url == "http://a2:8000/v1"
    assert third[b].engine is first[b].engine and set(fourth) == {a}
    # Each engine was closed once: the first of `a` when its URL changed, `b`'s when it went, the rest at the end.
    assert len(built) == 3 and [e.closed for e in built] == [1, 1, 1]
