"""`mxn`: one typer app, one module per command group."""

from __future__ import annotations

import typer

from mxn.cli import accounting, admin, catalog, chips, client, deploy, engine, models, moderation, serve

app = typer.Typer(no_args_is_help=True, add_completion=False, help="mxn: M models on N chips behind one API.")
app.command("serve")(serve.serve)
app.add_typer(admin.users, name="users")
app.add_typer(admin.keys, name="keys")
app.add_typer(catalog.app, name="catalog")
app.add_typer(models.app, name="models")
app.add_typer(moderation.app, name="moderation")
app.add_typer(accounting.codes, name="codes")
app.command("usage")(accounting.usage)
app.command("chips")(chips.chips)
app.command("engine")(engine.engine)
app.command("deploy")(deploy.deploy)
app.command("scale")(deploy.scale)
app.command("undeploy")(deploy.undeploy)
app.command("deployments")(deploy.deployments)
app.command("chat")(client.chat)
app.command("batch")(client.batch)
app.command("bench")(client.bench)


def main() -> None:
    app()
