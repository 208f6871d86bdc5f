"""The `general` group: its pipeline is specified in ARCHITECTURE.md and not built yet.

It already reports what the store holds for it, so a user can see where the data will be."""

from __future__ import annotations

import typer

from tasksynth.cli import app_state
from tasksynth.store import open_store

general_app = typer.Typer(help="General tool environments: a sandboxed agent builds a database and tools, then "
                               "tasks with solution and verifier functions, kept when pass@100 > 0. The synthesis "
                               "pipeline is not built yet; `status` shows what the store holds.",
                          no_args_is_help=True)


def _status(sql: str, label: str) -> None:
    config = app_state.config()
    with open_store(config, read_only=config.store_path.exists()) as store:
        rows = store.query(sql)
    if not rows:
        typer.echo(f"no {label} in {config.store_path}")
    for row in rows:
        typer.echo("  ".join(f"{k}={v}" for k, v in row.items()))


@general_app.command("status")
def general_status() -> None:
    """Count general tasks by level and acceptance."""
    _status("SELECT level, accepted, count(*) AS tasks FROM general_tasks GROUP BY ALL ORDER BY ALL", "general tasks")
