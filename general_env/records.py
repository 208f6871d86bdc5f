"""Writing what the general pipeline's steps return into the store, and reading it back for the next step.

Only the flow process calls these (the store's one writer). Every discard also lands in `discards` with its
reason, so the funnel of `tasksynth general report` is a query.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from agent import write_records
from general_env.attempts import ERROR, SOLVED, AttemptOutcome
from general_env.bundle import Bundle, read_bundle
from general_env.environment_building import EnvironmentOutcome, outcome_row
from general_env.tasks import TaskOutcome
from verifiers.pass_at_k import pass_at_k, pass_at_ks

SOURCE = "general"


def record_environment(store, outcome: EnvironmentOutcome, run_id: str | None) -> None:
    database_blob = tools_blob = None
    if outcome.bundle is not None:
        database_blob = store.put_blob(Path(outcome.bundle.database).read_bytes(), "application/vnd.sqlite3")
        tools_blob = store.put_blob(outcome.bundle.tools_source, "text/x-python")
    write_records(store, outcome.calls, outcome.trajectories)
    with store.transaction():
        store.insert("general_environments", [outcome_row(outcome, run_id, database_blob, tools_blob)],
                     on_conflict="replace")
        if outcome.status != "built":
            _discard(store, "general.environment", outcome.env_id, outcome.category, outcome.reason,
                     outcome.detail, run_id)


def record_task(store, outcome: TaskOutcome, bundle_id: str | None, run_id: str | None) -> None:
    write_records(store, outcome.calls, outcome.trajectories)
    addition = outcome.tool_addition
    with store.transaction():
        store.insert("general_tasks", [outcome.row(bundle_id, run_id)], on_conflict="replace")
        if addition is not None:
            store.insert("general_level_tools", [addition.row(outcome.task_id, outcome.env_id, outcome.level, run_id)],
                         on_conflict="replace")
        if addition is not None and addition.bundle is not None:
            added = addition.bundle
            store.insert("general_bundles", [{
                "bundle_id": added.bundle_id, "env_id": outcome.env_id, "parent_bundle_id": addition.parent_bundle_id,
                "bundle_path": addition.bundle_path, "tools": json.dumps(added.tools), "tool_kinds": added.tool_kinds,
                "added_tools": added.notes.get("added_tools", [])}], on_conflict="replace")
        if outcome.status != "verified":
            _discard(store, f"general.task.level{outcome.level}", outcome.task_id, outcome.env_id, outcome.reason,
                     outcome.detail, run_id)


def record_attempts(store, outcomes: list[AttemptOutcome], run_id: str | None) -> None:
    for outcome in outcomes:
        write_records(store, outcome.calls, outcome.trajectories)
    store.insert("general_attempts", [o.row(run_id) for o in outcomes], on_conflict="replace")


def record_pass_at_k(store, task_id: str, k: int, *, estimated: bool) -> dict[str, Any]:
    """c and n from the task's graded attempts (errors left out), the unbiased pass@1/8/n, and acceptance."""
    rows = store.query("SELECT outcome FROM general_attempts WHERE task_id = ? AND outcome <> ?", [task_id, ERROR])
    n = len(rows)
    c = sum(r["outcome"] == SOLVED for r in rows)
    values = pass_at_ks(n, c, [1, 8, n]) if n else {}
    at_k = pass_at_k(n, c, min(k, n)) if n else None
    with store.transaction():
        store.execute("UPDATE general_tasks SET c = ?, n = ?, pass_at = ?, pass_at_k = ?, k = ?, estimated = ?, "
                      "accepted = ?, status = 'attempted' WHERE task_id = ?",
                      [c, n, _json(values), at_k, k, estimated, c >= 1, task_id])
        if n and c == 0:
            _discard(store, "general.pass_at_k", task_id, None, "never_solved", f"0 of {n} attempts solved it",
                     None)
    return {"c": c, "n": n, **values}


def built_environments(store, env_ids: list[str]) -> list[tuple[str, Bundle]]:
    if not env_ids:
        return []
    marks = ", ".join("?" for _ in env_ids)
    rows = store.query(f"SELECT env_id, bundle_path FROM general_environments WHERE status = 'built' AND env_id IN "
                       f"({marks}) ORDER BY env_id", env_ids)
    return [(r["env_id"], read_bundle(Path(r["bundle_path"]))) for r in rows]


def task_bundle(store, task: dict[str, Any], environment_bundle: Bundle) -> Bundle:
    """The bundle version a task was made with: its environment's, or one a level made by adding a tool."""
    if not task.get("bundle_id") or task["bundle_id"] == environment_bundle.bundle_id:
        return environment_bundle
    rows = store.query("SELECT bundle_path FROM general_bundles WHERE bundle_id = ?", [task["bundle_id"]])
    return read_bundle(Path(rows[0]["bundle_path"])) if rows else environment_bundle


def verified_tasks(store, env_id: str, level: int) -> list[dict[str, Any]]:
    return store.query("SELECT * FROM general_tasks WHERE env_id = ? AND level = ? AND status <> 'discarded' "
                       "ORDER BY task_id", [env_id, level])


def attempts_done(store, task_id: str) -> Counter:
    rows = store.query("SELECT outcome FROM general_attempts WHERE task_id = ?", [task_id])
    return Counter(r["outcome"] for r in rows)


def _discard(store, stage: str, item: str, repo: str | None, reason: str | None, detail: str | None,
             run_id: str | None) -> None:
    store.insert("discards", [{"stage": stage, "source": SOURCE, "item": item, "repo": repo,
                               "reason": reason or "unknown", "detail": (detail or "")[:2000], "run_id": run_id}],
                 on_conflict="replace")


def _json(value: Any) -> str:
    return json.dumps(value)
