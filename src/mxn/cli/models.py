"""`mxn models create-demo`: build the demo chat model that the zero-config start serves."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mxn.catalog.defaults import demo_path, local_engine_installed
from mxn.config import get_settings

app = typer.Typer(no_args_is_help=True, help="Models of the embedded engine.")


@app.command("create-demo")
def create_demo_command(
    out: Annotated[str | None, typer.Option("--out", help="directory [MXN_DATA_DIR/models/mxn-demo]")] = None,
    seconds: Annotated[float, typer.Option("--seconds", help="training time")] = 60.0,
    force: Annotated[bool, typer.Option("--force", help="rebuild even if it exists")] = False,
) -> None:
    """Train the small Qwen2-style demo model on the bundled dialogues and save it."""
    target = Path(out) if out else demo_path(get_settings().data_dir)
    if (target / "config.json").exists() and not force:
        typer.echo(f"{target} exists (use --force to rebuild)")
        return
    if not local_engine_installed():
        typer.echo("error: the demo model needs torch and transformers: pip install 'mxn[local]'", err=True)
        raise typer.Exit(1)
    from mxn.engines.local.demo import create_demo

    create_demo(target, seconds, report=lambda line: typer.echo(line, err=True))
