"""Running a tool environment's model-written code on the sandbox's call service.

Every entry point of `general_env.harness` (a tool call, a replay, a solution, the checks) is one call in a
warm sandbox container; the harness is loaded into the container once, and each attempt starts from a fresh
copy of the environment's database (the sandbox copies the read-only master into the attempt's work folder).

    with WorldExecutor(config) as worlds:
        with worlds.attempt(bundle.database) as world:
            world.run("call_tool", name="search_flights", arguments={...})

The harness goes to the container compiled (its code object, marshalled, with the source beside it for a
sandbox whose Python reads another bytecode format): the call service compiles what it is sent in every
call's child, and compiling the harness's source there was the largest single cost of a tool call.

`run` returns the entry point's own result. What the model's code did (a limit hit, a crash of its
container) comes back as `HarnessFailure` with the sandbox's outcome and reason, which callers store as that
attempt's outcome; failures outside it (the engine) propagate as `SandboxInfraError` after the pool's retries.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import importlib.util
import marshal
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from general_env import harness
from tasksynth.config import Config

STATE_FILE = "state.sqlite"


class HarnessFailure(Exception):
    """The model's code did not let the harness finish: a limit, a crash, a result too large."""

    def __init__(self, outcome: str, reason: str):
        super().__init__(f"{outcome}: {reason}")
        self.outcome, self.reason = outcome, reason


class WorldExecutor:
    """A call pool with the harness loaded; one per flow step (containers are bounded per host)."""

    def __init__(self, config: Config, *, timeout_s: float | None = None):
        from tasksynth.sandbox import CallPool

        self.config = config
        self.timeout_s = timeout_s or config.general.call_timeout_s
        self.pool = CallPool(config)
        self.source = sandbox_program(harness.sandbox_source())

    def __enter__(self) -> WorldExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.pool.close()

    @contextlib.contextmanager
    def attempt(self, database: Path) -> Iterator[AttemptWorld]:
        with self.pool.attempt(state_master=Path(database), state_name=STATE_FILE) as attempt:
            yield AttemptWorld(attempt, self.source, self.timeout_s)


class AttemptWorld:
    def __init__(self, attempt: Any, source: str, timeout_s: float):
        self.attempt, self.source, self.timeout_s = attempt, source, timeout_s
        self.db_path = attempt.state_path

    @property
    def state_intact(self) -> bool:
        """False once a container died under this attempt: its state was restarted from the master."""
        return self.attempt.crashes == 0

    def run(self, entry: str, **arguments: Any) -> dict[str, Any]:
        if "db_path" in _parameters(entry):
            arguments.setdefault("db_path", self.db_path)
        result = self.attempt.call(self.source, entry, arguments, timeout_s=self.timeout_s)
        if result.outcome == "ok":
            return result.result
        if result.outcome == "exception":
            raise HarnessFailure("exception", (result.exception or {}).get("message", "the harness raised"))
        raise HarnessFailure(result.outcome, result.reason)


def _parameters(entry: str) -> tuple[str, ...]:
    function = getattr(harness, entry)
    return function.__code__.co_varnames[:function.__code__.co_argcount + function.__code__.co_kwonlyargcount]


@functools.lru_cache(maxsize=4)
def sandbox_program(source: str) -> str:
    """`source` as a program whose running skips the compiling: its code object, marshalled, executed when
    the sandbox's Python has this bytecode format (the same magic number), else the source compiled there.
    Both travel compressed (every call sends its program)."""
    code = _packed(marshal.dumps(compile(source, "<general harness>", "exec")))
    fallback = _packed(source.encode())
    return (f"import binascii as _binascii, importlib.util as _importlib_util, marshal as _marshal, zlib as _zlib\n"
            f"def _unpacked(text):\n"
            f"    return _zlib.decompress(_binascii.a2b_base64(text))\n"
            f"if _importlib_util.MAGIC_NUMBER == {importlib.util.MAGIC_NUMBER!r}:\n"
            f"    exec(_marshal.loads(_unpacked({code!r})), globals())\n"
            f"else:\n"
            f"    exec(compile(_unpacked({fallback!r}).decode(), '<general harness>', 'exec'), globals())\n")


def _packed(data: bytes) -> str:
    return base64.b64encode(zlib.compress(data, 9)).decode()
