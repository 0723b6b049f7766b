"""An in-memory snapshot of the catalogue that the request path reads without touching the store."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from mxn.engines import EndpointConfig, Engine
from mxn.engines.pool import EnginePool
from mxn.errors import ModelNotFound, NotFound
from mxn.moderation.rules import RuleCache, Rules
from mxn.store.models import Chip, Deployment, Endpoint, ManagedDeployment, Model, ModerationRule
from mxn.tokens import Tokenizer, get_tokenizer


class EndpointState(StrEnum):
    """An endpoint's state as stored (the operator's, or a managed replica's); most hopeful first."""

    RUNNING = "running"
    DEPLOYING = "deploying"
    UNHEALTHY = "unhealthy"
    STOPPED = "stopped"

    @classmethod
    def of(cls, stored: str) -> EndpointState:
        """The stored string's state; one this build does not know is never routed to, as if stopped."""
        try:
            return cls(stored)
        except ValueError:
            return cls.STOPPED


@dataclass(frozen=True, slots=True)
class ModelInfo:
    name: str
    family: str | None
    kind: str
    context_length: int
    tokenizer_spec: str | None
    public: bool
    defaults: dict[str, Any]

    @property
    def tokenizer(self) -> Tokenizer:
        return get_tokenizer(self.tokenizer_spec, self.family)


@dataclass(frozen=True, slots=True)
class ChipInfo:
    id: str
    name: str
    alias: str | None

    @property
    def display(self) -> str:
        return self.alias or self.name


@dataclass(slots=True)
class EndpointInfo:
    id: int
    state: EndpointState
    weight: int
    priority: int
    upstream_model: str | None
    supports: frozenset[str] | None
    engine: Engine
    config: EndpointConfig  # what its engine was built from (kind, url or path, ...)
    max_concurrency: int | None = None
    health_path: str = "/models"
    api_key: str | None = None
    hardware: dict[str, Any] = field(default_factory=dict)  # this endpoint's own disclosure


@dataclass(slots=True)
class Cell:
    """One deployment: a model on a chip, with its endpoints."""

    id: int
    model: ModelInfo
    chip: ChipInfo
    moderation: bool
    price_input: float
    price_output: float
    disclosure: dict[str, Any]
    endpoints: list[EndpointInfo] = field(default_factory=list)
    limits: tuple[tuple[str, int], ...] = ()  # the cell's own rpm / tpm / concurrency
    rules: Rules | None = None  # moderation: None when it is off or there is nothing to check

    @property
    def name(self) -> str:
        return f"{self.model.name}@{self.chip.id}"

    @property
    def state(self) -> EndpointState:
        """`running` when any endpoint is; else the most hopeful state among them."""
        states = {e.state for e in self.endpoints}
        return next((s for s in EndpointState if s in states), EndpointState.STOPPED)


@dataclass
class Catalog:
    models: dict[str, ModelInfo] = field(default_factory=dict)
    chips: dict[str, ChipInfo] = field(default_factory=dict)
    cells: dict[tuple[str, str], Cell] = field(default_factory=dict)

    def model(self, name: str) -> ModelInfo:
        info = self.models.get(name)
        if info is None:
            raise ModelNotFound(f"The model '{name}' does not exist.", param="model")
        return info

    def endpoint(self, endpoint_id: int) -> EndpointInfo | None:
        return next((e for c in self.cells.values() for e in c.endpoints if e.id == endpoint_id), None)

    def cells_of(self, model: str) -> list[Cell]:
        return [c for (m, _), c in self.cells.items() if m == model]

    def cell(self, model: str, chip: str) -> Cell:
        self.model(model)
        found = self.cells.get((model, chip))
        if found is None:
            chips = ", ".join(sorted(c.chip.id for c in self.cells_of(model))) or "none"
            raise NotFound(
                f"model '{model}' is not deployed on chip '{chip}'; it is on: {chips}",
                param="model",
                code="model_not_on_chip",
            )
        return found

    def resolve(self, name: str, state_of: Callable[[Cell], str] = lambda c: c.state) -> Cell:
        """`name@chip`, or `name` alone: the chip whose deployment can serve now (running first)."""
        model, sep, chip = name.partition("@")
        if sep:
            return self.cell(model, chip)
        self.model(model)
        cells = self.cells_of(model)
        if not cells:
            raise NotFound(f"model '{model}' is not deployed on any chip", param="model", code="model_not_deployed")
        running = [c for c in cells if state_of(c) == EndpointState.RUNNING]
        return random.choice(running) if running else cells[0]


def _model_dirs(managed: Sequence[Any]) -> list[tuple[int, str]]:
    """(deployment id, source) of the managed deployments whose source is a model directory (a stat each)."""
    return [(deployment_id, source) for deployment_id, source in managed if Path(source).is_dir()]


def _disclosure(seen: list[dict[str, Any]]) -> dict[str, Any]:
    """The cell's disclosure from its endpoints': the common one, or `{"endpoints": [...]}` when they differ (vLLM
    and llama.cpp on the same chip)."""
    distinct = [h for i, h in enumerate(seen) if h not in seen[:i]]
    if len(distinct) <= 1:
        return dict(distinct[0]) if distinct else {}
    return {"endpoints": distinct}


async def load_catalog_snapshot(
    sessions: async_sessionmaker[AsyncSession], pool: EnginePool, rule_cache: RuleCache
) -> Catalog:
    """The catalogue as stored now, with each endpoint's engine from `pool` (kept while its config is unchanged)."""
    async with sessions() as s:
        models = (await s.execute(select(Model))).scalars().all()
        chips = (await s.execute(select(Chip))).scalars().all()
        deployments = (await s.execute(select(Deployment).order_by(Deployment.id))).scalars().all()
        endpoints = (await s.execute(select(Endpoint).order_by(Endpoint.id))).scalars().all()
        rule_sets = (await s.execute(select(ModerationRule).order_by(ModerationRule.id))).scalars().all()
        managed = (await s.execute(select(ManagedDeployment.deployment_id, ManagedDeployment.source))).all()
    cat = Catalog()
    # A model served by the embedded engine counts with that engine's own tokenizer unless told otherwise.
    model_of = {d.id: d.model for d in deployments}
    local_paths = {model_of[e.deployment_id]: e.path for e in endpoints if e.engine == "local" and e.path}
    # So does one that mxn deployed from a model directory (vLLM, llama.cpp, ... on the same files).
    for deployment_id, source in _model_dirs(managed):
        local_paths.setdefault(model_of[deployment_id], source)
    for m in models:
        cat.models[m.name] = ModelInfo(
            m.name,
            m.family,
            m.kind,
            m.context_length,
            m.tokenizer or local_paths.get(m.name),
            m.public,
            dict(m.defaults or {}),
        )
    for c in chips:
        cat.chips[c.id] = ChipInfo(c.id, c.name, c.alias)
    by_id: dict[int, Cell] = {}
    for d in deployments:
        cell = Cell(
            d.id,
            cat.models[d.model],
            cat.chips[d.chip],
            d.moderation,
            d.price_input,
            d.price_output,
            dict(d.disclosure or {}),
            limits=tuple((n, v) for n in ("rpm", "rpd", "tpm", "concurrency") if (v := getattr(d, n))),
        )
        if d.moderation:
            rules = rule_cache.get([r for r in rule_sets if r.deployment_id in (None, d.id)])
            cell.rules = None if rules.empty else rules
        cat.cells[(d.model, d.chip)] = by_id[d.id] = cell
    rule_cache.sweep()
    configs = [_config(e) for e in endpoints]
    # After all else that can fail: a reload that fails leaves the pool with the engines the old snapshot uses.
    engines = await pool.sync(configs)
    for e, config in zip(endpoints, configs, strict=True):
        engine = engines[e.id]
        by_id[e.deployment_id].endpoints.append(
            EndpointInfo(
                e.id,
                EndpointState.of(e.state),
                e.weight,
                e.priority,
                e.upstream_model,
                config.supports,
                engine,
                config,
                e.max_concurrency,
                e.health_path,
                e.api_key,
                dict(e.hardware or engine.hardware),  # declared, else detected
            )
        )
    for cell in by_id.values():
        # A cell that declares nothing discloses what its endpoints run on: one endpoint's, or each engine's.
        if not cell.disclosure:
            cell.disclosure = _disclosure([e.hardware for e in cell.endpoints if e.hardware])
    return cat


def _config(e: Endpoint) -> EndpointConfig:
    return EndpointConfig(
        id=e.id,
        engine=e.engine,
        url=e.url,
        path=e.path,
        upstream_model=e.upstream_model,
        api_key=e.api_key,
        stream_format=e.stream_format,
        timeouts=dict(e.timeouts or {}),
        supports=frozenset(e.supports) if e.supports is not None else None,
        options=dict(e.options or {}),
    )
