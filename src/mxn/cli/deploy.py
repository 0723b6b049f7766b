"""`mxn deploy`, `mxn scale`, `mxn undeploy`, `mxn deployments`: managed deployments in the store; the running
gateway's controller starts and stops the replicas (on this machine, or on Ray with MXN_RAY_ADDRESS)."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

import orjson
import typer
from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncSession

from mxn import audit, services
from mxn.audit import Actor
from mxn.cli.common import DatabaseUrl, database_url, run
from mxn.deploy import service
from mxn.store.models import ManagedDeployment

Chip = Annotated[str, typer.Option("--chip", help="chip type id: nvidia, amd, ascend, ..., cpu")]
Wait = Annotated[float, typer.Option("--wait", help="seconds to wait for the gateway to carry it out (0: don't)")]
Engine = Annotated[str | None, typer.Option("--engine", help="which engine's deployment, where a cell runs several")]


def _split(model: str, chip: str | None) -> tuple[str, str]:
    name, sep, at = model.partition("@")
    if sep and chip and chip != at:
        raise typer.BadParameter(f"{model} names chip {at}, --chip says {chip}")
    if not (chip or at):
        raise typer.BadParameter("say which chip: --chip C (or MODEL@CHIP)")
    return name, chip or at


def _list(db: str) -> list[dict[str, Any]]:
    async def work(s, _secret):  # type: ignore[no-untyped-def]
        return await service.views(s)

    return run(db, work)


def _wait(db: str, name: str, engine: str | None, seconds: float, done: Any) -> None:
    """Poll the store until `done(view or None)` for the managed deployment of `engine` in cell `name` (any engine
    when None); exit 1 after `seconds` (is `mxn serve` running?)."""
    deadline = time.monotonic() + seconds
    while True:
        view = next((v for v in _list(db) if v["deployment"] == name and engine in (None, v["engine"])), None)
        if done(view):
            return
        if time.monotonic() > deadline:
            state = view["state"] if view else "gone"
            running = view["running"] if view else 0
            typer.echo(
                f"error: {name} is {state} ({running} running) after {seconds:g} s; is `mxn serve` up?", err=True
            )
            raise typer.Exit(1)
        time.sleep(0.5)


def deploy(
    model: Annotated[str, typer.Argument(help="what the engine loads: a model directory, a GGUF file or a hub id")],
    chip: Chip,
    replicas: Annotated[int, typer.Option("--replicas", help="replicas to run")] = 1,
    engine: Annotated[
        str | None, typer.Option("--engine", help="vllm, sglang, llamacpp, ollama, mxn [mxn on cpu, else vllm]")
    ] = None,
    name: Annotated[str | None, typer.Option("--name", help="served model name [the last part of MODEL]")] = None,
    devices: Annotated[int, typer.Option("--devices", help="devices per replica (tensor-parallel size)")] = 1,
    memory_fraction: Annotated[float, typer.Option("--memory-fraction", help="of each device's memory")] = 0.9,
    kind: Annotated[str, typer.Option("--kind", help="chat, completion or embedding")] = "chat",
    context_length: Annotated[int, typer.Option("--context-length")] = 4096,
    wait: Wait = 0,
    db: DatabaseUrl = None,
) -> None:
    """Run MODEL on CHIP with R replicas; each running replica becomes an endpoint of MODEL@CHIP."""
    try:
        req = service.DeployRequest(
            source=model,
            chip=chip,
            replicas=replicas,
            engine=engine,
            name=name,
            devices=devices,
            memory_fraction=memory_fraction,
            kind=kind,
            context_length=context_length,
        )
    except ValidationError as exc:
        err = exc.errors()[0]
        typer.echo(f"error: {'.'.join(str(p) for p in err['loc'])}: {err['msg']}", err=True)
        raise typer.Exit(2)

    url, row = _change(db, lambda s, actor: services.managed.deploy(s, actor, req))
    target = f"{req.name or service.served_name(model)}@{chip}"
    typer.echo(f"deploying {target}: {replicas} replica(s) of {model} with {row.engine}")
    if wait:
        _wait(url, target, row.engine, wait, lambda v: v is not None and v["running"] >= replicas)
        typer.echo(f"{target} is running")


def _change(
    db: str | None, change: Callable[[AsyncSession, Actor], Awaitable[ManagedDeployment]]
) -> tuple[str, ManagedDeployment]:
    """Apply `change(session, actor)`, a `services.managed` change that returns the managed row, to the store; the
    store's URL and the row."""

    async def work(s: AsyncSession, _secret: bytes) -> ManagedDeployment:
        return await change(s, audit.cli())

    url = database_url(db)
    return url, run(url, work)


def scale(
    model: Annotated[str, typer.Argument(help="MODEL or MODEL@CHIP")],
    replicas: Annotated[int, typer.Option("--replicas", help="replicas to run (0 stops them all)")],
    chip: Annotated[str | None, typer.Option("--chip")] = None,
    engine: Engine = None,
    wait: Wait = 0,
    db: DatabaseUrl = None,
) -> None:
    """Change how many replicas of a managed deployment run."""
    name, chip_id = _split(model, chip)
    target = f"{name}@{chip_id}"
    url, row = _change(db, lambda s, actor: services.managed.scale(s, actor, name, chip_id, replicas, engine))
    typer.echo(f"{target} ({row.engine}): {replicas} replica(s)")
    if wait:
        _wait(
            url, target, row.engine, wait, lambda v: v is not None and v["running"] == len(v["instances"]) == replicas
        )


def undeploy(
    model: Annotated[str, typer.Argument(help="MODEL or MODEL@CHIP")],
    chip: Annotated[str | None, typer.Option("--chip")] = None,
    engine: Engine = None,
    wait: Wait = 0,
    db: DatabaseUrl = None,
) -> None:
    """Stop every replica of a managed deployment and remove its endpoints (and the cell, if deploy made it and
    nothing else serves it)."""
    name, chip_id = _split(model, chip)
    target = f"{name}@{chip_id}"
    url, row = _change(db, lambda s, actor: services.managed.undeploy(s, actor, name, chip_id, engine))
    typer.echo(f"undeploying {target} ({row.engine})")
    if wait:
        _wait(url, target, row.engine, wait, lambda v: v is None)
        typer.echo(f"{target} ({row.engine}) is gone")


def deployments(
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
    db: DatabaseUrl = None,
) -> None:
    """List managed deployments and their replicas."""
    data = _list(database_url(db))
    if as_json:
        typer.echo(orjson.dumps({"data": data}, option=orjson.OPT_INDENT_2).decode())
        return
    for v in data:
        typer.echo(
            f"{v['deployment']}\t{v['engine']}\t{v['state']}\t{v['running']}/{v['replicas']} running\t{v['source']}"
        )
        for r in v["instances"]:
            typer.echo(f"  #{r['index']}\t{r['state']}\t{r['url']}")
