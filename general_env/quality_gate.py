"""The quality gate an environment passes before tasks are made on it.

Every tool is run in the sandbox, each call on a fresh copy of the database:

- its sample calls (from the building agent) must return a JSON result; a tool whose samples all fail is
  dropped (`sample_call_failed`);
- its declared kind must match what it does: a `read` tool whose call changes the database's state hash is
  dropped (`read_tool_writes`); a tool declared nothing is classified by what its samples did;
- random valid calls (argument values drawn from the database's own columns where a parameter is named like
  one, else from the samples) must end in a result or a clear error (ValueError / LookupError with a
  message), not a crash (TypeError, AttributeError, a database error, a sandbox limit);
- an invalid call (a required argument left out) must fail with an error, not succeed.

The environment passes when at least one tool is kept and at most half of the random calls crashed.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from general_env.execution import HarnessFailure, WorldExecutor
from general_env.tool_code import ToolDefinition, ToolModule
from tasksynth.config import Config

CLEAR_ERRORS = ("ValueError", "LookupError", "KeyError", "PermissionError")
MAX_CRASH_SHARE = 0.5


@dataclass
class GateReport:
    kept: list[ToolDefinition] = field(default_factory=list)
    kinds: dict[str, str] = field(default_factory=dict)
    dropped: list[dict[str, str]] = field(default_factory=list)
    calls: list[dict[str, Any]] = field(default_factory=list)
    crashes: int = 0
    random_calls: int = 0

    @property
    def passed(self) -> bool:
        return bool(self.kept) and (not self.random_calls or self.crashes / self.random_calls <= MAX_CRASH_SHARE)

    def summary(self) -> str:
        if not self.kept:
            return "no tool passed: " + "; ".join(f"{d['tool']}: {d['reason']}" for d in self.dropped)[:1500]
        return f"{self.crashes} of {self.random_calls} random valid calls crashed"

    def as_dict(self) -> dict[str, Any]:
        return {"kept": [t.name for t in self.kept], "kinds": self.kinds, "dropped": self.dropped,
                "random_calls": self.random_calls, "crashes": self.crashes, "calls": self.calls[:200]}


def run_gate(config: Config, database: Path, tools_source: str, module: ToolModule, declared: dict[str, str],
             samples: list[dict[str, Any]], *, seed: int) -> GateReport:
    report = GateReport()
    rng = random.Random(seed)
    with WorldExecutor(config) as worlds:
        baseline = _replay(worlds, database, tools_source, [])
        columns = _column_values(baseline["state"]) if baseline else {}
        for tool in module.tools:
            own = [c for c in samples if c.get("name") == tool.name and isinstance(c.get("arguments"), dict)]
            if not own:
                report.dropped.append({"tool": tool.name, "reason": "no_sample_call",
                                       "detail": "the manifest gives no sample call for it"})
                continue
            results = [_replay(worlds, database, tools_source, [call]) for call in own]
            report.calls += [{"tool": tool.name, "arguments": c["arguments"], **_short(r)} for c, r in zip(own, results)]
            good = [r for r in results if r and "result" in r["calls"][0]]
            if not good:
                report.dropped.append({"tool": tool.name, "reason": "sample_call_failed",
                                       "detail": _first_error(results)})
                continue
            writes = any(r["hash"] != baseline["hash"] for r in good) if baseline else False
            kind = declared.get(tool.name)
            if kind == "read" and writes:
                report.dropped.append({"tool": tool.name, "reason": "read_tool_writes",
                                       "detail": "declared read, but a sample call changed the database"})
                continue
            report.kinds[tool.name] = kind if kind in ("read", "write") else ("write" if writes else "read")
            for _ in range(config.general.gate_random_calls):
                arguments = _random_arguments(tool, own, columns, rng)
                replayed = _replay(worlds, database, tools_source, [{"name": tool.name, "arguments": arguments}])
                report.random_calls += 1
                crashed = _crashed(replayed)
                report.crashes += crashed
                report.calls.append({"tool": tool.name, "arguments": arguments, "random": True,
                                     "crashed": crashed, **_short(replayed)})
            required = tool.parameters.get("required", [])
            if required:
                broken = {k: v for k, v in own[0]["arguments"].items() if k != required[0]}
                replayed = _replay(worlds, database, tools_source, [{"name": tool.name, "arguments": broken}])
                if replayed and "result" in replayed["calls"][0]:
                    report.dropped.append({"tool": tool.name, "reason": "accepts_invalid_call",
                                           "detail": f"succeeded without its required argument {required[0]!r}"})
                    report.kinds.pop(tool.name, None)
                    continue
            report.kept.append(tool)
    return report


def _replay(worlds: WorldExecutor, database: Path, tools_source: str,
            calls: list[dict[str, Any]]) -> dict[str, Any] | None:
    with worlds.attempt(database) as world:
        try:
            return world.run("replay", tools_source=tools_source, calls=calls)
        except HarnessFailure as exc:
            return {"failure": f"{exc.outcome}: {exc.reason}", "calls": [{"error": exc.reason}], "hash": None}


def _crashed(replayed: dict[str, Any] | None) -> bool:
    if not replayed or "failure" in replayed:
        return True
    call = replayed["calls"][0]
    if "result" in call:
        return False
    error = call.get("error", "")
    kind, _, message = error.partition(":")
    return kind.strip() not in CLEAR_ERRORS or not message.strip()


def _column_values(state: dict[str, Any]) -> dict[str, list[Any]]:
    """Column name -> distinct values seen in the database (a few hundred at most)."""
    values: dict[str, list[Any]] = {}
    for table in state.values():
        for position, column in enumerate(table["columns"]):
            seen = values.setdefault(column.lower(), [])
            for row in table["rows"][:200]:
                if row[position] is not None and row[position] not in seen:
                    seen.append(row[position])
    return values


def _random_arguments(tool: ToolDefinition, samples: list[dict[str, Any]], columns: dict[str, list[Any]],
                      rng: random.Random) -> dict[str, Any]:
    arguments = dict(rng.choice(samples)["arguments"])
    for name, schema in tool.parameters.get("properties", {}).items():
        pool = [v for v in columns.get(name.lower(), []) + columns.get(name.lower().removesuffix("_id"), [])
                if _fits(v, schema)]
        if pool and (name in arguments or name in tool.parameters.get("required", [])):
            arguments[name] = rng.choice(pool)
    return arguments


def _fits(value: Any, schema: dict[str, Any]) -> bool:
    kind = schema.get("type")
    if "enum" in schema:
        return value in schema["enum"]
    return {"string": isinstance(value, str), "integer": isinstance(value, int) and not isinstance(value, bool),
            "number": isinstance(value, (int, float)) and not isinstance(value, bool),
            "boolean": isinstance(value, bool)}.get(kind, False)


def _short(replayed: dict[str, Any] | None) -> dict[str, Any]:
    if not replayed:
        return {"error": "no result"}
    call = replayed["calls"][0] if replayed.get("calls") else {}
    if "result" in call:
        return {"ok": True}
    return {"error": str(call.get("error") or replayed.get("failure"))[:300]}


def _first_error(results: list[dict[str, Any] | None]) -> str:
    for result in results:
        if result and result.get("calls"):
            return str(result["calls"][0].get("error") or result.get("failure"))[:500]
    return "no result"
