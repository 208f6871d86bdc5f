"""What runs inside the sandbox for a tool environment: tool calls, solutions and verifier checks.

Trusted code, standard library only, so that it runs in a bare sandbox image and ships inside every exported
bundle (`sandbox_source()` is this module with `verifiers.state_hash` prepended; a trainer runs it with
nothing of this project installed). Model-written code reaches it as text:

- tools (`def name(db, ...)`) run against the attempt's database loaded into memory: the file it came from
  is gone before any model-written code runs, so a solution cannot reach the data except through tools;
- the world is deterministic: the tools' clock is fixed (`now()`, and `datetime.datetime.now()`/`today()`,
  `time.time()`), and randomness is seeded (`rng`, and the `random` module) afresh for every tool call from
  the bundle's seed and the call's position in the attempt, so a call sees the same random numbers whether
  it runs alone (`call_tool`, an agent's episode), in a replay or inside a solution;
- a solution runs with a small set of builtins and a `tools` object whose attributes are the tool functions,
  every call recorded (name, arguments, result or error), as an agent's would be;
- checks run on the final state as plain data (`canonical_state`) and the answer: after a replay
  (`replay` then `run_checks`), or in one call on the state an episode left behind (`grade_state`).

Every entry point returns JSON-serialisable data; a failure of the model's code is reported in the result
(`error`), never raised, so the sandbox call itself only fails for reasons outside that code.
"""

from __future__ import annotations

import datetime as _datetime
import json
import os
import random
import sqlite3
import time
import traceback
from typing import Any

if "state_digest" not in globals():  # in the sandbox verifiers.state_hash's source is prepended (sandbox_source):
    # no import is tried there, which would search the container's path in every call
    from verifiers.state_hash import canonical_state, state_digest

DEFAULT_CLOCK = "2025-01-15T09:00:00"
MAX_RESULT_CHARS = 20_000
SAFE_BUILTINS = ("abs", "all", "any", "bool", "dict", "divmod", "enumerate", "filter", "float", "format",
                 "frozenset", "int", "isinstance", "len", "list", "map", "max", "min", "next", "range", "repr",
                 "reversed", "round", "set", "sorted", "str", "sum", "tuple", "zip", "print", "Exception",
                 "ValueError", "KeyError", "TypeError", "IndexError", "ZeroDivisionError", "StopIteration",
                 "ArithmeticError", "LookupError", "RuntimeError", "True", "False", "None")
PURE_MODULES = ("math", "statistics", "json", "re", "datetime", "itertools", "collections", "functools",
                "decimal", "fractions", "string")


class ToolFailed(Exception):
    """A tool raised: the message is what the caller (a model, or a solution) sees."""


def call_tool(tools_source: str, db_path: str, name: str, arguments: dict[str, Any], *,
              clock: str = DEFAULT_CLOCK, seed: int = 0, call_index: int = 0) -> dict[str, Any]:
    """One tool call on the database file (changes are written back): {"result"} or {"error"}.
    `call_index`: the call's position in its attempt (0 for the first), which seeds its randomness."""
    world = _World(tools_source, db_path, clock, seed, in_memory=False, first_call=call_index)
    try:
        return world.call(name, arguments)
    finally:
        world.close()


def grade_state(verifier_source: str, db_path: str, answer: Any) -> dict[str, Any]:
    """The checks and the state hash on the database file as an episode left it, in one call: what
    `replay` then `run_checks` give for the same calls, without running them again."""
    db = sqlite3.connect(db_path)
    try:
        state = canonical_state(db)
    finally:
        db.close()
    return {**run_checks(verifier_source, state, answer), "hash": state_digest(state)}


def replay(tools_source: str, db_path: str, calls: list[dict[str, Any]], *, clock: str = DEFAULT_CLOCK,
           seed: int = 0) -> dict[str, Any]:
    """Run `calls` ([{"name", "arguments"}]) in order on a fresh in-memory copy of the database: every call's
    outcome, the final canonical state and its hash."""
    world = _World(tools_source, db_path, clock, seed)
    try:
        outcomes = [world.call(c.get("name", ""), c.get("arguments") or {}) for c in calls]
        state = world.state()
        return {"calls": outcomes, "state": state, "hash": state_digest(state)}
    finally:
        world.close()


def run_solution(tools_source: str, solution_source: str, db_path: str, *, clock: str = DEFAULT_CLOCK,
                 seed: int = 0) -> dict[str, Any]:
    """Run `solve(tools)` with only the tools: its answer, the calls it made, the final state and hash."""
    world = _World(tools_source, db_path, clock, seed)
    try:
        namespace = _restricted_namespace()
        answer, error = None, None
        try:
            exec(compile(solution_source, "<solution>", "exec"), namespace)  # noqa: S102 - sandboxed
            answer = namespace["solve"](world.proxy())
            json.dumps(answer)
        except Exception as exc:  # noqa: BLE001 - the solution's failure is its result
            error = _error(exc)
        state = world.state()
        return {"answer": answer if error is None else None, "error": error, "calls": world.log,
                "state": state, "hash": state_digest(state)}
    finally:
        world.close()


def run_checks(verifier_source: str, state: dict[str, Any], answer: Any) -> dict[str, Any]:
    """Every `check_*(state, answer)`: {"checks": {name: true | false}, "errors": {name: text}, "passed"}."""
    namespace = _restricted_namespace()
    try:
        exec(compile(verifier_source, "<verifier>", "exec"), namespace)  # noqa: S102 - sandboxed
    except Exception as exc:  # noqa: BLE001
        return {"checks": {}, "errors": {"<module>": _error(exc)["message"]}, "passed": False}
    checks: dict[str, bool] = {}
    errors: dict[str, str] = {}
    for name, fn in sorted(namespace.items()):
        if not (name.startswith("check_") and callable(fn)):
            continue
        try:
            checks[name] = fn(state, answer) is True
        except Exception as exc:  # noqa: BLE001 - a crashing check is a failed check, with its reason
            checks[name] = False
            errors[name] = _error(exc)["message"]
    return {"checks": checks, "errors": errors, "passed": bool(checks) and all(checks.values())}


def sandbox_source() -> str:
    """This module's source with `verifiers.state_hash` prepended: what the sandbox is sent to run."""
    import inspect
    import sys

    from verifiers import state_hash as state_module

    future = "from __future__ import annotations\n"
    parts = [inspect.getsource(state_module), inspect.getsource(sys.modules[__name__])]
    return future + "\n\n".join(part.replace(future, "") for part in parts)


# ------------------------------------------------------------------------------------------ the world


class _World:
    """The tool module loaded against one database, with a frozen clock and seeded randomness."""

    def __init__(self, tools_source: str, db_path: str, clock: str, seed: int, *, in_memory: bool = True,
                 first_call: int = 0):
        # The clock and the random module are the process's: frozen and seeded for the world's life, given
        # back in close() (in the sandbox the process is a throwaway child; a trainer may run this in-process).
        self.restore = (_datetime.datetime, time.time, random.getstate())
        _freeze_time(clock)
        random.seed(seed)
        self.seed, self.next_call = seed, first_call
        try:
            if in_memory:
                # The attempt's copy is read into memory and removed: model code can reach the data only through
                # the tools, and nothing it does can touch the copy another attempt will use.
                source = sqlite3.connect(db_path)
                self.db = sqlite3.connect(":memory:")
                source.backup(self.db)
                source.close()
                os.unlink(db_path)
            else:
                self.db = sqlite3.connect(db_path)
            self.db.row_factory = sqlite3.Row
            self.log: list[dict[str, Any]] = []
            self.namespace: dict[str, Any] = {"__name__": "tools", "rng": random.Random(seed),
                                              "now": lambda: _datetime.datetime.fromisoformat(clock)}
            exec(compile(tools_source, "<tools>", "exec"), self.namespace)  # noqa: S102 - sandboxed
            self.tools = {name: fn for name, fn in self.namespace.items()
                          if callable(fn) and not name.startswith("_") and getattr(fn, "__module__", "") == "tools"
                          and fn.__code__.co_varnames[:1] == ("db",)}
        except BaseException:
            self._give_back_clock()
            raise

    def call(self, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
        entry: dict[str, Any] = {"name": name, "arguments": arguments}
        # Seeded per call (a string seed is hashed with SHA-512: the same in every process and version).
        call_seed = f"{self.seed}:{self.next_call}"
        self.next_call += 1
        random.seed(call_seed)
        self.namespace["rng"].seed(call_seed)
        fn = self.tools.get(name)
        if fn is None:
            entry["error"] = f"no tool named {name!r} (tools: {', '.join(sorted(self.tools))})"
        else:
            try:
                result = fn(self.db, **arguments)
                self.db.commit()
                entry["result"] = _json_value(result)
            except Exception as exc:  # noqa: BLE001 - a failing call is the caller's to see
                self.db.rollback()
                entry["error"] = f"{type(exc).__name__}: {exc}"[:2000]
        self.log.append(entry)
        return entry

    def proxy(self) -> Any:
        world = self

        class Tools:
            """The solution's only way into the world."""

        for tool_name in self.tools:
            def invoke(_name=tool_name, **arguments):
                outcome = world.call(_name, arguments)
                if "error" in outcome:
                    raise ToolFailed(outcome["error"])
                return outcome["result"]
            setattr(Tools, tool_name, staticmethod(invoke))
        return Tools()

    def state(self) -> dict[str, Any]:
        self.db.row_factory = None
        try:
            return canonical_state(self.db)
        finally:
            self.db.row_factory = sqlite3.Row

    def close(self) -> None:
        self.db.close()
        self._give_back_clock()

    def _give_back_clock(self) -> None:
        _datetime.datetime, time.time, state = self.restore
        random.setstate(state)


def _freeze_time(clock: str) -> None:
    real = getattr(_datetime.datetime, "real", _datetime.datetime)
    fixed = real.fromisoformat(clock)

    class FrozenDatetime(real):
        @classmethod
        def now(cls, tz=None):
            return fixed if tz is None else fixed.replace(tzinfo=tz)

        @classmethod
        def today(cls):
            return fixed

        @classmethod
        def utcnow(cls):
            return fixed

    FrozenDatetime.real = real

    _datetime.datetime = FrozenDatetime
    time.time = lambda: fixed.timestamp()


def _restricted_namespace() -> dict[str, Any]:
    import builtins

    allowed = {name: getattr(builtins, name) for name in SAFE_BUILTINS if hasattr(builtins, name)}

    def pure_import(name, globals=None, locals=None, fromlist=(), level=0):
        if name.split(".")[0] not in PURE_MODULES or level:
            raise ImportError(f"import of {name!r} is not allowed")
        return builtins.__import__(name, globals, locals, fromlist, level)

    allowed["__import__"] = pure_import
    return {"__builtins__": allowed, "__name__": "model_code"}


def _json_value(value: Any) -> Any:
    if isinstance(value, sqlite3.Row):
        value = dict(value)
    elif isinstance(value, list):
        value = [dict(v) if isinstance(v, sqlite3.Row) else v for v in value]
    text = json.dumps(value)  # a result that is not JSON is the tool's error
    if len(text) > MAX_RESULT_CHARS:
        raise ValueError(f"the result is {len(text)} characters of JSON; tools must return at most "
                         f"{MAX_RESULT_CHARS}")
    return value


def _error(exc: BaseException) -> dict[str, str]:
    return {"type": type(exc).__name__, "message": f"{type(exc).__name__}: {exc}"[:2000],
            "traceback": "".join(traceback.format_exception(exc))[-4000:]}
