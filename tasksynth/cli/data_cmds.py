"""`tasksynth sql` and `tasksynth export`: reading the store."""

from __future__ import annotations

import datetime as dt
import decimal
import json
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import duckdb
import typer
from rich.console import Console
from rich.table import Table

from tasksynth.cli import app_state
from tasksynth.errors import StoreError, TasksynthError
from tasksynth.docker.portable import ImageOptions
from tasksynth.funnels import KINDS
from tasksynth.store import open_store


def sql_command(
    query: str = typer.Argument(None, help="SQL to run on the store. Omit it to open an interactive DuckDB shell."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON array of row objects (lists stay lists)."),
) -> None:
    """Query the store with SQL, read-only: a table, or JSON with --json.

    The query sees the store and nothing else: it cannot change the store, write or read other files
    (COPY ... TO, read_csv), attach databases, install or load extensions, reach the network, or change
    these settings.

    Example: tasksynth sql "select verdict, count(*) from code_tasks group by 1"
    """
    config = app_state.config()
    if query is None:
        _interactive_shell(config.store_path)
        return
    with open_store(config, sandboxed=True) as store:
        try:
            cursor_rows = store.query(query)
        except duckdb.PermissionException as exc:
            raise TasksynthError(f"refused: `tasksynth sql` reads the store only ({_first_line(exc)})") from None
        except duckdb.Error as exc:  # duckdb's errors carry a clear message already
            if "read-only mode" in str(exc) or "configuration has been locked" in str(exc):
                raise TasksynthError(f"refused: `tasksynth sql` reads the store only ({_first_line(exc)})") from None
            raise TasksynthError(f"query failed: {_first_line(exc)}") from None
    if as_json:
        typer.echo(json.dumps(cursor_rows, default=_json_default, ensure_ascii=False))
        return
    table = Table(show_lines=False)
    columns = list(cursor_rows[0]) if cursor_rows else []
    for column in columns:
        table.add_column(column)
    for row in cursor_rows:
        table.add_row(*(_cell(row[c]) for c in columns))
    console = Console() if sys.stdout.isatty() else Console(width=240)  # pipes get whole cells
    console.print(table)
    typer.echo(f"{len(cursor_rows)} row{'s' if len(cursor_rows) != 1 else ''}")


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0]


def _interactive_shell(path: Path) -> None:
    shell = shutil.which("duckdb")
    if not shell:
        raise TasksynthError("no `duckdb` shell on PATH: `pip install duckdb-cli` (or pass a query: "
                             "tasksynth sql \"select ...\")")
    if not path.exists():
        raise StoreError(f"no store at {path}; run a flow (or `tasksynth demo`) first")
    # -safe: no access to other files, no extensions, no ATTACH, as for a query passed on the command line.
    subprocess.run([shell, "-readonly", "-safe", str(path)], check=False)


def _json_default(value):
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, bytes):
        return value.hex()
    return str(value)


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, dict)):
        text = json.dumps(value, default=_json_default)
    else:
        text = str(value)
    return text if len(text) <= 120 else text[:117] + "..."


def export_command(
    out_dir: Path = typer.Argument(..., help="Directory to write <kind>/train-*.parquet and manifest.json into."),
    kind: list[str] = typer.Option(None, "--kind", help=f"Kinds to export ({', '.join(KINDS)}); repeatable. "
                                                      "Default: all."),
    max_shard_rows: int = typer.Option(10_000, "--max-shard-rows", help="Rows per Parquet shard at most."),
    include_all: bool = typer.Option(False, "--all", help="Export every task, not only accepted ones."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a previous export in OUT_DIR (one "
                                   "whose manifest lists every file in it); any other non-empty folder is refused."),
    images: list[str] = typer.Option(None, "--images", metavar="tar|registry=HOST/NAME", help="Carry the code "
                                     "tasks' Docker images: `tar` writes images/<base>.tar (docker save, shared "
                                     "layers once) beside the shards; `registry=HOST[:PORT]/NAME` pushes them "
                                     "after the local export is complete and adds their digests (run again to "
                                     "finish a push that failed). Repeatable."),
) -> None:
    """Export tasks as Parquet shards that `datasets.load_dataset("parquet", data_dir=OUT_DIR)` loads.

    Each code task's `environment` holds its recipe and base image reference; with --images, also how to load
    or pull its image (`load`, `image_id`, `registry`)."""
    from tasksynth.export import export_tasks  # Arrow and Parquet: loaded by the command that writes them

    config = app_state.config()
    image_options = ImageOptions.parse(images)
    with open_store(config, read_only=config.store_path.exists()) as store:
        result = export_tasks(store, out_dir, kinds=kind or KINDS, max_shard_rows=max_shard_rows,
                              include_all=include_all, overwrite=overwrite,
                              progress=lambda k, n: typer.echo(f"  {k}: {n} task{'s' if n != 1 else ''}"),
                              images=image_options, image_progress=lambda line: typer.echo(f"  {line}"))
    total = sum(result.counts.values())
    typer.echo(f"exported {total} tasks in {len(result.shards)} shards to {result.out_dir} "
               f"(manifest: {result.out_dir / 'manifest.json'})")
