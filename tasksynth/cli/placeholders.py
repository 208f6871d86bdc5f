"""The `search` group: its pipeline is not built yet; `status` reports what the store holds for it."""

from __future__ import annotations

import typer

from tasksynth.cli import app_state
from tasksynth.store import open_store

search_app = typer.Typer(help="Search QA: long-tail entities -> question agent (+search) -> answer agents -> "
                              "verifier -> rubric grade. The synthesis pipeline is not built yet; `status` shows "
                              "what the store holds.", no_args_is_help=True)


def _status(sql: str, label: str) -> None:
    config = app_state.config()
    with open_store(config, read_only=config.store_path.exists()) as store:
        rows = store.query(sql)
    if not rows:
        typer.echo(f"no {label} in {config.store_path}")
    for row in rows:
        typer.echo("  ".join(f"{k}={v}" for k, v in row.items()))


@search_app.command("status")
def search_status() -> None:
    """Count search items by verdict."""
    _status("SELECT verdict, accepted, count(*) AS items FROM search_items GROUP BY ALL ORDER BY ALL", "search items")

