"""`mxn engine`: serve one model with the embedded engine, OpenAI-compatible, without the gateway around it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
import uvicorn

from mxn.catalog.defaults import local_engine_installed


def engine(
    model: Annotated[str, typer.Option("--model", help="a HuggingFace model directory")],
    port: Annotated[int, typer.Option("--port", help="port")] = 8100,
    host: Annotated[str, typer.Option("--host", help="bind address")] = "127.0.0.1",
    name: Annotated[str | None, typer.Option("--name", help="served model name [the directory's name]")] = None,
    device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda, cuda:N, npu")] = "auto",
    dtype: Annotated[str, typer.Option("--dtype", help="auto, float32, bfloat16, float16")] = "auto",
    max_batch: Annotated[int, typer.Option("--max-batch", help="sequences decoded together")] = 16,
) -> None:
    """Serve MODEL at http://HOST:PORT/v1 (chat, completions or embeddings); GET /health is 200 once loaded."""
    if not local_engine_installed():
        typer.echo("error: the embedded engine needs torch and transformers: pip install 'mxn[local]'", err=True)
        raise typer.Exit(1)
    if not model.startswith("package:") and not (Path(model) / "config.json").exists():
        typer.echo(f"error: {model} is not a model directory (no config.json)", err=True)
        raise typer.Exit(2)
    from mxn.engines.local.server import EngineServer

    options = {"device": device, "dtype": dtype, "max_batch": max_batch}
    server = EngineServer(model, name or Path(model).name, options)
    uvicorn.run(server.app(), host=host, port=port, log_level="warning", loop="uvloop", http="httptools")
