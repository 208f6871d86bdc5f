"""`tasksynth config`: what configuration is in effect."""

from __future__ import annotations

import json

import tomli_w
import typer

from tasksynth.cli import app_state

app = typer.Typer(help="Show the effective configuration (embedded defaults < tasksynth.toml < TASKSYNTH_* "
                       "variables). Secrets are never stored in config: keys ending in _env name the variable "
                       "that holds them.", no_args_is_help=True)


@app.command("show")
def show(as_json: bool = typer.Option(False, "--json", help="Print JSON instead of TOML.")) -> None:
    """Print the effective configuration, secrets masked."""
    data = app_state.config().to_dict(mask_secrets=True)
    if as_json:
        typer.echo(json.dumps(data, indent=2))
    else:
        typer.echo(tomli_w.dumps(_drop_empty(data)))


@app.command("path")
def path() -> None:
    """Print the home directory and the store file in use."""
    config = app_state.config()
    typer.echo(f"home:  {config.home_path}")
    typer.echo(f"store: {config.store_path}")


def _drop_empty(value):
    """TOML has no null; empty tables are dropped so the output stays valid TOML."""
    if isinstance(value, dict):
        return {k: _drop_empty(v) for k, v in value.items() if v is not None}
    return value
