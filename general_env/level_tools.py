"""Step 4's tools: a harder level may add a tool the environment lacks ("tools are added when a level needs
them").

The task writer of a level > 1 may answer, beside the harder task, with a `new_tool`:

    {"name": "total_price", "kind": "read", "code": "def total_price(db, booking_ids: list) -> float: ...",
     "sample_calls": [{"arguments": {"booking_ids": [1]}}]}

The tool goes through the checks the environment's own tools went through (`general_env.quality_gate`), on
the environment's database in the sandbox: its code parses and defines exactly that one tool (schema read
from the code, nothing executed on the host), it reuses no name the environment's module defines (it could
otherwise change what an existing tool does), its sample calls return JSON, its kind matches what it does,
random valid calls end in a result or a clear error and a call missing a required argument fails. It is
then appended to the tools' source and packed as a new bundle version, with a new content hash.

Bundle versions are immutable: a task references the version it was made and verified with, so tasks of
earlier levels keep their bundle (and its tools), the level's task and the levels made from it get the new
one, exports ship each task's own version, and `tasksynth general grade` on that folder grades the task
with exactly the tools its solver had. Nothing here writes to the store: the task's outcome carries the
addition, and the flow records it.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from typing import Any

from general_env.bundle import Bundle, read_bundle, write_bundle
from general_env.quality_gate import run_gate
from general_env.tool_code import ToolCodeError, ToolModule, parse_tool_module
from tasksynth.config import Config

ADDED, REJECTED = "added", "rejected"
MAX_TOOL_CHARS = 20_000


@dataclass
class ToolAddition:
    """A tool a level proposed: `added` (with the new bundle version) or `rejected` with its reason."""

    tool: str
    kind: str | None
    status: str
    reason: str | None = None
    detail: str | None = None
    source: str = ""
    gate: dict[str, Any] = field(default_factory=dict)
    parent_bundle_id: str = ""
    bundle: Bundle | None = None
    bundle_path: str | None = None

    def row(self, task_id: str, env_id: str, level: int, run_id: str | None) -> dict[str, Any]:
        return {"task_id": task_id, "tool": self.tool, "env_id": env_id, "level": level, "kind": self.kind,
                "status": self.status, "reason": self.reason, "detail": self.detail, "source": self.source,
                "gate": self.gate, "parent_bundle_id": self.parent_bundle_id,
                "bundle_id": self.bundle.bundle_id if self.bundle else None, "run_id": run_id}


def proposed_tool(reply: dict[str, Any]) -> dict[str, Any] | None:
    """The task writer's `new_tool`, when it proposed one (any shape: `add_tool` says what is wrong)."""
    proposal = reply.get("new_tool")
    return proposal if proposal else None


def add_tool(config: Config, bundle: Bundle, proposal: Any) -> ToolAddition:
    """Check a proposed tool and, when it passes, pack the bundle version that has it; never raises for what
    the model wrote."""
    if not isinstance(proposal, dict):
        return _rejected("?", None, bundle, "", "new_tool_unreadable", "`new_tool` must be a JSON object")
    name, kind = str(proposal.get("name") or ""), proposal.get("kind")
    source = proposal.get("code")
    if not isinstance(source, str) or not source.strip():
        return _rejected(name or "?", kind, bundle, "", "new_tool_unreadable", "`new_tool` has no `code`")
    source = source.strip() + "\n"
    if len(source) > MAX_TOOL_CHARS:
        return _rejected(name, kind, bundle, source, "new_tool_breaks_rules",
                         f"the code is {len(source)} characters; at most {MAX_TOOL_CHARS}")
    if kind not in ("read", "write"):
        return _rejected(name, kind, bundle, source, "new_tool_breaks_rules", "`kind` must be read or write")
    try:
        module = parse_tool_module(source)
        clashes = _clashes(source, bundle.tools_source)
    except ToolCodeError as exc:
        return _rejected(name, kind, bundle, source, "new_tool_breaks_rules", str(exc))
    problems = list(module.problems)
    if module.names() != [name]:
        problems.append(f"the code must define exactly one tool, `{name}` (it defines: "
                        f"{', '.join(module.names()) or 'none'})")
    if clashes:
        problems.append(f"names the environment's tools module already defines: {', '.join(clashes)}")
    if problems:
        return _rejected(name, kind, bundle, source, "new_tool_breaks_rules", "; ".join(problems))
    samples = [{"name": name, "arguments": call.get("arguments")} for call in proposal.get("sample_calls") or []
               if isinstance(call, dict)]
    combined = f"{bundle.tools_source.rstrip()}\n\n\n{source}"
    gate = run_gate(config, bundle.database, combined, ToolModule(tools=module.tools), {name: kind}, samples,
                    seed=bundle.seed)
    if not gate.kept:
        dropped = gate.dropped[0] if gate.dropped else {"reason": "gate_failed", "detail": gate.summary()}
        return _rejected(name, kind, bundle, source, f"new_tool_{dropped['reason']}", dropped.get("detail"),
                         gate.as_dict())
    if not gate.passed:
        return _rejected(name, kind, bundle, source, "new_tool_gate_failed", gate.summary(), gate.as_dict())
    added = Bundle(category=bundle.category, tools_source=combined, tools=bundle.tools + [module.tools[0].spec()],
                   tool_kinds={**bundle.tool_kinds, name: gate.kinds[name]}, database=bundle.database,
                   clock=bundle.clock, seed=bundle.seed,
                   notes={**bundle.notes, "added_tools": [*bundle.notes.get("added_tools", []), name],
                          "parent_bundle_id": bundle.bundle_id})
    path = write_bundle(added, config.home_path / "general" / "bundles")
    return ToolAddition(name, gate.kinds[name], ADDED, source=source, gate=gate.as_dict(),
                        parent_bundle_id=bundle.bundle_id, bundle=read_bundle(path), bundle_path=str(path))


def _clashes(new_source: str, tools_source: str) -> list[str]:
    """Names both modules bind at their top level, except one bound by the same import in both."""
    new, old = _bindings(new_source), _bindings(tools_source)
    return sorted(name for name in new.keys() & old.keys() if new[name] is None or new[name] != old[name])


def _bindings(source: str) -> dict[str, str | None]:
    """Top-level name -> the import that binds it (its syntax tree, dumped), or None for any other binding."""
    try:
        tree = ast.parse(source)
    except SyntaxError as exc:
        raise ToolCodeError(f"the tool does not parse: {exc.msg} (line {exc.lineno})") from None
    names: dict[str, str | None] = {}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names[node.name] = None
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update({n.id: None for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)})
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            module = getattr(node, "module", None)
            for alias in node.names:
                bound = (alias.asname or alias.name).split(".")[0]
                names[bound] = f"{module}:{alias.name}:{alias.asname}"
        else:
            names.update({n.id: None for n in ast.walk(node)
                          if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)})
    return names


def _rejected(name: str, kind: Any, bundle: Bundle, source: str, reason: str, detail: str | None,
              gate: dict[str, Any] | None = None) -> ToolAddition:
    return ToolAddition(name, kind if isinstance(kind, str) else None, REJECTED, reason, (detail or "")[:2000],
                        source, gate or {}, parent_bundle_id=bundle.bundle_id)
