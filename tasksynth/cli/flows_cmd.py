"""`tasksynth flows`: run one pipeline now, or serve them all on their schedules."""

from __future__ import annotations

import json

import typer

from tasksynth.cli import app_state
from tasksynth.errors import ConfigError

app = typer.Typer(help="Prefect flows. With no PREFECT_API_URL they run against one local Prefect server per "
                       "home, started by the first command that needs it and stopped after an idle time "
                       "(`tasksynth flows server`); point PREFECT_API_URL at a Prefect server (`prefect server "
                       "start`) to see them in the Prefect UI.", no_args_is_help=True)
server_app = typer.Typer(help="The home's local Prefect server: started on demand by flow commands, stopped after "
                              "flows.server_idle_s without a request.", no_args_is_help=True)
app.add_typer(server_app, name="server")


@server_app.command("status")
def server_status() -> None:
    """Say whether the home's Prefect server runs, where, and since when."""
    import os
    import time

    from flows.prefect_server import prefect_home, server_status as status_of

    config = app_state.config()
    record, state = status_of(prefect_home(config))
    if os.environ.get("PREFECT_API_URL") and (record is None or os.environ["PREFECT_API_URL"] != record.url):
        typer.echo(f"PREFECT_API_URL is set ({os.environ['PREFECT_API_URL']}): flows use that server")
    if record is None:
        typer.echo(f"no local Prefect server for {prefect_home(config)} (the next flow command starts one)")
        return
    age = time.time() - record.started_at
    typer.echo(f"{state}: {record.url} (pid {record.pid}, started {age / 60:.1f} min ago, Prefect home "
               f"{prefect_home(config)})")


@server_app.command("stop")
def server_stop() -> None:
    """Stop the home's Prefect server (a later flow command starts a new one)."""
    from flows.prefect_server import prefect_home, stop_server

    record = stop_server(prefect_home(app_state.config()))
    typer.echo(f"stopped the Prefect server at {record.url} (pid {record.pid})" if record
               else "no local Prefect server was running")


@app.command("list")
def list_flows() -> None:
    """List the flows, their parameters and their schedules from config."""
    from flows.registry import FLOWS

    schedules = app_state.config().flows.schedules
    for name, entry in FLOWS.items():
        cron = schedules.get(name, "")
        typer.echo(f"{name:<12} {entry.description}" + (f"  [cron: {cron}]" if cron else ""))


@app.command("run", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def run(ctx: typer.Context, name: str = typer.Argument(..., help="Flow name (see `tasksynth flows list`)."),
        ) -> None:
    """Run a flow now. Parameters as KEY=VALUE (VALUE read as JSON when it parses), e.g.
    `tasksynth flows run code git=data/samples/calc repeat=2`."""
    from flows.registry import run_flow
    from tasksynth.cli.progress import step_progress

    params = _parse_params(ctx.args)
    with step_progress():
        result = run_flow(app_state.config(), name, params)
    typer.echo(json.dumps(result, indent=2, default=str))


@app.command("serve")
def serve() -> None:
    """Serve every flow that has a cron schedule in config ([flows.schedules] NAME = "CRON") with Prefect's
    `serve`; runs until interrupted. Schedules against PREFECT_API_URL, else the home's local Prefect server."""
    from flows.registry import serve_flows

    config = app_state.config()
    if not config.flows.schedules:
        raise ConfigError("no schedules: add [flows.schedules] with NAME = \"CRON\" entries to tasksynth.toml")
    serve_flows(config)


def _parse_params(args: list[str]) -> dict:
    params = {}
    for arg in args:
        if "=" not in arg:
            raise ConfigError(f"flow parameter {arg!r} is not KEY=VALUE")
        key, value = arg.split("=", 1)
        try:
            params[key.replace("-", "_")] = json.loads(value)
        except ValueError:
            params[key.replace("-", "_")] = value
    return params
