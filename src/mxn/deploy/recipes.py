"""Engine launch recipes (`recipes.yaml`): how to start vLLM, SGLang, llama.cpp, Ollama or the embedded engine
on a chip's devices. Rendering one gives the argv, the environment and the URLs of one replica."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field

from mxn.errors import InvalidRequest


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Version(_Strict):
    """Where a running engine says its version: a JSON answer at `url` (its `field`), or a package's metadata."""

    url: str | None = None
    field: str = "version"
    package: str | None = None


class Recipe(_Strict):
    command: list[str] = Field(min_length=1)
    env: dict[str, str] = {}
    chip_env: dict[str, dict[str, str]] = {}
    dtype: dict[str, str] = {}
    prepare: Literal["gguf"] | None = None
    health: str = "/health"
    base: str = "/v1"
    version: Version = Version()
    supports: list[str] | None = None
    upstream_model: str = "{name}"
    chips: list[str]


class ChipRule(_Strict):
    visible: str | None  # e.g. CUDA_VISIBLE_DEVICES; None: the chip has no such variable (the CPU)
    device: str | None  # the torch device of the embedded engine; None: it cannot run there


class Recipes(_Strict):
    engines: dict[str, Recipe]
    chips: dict[str, ChipRule]


@dataclass(frozen=True, slots=True)
class Launch:
    """One replica's process: what to run, with which environment, and where it will answer."""

    argv: list[str]
    env: dict[str, str]
    health_url: str
    base_url: str
    upstream_model: str
    engine: str = ""
    dtype: str | None = None
    version: Version = field(default_factory=Version)
    python: str | None = None  # the engine's interpreter, where it has one


def engine_python(engine: str, engines_dir: str | Path) -> str:
    """The interpreter of the engine's own virtual environment, else `python3` on PATH (an image, a system
    install)."""
    venv = Path(engines_dir) / engine / "bin" / "python"
    return str(venv.absolute()) if venv.exists() else "python3"


@cache
def load(path: str | None = None) -> Recipes:
    text = Path(path).read_text() if path else resources.files("mxn.deploy").joinpath("recipes.yaml").read_text()
    return Recipes.model_validate(yaml.safe_load(text))


def check(engine: str, chip: str, recipes: Recipes | None = None) -> Recipe:
    """The recipe of `engine`, if it runs on `chip`; else a 400 naming what would."""
    book = recipes or load()
    recipe = book.engines.get(engine)
    if recipe is None:
        raise InvalidRequest(f"unknown engine '{engine}'; known: {', '.join(sorted(book.engines))}", param="engine")
    if chip not in recipe.chips:
        raise InvalidRequest(f"engine '{engine}' does not run on chip '{chip}'; it runs on: {', '.join(recipe.chips)}")
    return recipe


def render(
    engine: str,
    *,
    chip: str,
    model: str,
    name: str,
    port: int,
    devices: list[int] | None = None,
    host: str = "127.0.0.1",
    memory_fraction: float = 0.9,
    context_length: int = 4096,
    engines_dir: str | Path = ".engines",
    recipes: Recipes | None = None,
) -> Launch:
    """The launch of one replica of `engine` serving `model` as `name` on `devices` of `chip`."""
    book = recipes or load()
    recipe = check(engine, chip, book)
    rule = book.chips.get(chip, ChipRule(visible=None, device=None))
    devices = devices or []
    dtype = recipe.dtype.get(chip, recipe.dtype.get("default"))
    python = engine_python(engine, engines_dir)
    values: dict[str, Any] = {
        "model": model,
        "name": name,
        "host": host,
        "port": port,
        "tp": max(len(devices), 1),
        "memory_fraction": memory_fraction,
        "device": rule.device or "cpu",
        "python": sys.executable,
        "engine_python": python,
        "recipes_dir": str(Path(__file__).parent),
        "context_length": context_length,
        "dtype": dtype or "auto",
    }
    env = {k: v.format(**values) for k, v in recipe.chip_env.get(chip, {}).items() if k not in os.environ}
    env.update({k: v.format(**values) for k, v in recipe.env.items()})
    if rule.visible:
        env[rule.visible] = ",".join(str(d) for d in devices)
    address = f"http://{host}:{port}"
    return Launch(
        [part.format(**values) for part in recipe.command],
        env,
        address + recipe.health,
        address + recipe.base,
        recipe.upstream_model.format(**values),
        engine,
        dtype,
        recipe.version,
        python if "{engine_python}" in recipe.command else sys.executable,
    )
