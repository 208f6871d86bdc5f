"""What a command's process pays to start and to end, kept to what anyone can observe.

Start: imports allocate hundreds of thousands of objects that live as long as the process, and the cyclic
collector, triggered by those allocations, scans them again and again (about 0.3 s of CPU in a flow
command). The collector is paused while a command imports (`start`, then `importing` around the imports a
command makes on its own), and what was imported is then frozen: moved to the collector's permanent
generation, which later collections do not scan. Collection is back on as soon as the imports are done.

End: Python's own exit runs the threading module's shutdown (non-daemon threads joined, and the callbacks
Prefect registers there to drain its log and event queues to the server), then the `atexit` callbacks (last
registered first), then a final collection and the teardown of every imported module (about half a second
with Prefect loaded, and nobody can observe it). `start` registers one `atexit` callback before any library
does, so it runs after every other one; when the command's exit code was given to `arm_exit`, that callback
flushes the logging handlers and the standard streams and ends the process with that code, skipping only the
teardown. An exit that was not armed (an uncaught exception that Python must still print) ends the usual way.
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import os
import sys
from collections.abc import Iterator

_exit_code: dict[str, int] = {}


def start() -> None:
    """Call once, first thing: `atexit` callbacks registered before this one would run after the exit."""
    atexit.register(_exit_now)
    gc.disable()


def imports_done() -> None:
    gc.freeze()
    gc.enable()


@contextlib.contextmanager
def importing() -> Iterator[None]:
    """Imports made inside run with the collector paused; what they loaded is frozen after."""
    gc.disable()
    try:
        yield
    finally:
        imports_done()


def arm_exit(code: object) -> None:
    """The command ends with `code` (an int or None, as `sys.exit` takes them); other codes (a message) are
    left to Python, which prints them."""
    if code is None or (isinstance(code, int) and not isinstance(code, bool)):
        _exit_code["code"] = int(code or 0)


def _exit_now() -> None:
    if "code" not in _exit_code:
        return
    if "logging" in sys.modules:  # flushes and closes its handlers, as its own exit callback would
        sys.modules["logging"].shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(AttributeError, OSError, ValueError):  # closed or replaced: nothing to write
            stream.flush()
    os._exit(_exit_code["code"])
