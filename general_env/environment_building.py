"""Step 1 and 2 of a general environment: an agent builds the database and the tools, in a sandbox session.

The `tool_writer` role (prompt `data/prompts/tool_writer.md`) gets a shell in a sandbox container with no
network (`bash`, `write_file`, `read_file`) and the category. It writes `env.sqlite` and `tools.py` in /work
and answers with a manifest: the tools' kinds (read | write) and sample calls. Then, with no model involved:

1. the database and the tools' source are copied out of the session, size-capped;
2. tool schemas are read from the code without running it (`general_env.tool_code`);
3. the quality gate runs every tool in the call pool, each call on a fresh copy of the database
   (`general_env.quality_gate`): tools that fail their sample calls, or whose declared kind does not match
   what they do, are dropped with their reason;
4. what is left is packed as a bundle (`general_env.bundle`) under `<home>/general/bundles/`.

    inputs:  category, index, seed (the env_id hashes them with the role's settings)
    outputs: EnvironmentOutcome -> general_environments (+ the agent's agent_calls / trajectories records)

The step writes nothing to the store; the flow records what it returns.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent import Agent, AgentError, BufferedRecorder, CallRecord, TrajectoryRecord
from agent.replies import first_json_object
from general_env.bundle import Bundle, read_bundle, write_bundle
from general_env.quality_gate import run_gate
from general_env.tool_code import ToolCodeError, parse_tool_module
from tasksynth.config import Config
from tasksynth.hashing import content_hash
from tasksynth.sandbox import SandboxFileError, Session

ROLE = "tool_writer"
ENVIRONMENT_SCHEMA = 1
MAX_DATABASE_BYTES = 64 * 1024 * 1024
MAX_TOOLS_BYTES = 512 * 1024
WORK = "/work"


@dataclass
class EnvironmentOutcome:
    env_id: str
    category: str
    status: str  # built | discarded
    reason: str | None = None
    detail: str | None = None
    bundle: Bundle | None = None
    bundle_path: str | None = None
    dropped_tools: list[dict[str, str]] = field(default_factory=list)
    gate: dict[str, Any] = field(default_factory=dict)
    notes: str = ""
    trajectory_id: str | None = None
    calls: list[CallRecord] = field(default_factory=list)
    trajectories: list[TrajectoryRecord] = field(default_factory=list)


def environment_id(config: Config, category: str, index: int, seed: int) -> str:
    settings = config.role(ROLE)
    return content_hash(ENVIRONMENT_SCHEMA, category, index, seed, settings.model, settings.temperature,
                        config.general.clock)


def build_environment(config: Config, category: str, index: int, seed: int) -> EnvironmentOutcome:
    """One environment of `category`: agent in a session, then the checks above; never raises for what the
    model did (the outcome says why it was discarded)."""
    env_id = environment_id(config, category, index, seed)
    recorder = BufferedRecorder()
    outcome = EnvironmentOutcome(env_id, category, "discarded")
    with Session(config) as session:
        try:
            agent = Agent(ROLE, config, tools=session_tools(session), recorder=recorder,
                          prompt_vars={"category": category})
        except AgentError as exc:
            return _discard(outcome, recorder, "agent_setup", str(exc))
        result = agent.run_sync(f"Build the environment now. Category: {category}. Variant {index} (seed {seed}): "
                                "make its data differ from other variants of the same category.")
        outcome.trajectory_id = result.trajectory_id
        if result.stop_reason == "error":
            return _discard(outcome, recorder, "endpoint_error", result.error)
        manifest = first_json_object(result.final_answer) or {}
        database_name = str(manifest.get("database") or "env.sqlite")
        tools_name = str(manifest.get("tools_file") or "tools.py")
        database = _read(session, f"{WORK}/{Path(database_name).name}", MAX_DATABASE_BYTES)
        tools_source = _read(session, f"{WORK}/{Path(tools_name).name}", MAX_TOOLS_BYTES)
    if not manifest and (database is None or tools_source is None):
        return _discard(outcome, recorder, "no_manifest",
                        f"the agent stopped ({result.stop_reason}) without a JSON manifest or the files")
    if database is None:
        return _discard(outcome, recorder, "no_database", f"no {database_name} in {WORK}")
    if tools_source is None:
        return _discard(outcome, recorder, "no_tools", f"no {tools_name} in {WORK}")
    try:
        tools_text = tools_source.decode()
        module = parse_tool_module(tools_text)
    except (UnicodeDecodeError, ToolCodeError) as exc:
        return _discard(outcome, recorder, "tools_do_not_parse", str(exc))
    outcome.dropped_tools = [{"tool": p.split(":", 1)[0], "reason": "static", "detail": p} for p in module.problems]
    if not module.tools:
        return _discard(outcome, recorder, "no_tools", "no function qualifies as a tool: " + "; ".join(module.problems))
    kinds = {name: str(kind) for name, kind in (manifest.get("tool_kinds") or {}).items()}
    samples = [c for c in manifest.get("sample_calls") or [] if isinstance(c, dict)]
    with tempfile.TemporaryDirectory(prefix="tasksynth-general-") as scratch:
        staged_db = Path(scratch) / "env.sqlite"
        staged_db.write_bytes(database)
        gate = run_gate(config, staged_db, tools_text, module, kinds, samples, seed=seed)
        outcome.gate = gate.as_dict()
        outcome.dropped_tools += gate.dropped
        if not gate.passed:
            return _discard(outcome, recorder, "gate_failed", gate.summary())
        bundle = Bundle(category=category, tools_source=tools_text, tools=[t.spec() for t in gate.kept],
                        tool_kinds=gate.kinds, database=staged_db, clock=config.general.clock, seed=seed,
                        notes={"notes": str(manifest.get("notes") or "")[:2000], "env_id": env_id})
        path = write_bundle(bundle, config.home_path / "general" / "bundles")
    outcome.bundle = read_bundle(path)
    outcome.bundle_path = str(path)
    outcome.status = "built"
    outcome.notes = bundle.notes["notes"]
    outcome.calls, outcome.trajectories = recorder.calls, recorder.trajectories
    return outcome


def session_tools(session: Session) -> list:
    """The shell the tool writer works with: every command runs in the session's container, as the untrusted
    user, with the session's limits."""

    def bash(command: str) -> str:
        """Run a shell command in the sandbox (folder /work, no network) and return its exit code and output.

        Args:
            command: The command line, run by bash.
        """
        result = session.run(command, timeout_s=60)
        text = (result.stdout + result.stderr)[-6000:]
        note = f" ({result.outcome}: {result.reason})" if result.outcome != "ok" else ""
        return f"exit code {result.exit_code}{note}\n{text}"

    def write_file(path: str, content: str) -> str:
        """Write a text file in the sandbox (relative paths are under /work).

        Args:
            path: Where to write it.
            content: The whole file.
        """
        target = path if path.startswith("/") else f"{WORK}/{path}"
        session.write_file(target, content.encode())
        return f"wrote {len(content)} characters to {target}"

    def read_file(path: str) -> str:
        """Read a text file from the sandbox (relative paths are under /work).

        Args:
            path: The file to read.
        """
        target = path if path.startswith("/") else f"{WORK}/{path}"
        try:
            return session.read_file(target, max_bytes=20_000).decode(errors="replace")
        except SandboxFileError as exc:
            return f"cannot read {target}: {exc}"

    return [bash, write_file, read_file]


def _read(session: Session, path: str, max_bytes: int) -> bytes | None:
    """A file the agent made, at most `max_bytes` (read in the sandbox as the untrusted user, links not
    followed); None when it is not there or not a regular file."""
    try:
        return session.read_file(path, max_bytes=max_bytes, follow_links=False)
    except SandboxFileError:
        return None


def _discard(outcome: EnvironmentOutcome, recorder: BufferedRecorder, reason: str,
             detail: str | None) -> EnvironmentOutcome:
    outcome.status, outcome.reason, outcome.detail = "discarded", reason, (detail or "")[:2000]
    outcome.calls, outcome.trajectories = recorder.calls, recorder.trajectories
    return outcome


def outcome_row(outcome: EnvironmentOutcome, run_id: str | None, database_blob: str | None,
                tools_blob: str | None) -> dict[str, Any]:
    bundle = outcome.bundle
    return {"env_id": outcome.env_id, "category": outcome.category, "status": outcome.status,
            "reason": outcome.reason, "detail": outcome.detail,
            "bundle_id": bundle.bundle_id if bundle else None, "bundle_path": outcome.bundle_path,
            "database": database_blob, "tools": json.dumps(bundle.tools if bundle else []),
            "tool_kinds": bundle.tool_kinds if bundle else None, "tools_source": tools_blob,
            "dropped_tools": outcome.dropped_tools, "gate": outcome.gate, "trajectory_id": outcome.trajectory_id,
            "run_id": run_id}
