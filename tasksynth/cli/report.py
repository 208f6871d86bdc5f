"""`tasksynth report`: a page people can look at, built from the store."""

from __future__ import annotations

import time
import webbrowser
from pathlib import Path

import typer

from tasksynth.cli import app_state
from tasksynth.errors import TasksynthError
from tasksynth.store import open_store


def report_command(
    kind: list[str] = typer.Option(None, "--kind", help="Only these kinds (code, search, general); repeatable."),
    html_file: Path = typer.Option(None, "--html", dir_okay=False,
                                   help="Where to write the page (default: <home>/report.html)."),
    open_page: bool = typer.Option(False, "--open", help="Open the page in the default browser."),
    serve: bool = typer.Option(False, "--serve", help="Serve the page on 127.0.0.1 and browse every task, not a "
                                                      "sample; Ctrl-C stops it."),
    port: int = typer.Option(0, "--port", min=0, max=65535, help="Port for --serve (default: any free one)."),
    sample: int = typer.Option(500, "--sample", min=1, help="Tasks embedded in the page's browser (a stratified "
                                                             "sample; every count stays exact)."),
) -> None:
    """One self-contained HTML page: per kind the funnel with every discard reason, distributions, tokens,
    seconds and cost per kept task by role and model, time per step, and a task browser. Works with no
    network (every script and style is inside the page)."""
    from tasksynth.report.page import render_page, report_data

    config = app_state.config()
    if not config.store_path.exists():
        raise TasksynthError(f"no store at {config.store_path}; run a flow (or `tasksynth demo`) first")
    kinds = list(kind or []) or None
    if serve:
        from tasksynth.report.server import ReportServer

        server = ReportServer(lambda: open_store(config, read_only=True), kinds, port=port)
        typer.echo(f"report: {server.url} ({len(server.rows)} tasks); Ctrl-C stops it")
        if open_page:
            webbrowser.open(server.url)
        try:
            server.httpd.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            server.close()
        return
    started = time.monotonic()
    with open_store(config, read_only=True) as store:
        data = report_data(store, kinds, sample=sample)
    target = (html_file or config.home_path / "report.html").resolve()
    target.parent.mkdir(parents=True, exist_ok=True)
    page = render_page(data)
    staged = target.with_name(f".{target.name}.partial")
    staged.write_text(page)
    staged.replace(target)
    typer.echo(f"report: {target} ({len(page.encode()) / 1e6:.1f} MB, {len(data['kinds'])} kind(s), "
               f"{len(data.get('tasks', []))} of {data.get('task_total', 0)} tasks browsable; "
               f"{time.monotonic() - started:.1f}s)")
    if open_page:
        webbrowser.open(target.as_uri())
