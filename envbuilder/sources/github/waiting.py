"""Sleeping through a rate limit with a visible countdown, rather than failing.

The client never calls `time.sleep` itself: it calls a sleeper `(seconds, reason) -> None`, so tests
inject a quick one and the CLI shows the wait as a line of its rich progress display."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

log = logging.getLogger(__name__)

Sleeper = Callable[[float, str], None]


class CountdownSleeper:
    """Waits `seconds`, showing `reason` and the time left as a progress line.

    With a `progress` (the CLI's own rich Progress) the countdown is one more task in it; otherwise a
    transient display of its own on stderr. Threads that wait at the same time share the display."""

    def __init__(self, progress: Progress | None = None, console: Console | None = None, tick_s: float = 0.25):
        self.progress = progress
        self.console = console or Console(stderr=True)
        self.tick_s = tick_s
        self._lock = threading.Lock()
        self._own: Progress | None = None
        self._users = 0

    def __call__(self, seconds: float, reason: str) -> None:
        if seconds <= 0:
            return
        log.warning("%s: waiting %.0f s", reason, seconds)
        progress = self._acquire()
        task = progress.add_task(f"[yellow]{reason}: waiting", total=seconds)
        deadline = time.monotonic() + seconds
        try:
            while (left := deadline - time.monotonic()) > 0:
                time.sleep(min(self.tick_s, left))
                progress.update(task, completed=seconds - max(0.0, deadline - time.monotonic()))
        finally:
            progress.remove_task(task)
            self._release()

    def _acquire(self) -> Progress:
        if self.progress is not None:
            return self.progress
        with self._lock:
            if self._own is None:
                self._own = Progress(TextColumn("{task.description}"), BarColumn(), TimeRemainingColumn(),
                                     console=self.console, transient=True)
                self._own.start()
            self._users += 1
            return self._own

    def _release(self) -> None:
        if self.progress is not None:
            return
        with self._lock:
            self._users -= 1
            if self._users == 0 and self._own is not None:
                self._own.stop()
                self._own = None
