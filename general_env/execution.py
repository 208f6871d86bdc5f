"""Running a tool environment's model-written code on the sandbox's call service.

Every entry point of `general_env.harness` (a tool call, a replay, a solution, the checks) is one call in a
warm sandbox container; the harness is loaded into the container once, and each attempt starts from a fresh
copy of the environment's database (the sandbox copies the read-only master into the attempt's work folder).

    with WorldExecutor(config) as worlds:
        with worlds.attempt(bundle.database) as world:
            world.run("call_tool", name="search_flights", arguments={...})

`run` returns the entry point's own result. What the model's code did (a limit hit, a crash of its
container) comes back as `HarnessFailure` with the sandbox's outcome and reason, which callers store as that
attempt's outcome; failures outside it (the engine) propagate as `SandboxInfraError` after the pool's retries.
"""

from __future__ import annotations

import contextlib
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
        self.source = harness.sandbox_source()

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
