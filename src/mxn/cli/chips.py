"""`mxn chips`: the accelerators (and the CPU) this machine has, as its vendors' tools report them."""

from __future__ import annotations

from typing import Annotated

import orjson
import typer
from rich.console import Console
from rich.table import Table

from mxn.chips.detect import detect, ray_resources


def chips(
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
    ray: Annotated[
        bool, typer.Option("--ray-resources", help="print only the Ray resources, for `ray start --resources`")
    ] = False,
) -> None:
    """List this machine's devices: chip type, name, memory, utilisation, and the Ray resources they make."""
    devices = detect()
    if ray:
        typer.echo(orjson.dumps(ray_resources(devices)).decode())
        return
    if as_json:
        body = {"devices": [d.view() for d in devices], "ray_resources": ray_resources(devices)}
        typer.echo(orjson.dumps(body, option=orjson.OPT_INDENT_2).decode())
        return
    table = Table("chip", "index", "name", "memory MiB", "used MiB", "use %")
    for d in devices:
        table.add_row(
            d.chip,
            str(d.index),
            d.name,
            *(str(v) if v is not None else "—" for v in (d.memory_mib, d.memory_used_mib, d.utilization_pct)),
        )
    Console().print(table)
    typer.echo("Ray resources: " + ", ".join(f"{k}={v:g}" for k, v in ray_resources(devices).items()))
