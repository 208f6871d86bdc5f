"""Progress bars for long work: one bar per flow step, fed by `flows.runtime.progress_listener`."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


@contextlib.contextmanager
def step_progress() -> Iterator[None]:
    from flows.runtime import progress_listener

    console = Console(stderr=True)
    with Progress(TextColumn("{task.description:<14}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[note]}"), TimeElapsedColumn(), console=console,
                  disable=not sys.stderr.isatty(), transient=False) as progress:
        bars: dict[str, int] = {}

        def update(report, total: int) -> None:
            if report.step not in bars:
                bars[report.step] = progress.add_task(report.step, total=total, note="")
            done = report.already_done + report.ran + report.failed
            note = f"{report.already_done} done before" if report.already_done else ""
            if report.failed:
                note += f" {report.failed} failed"
            progress.update(bars[report.step], total=total, completed=done, note=note.strip())
            if not sys.stderr.isatty() and total and done == total:
                console.print(f"{report.step}: {report.ran} ran, {report.already_done} already done, "
                              f"{report.failed} failed")

        with progress_listener(update):
            yield
