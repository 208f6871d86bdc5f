"""Writing what the steps return into the store, in the flow process (the store's one writer).

Candidates and discards are inserted with `ignore`, so mining twice adds nothing. A build replaces the
candidate's `code_instances` row; a validation adds its runs, per-test results and a `validations` row, and
replaces the candidate's `code_tasks` row (the latest verdict), returning the change when the verdict moved.
Logs and JUnit reports go to compressed blobs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tasksynth.hashing import content_hash

if TYPE_CHECKING:  # annotations only: recording a mine does not load the build and validation code
    from envbuilder.build import BuildOutcome
    from envbuilder.sources.git_history import MineResult
    from envbuilder.validation import ValidationOutcome

CANDIDATE_COLUMNS = ("candidate_id, source, source_ref, instance_id, repo, repo_url, language, base_commit, "
                     "head_commit, patch, test_patch, problem_statement, hints, version, environment_setup_commit, "
                     "imported_fail_to_pass, imported_pass_to_pass, created_at, metadata")


@dataclass
class VerdictChange:
    instance_id: str
    before: str  # "rejected (no_fail_to_pass)"
    after: str


def record_mined(store, result: MineResult, run_id: str | None) -> dict[str, int]:
    new = store.insert("candidates", [c.as_row() for c in result.candidates]) if result.candidates else 0
    rows = [{**d.as_row(), "run_id": run_id} for d in result.discards]
    dropped = store.insert("discards", rows) if rows else 0
    return {"candidates": new, "discards": dropped}


def record_build(store, outcome: BuildOutcome) -> None:
    logs = {name: store.put_blob(text) for name, text in outcome.logs.items() if text}
    if outcome.environment:
        env = {**outcome.environment, "build_log": logs.get("environment")}
        store.insert("environments", [env], on_conflict="replace" if outcome.environment_built else "ignore")
    store.insert("code_instances", [{**outcome.instance, "build_log": logs.get("instance")}], on_conflict="replace")


def record_validation(store, candidate: dict[str, Any], instance: dict[str, Any], outcome: ValidationOutcome,
                      run_id: str | None) -> VerdictChange | None:
    previous = store.query("SELECT verdict, reason FROM code_tasks WHERE instance_id = ?", [outcome.instance_id])
    grade = outcome.grade
    for run in outcome.runs:
        run_key = content_hash(outcome.validation_id, run.phase, run.attempt)
        store.insert("test_runs", [{
            "test_run_id": run_key, "instance_id": outcome.instance_id, "phase": run.phase, "attempt": run.attempt,
            "validation_id": outcome.validation_id, "image": instance.get("image"), "status": run.status,
            "exit_code": run.exit_code, "seconds": run.seconds,
            "junit": store.put_blob(run.junit, "application/xml") if run.junit else None,
            "log": store.put_blob(_run_log(run)) if run.log or run.detail else None}], on_conflict="replace")
        if run.tests:
            store.insert("test_results", [{"test_run_id": run_key, "test_id": t.test_id, "outcome": t.outcome,
                                            "seconds": t.seconds, "message": t.message} for t in run.tests.values()],
                         on_conflict="replace")
    store.insert("validations", [{
        "validation_id": outcome.validation_id, "instance_id": outcome.instance_id, "verdict": grade.verdict,
        "reason": grade.reason, "detail": grade.detail, "fail_to_pass": list(grade.fail_to_pass),
        "pass_to_fail": list(grade.pass_to_fail), "pass_to_pass": list(grade.pass_to_pass),
        "flaky": list(grade.flaky), "repeats": outcome.repeat, "run_id": run_id, "seconds": outcome.seconds}],
        on_conflict="replace")
    store.insert("code_tasks", [{
        "instance_id": outcome.instance_id, "candidate_id": candidate["candidate_id"], "repo": candidate["repo"],
        "base_commit": candidate["base_commit"], "env_id": instance.get("env_id"), "image": instance.get("image"),
        "validation_id": outcome.validation_id, "verdict": grade.verdict, "reason": grade.reason,
        "detail": grade.detail, "fail_to_pass": list(grade.fail_to_pass), "pass_to_fail": list(grade.pass_to_fail),
        "pass_to_pass": list(grade.pass_to_pass), "flaky": list(grade.flaky),
        "test_command": instance.get("test_command"), "agreement": outcome.agreement, "seconds": outcome.seconds}],
        on_conflict="replace")
    if previous:
        was = verdict_text(previous[0]["verdict"], previous[0]["reason"])
        now = verdict_text(grade.verdict, grade.reason)
        if was != now:
            return VerdictChange(outcome.instance_id, was, now)
    return None


def verdict_text(verdict: str, reason: str | None) -> str:
    return f"{verdict} ({reason})" if reason else verdict


def _run_log(run) -> str:
    head = f"[{run.phase} run {run.attempt + 1}: {run.status}{' - ' + run.detail if run.detail else ''}]\n"
    return head + (run.log or "")


# ------------------------------------------------------------------------------------------------ reading


def candidates(store, instance_ids: list[str] | None = None) -> list[dict[str, Any]]:
    sql = f"SELECT {CANDIDATE_COLUMNS} FROM candidates"
    if instance_ids:
        sql += f" WHERE instance_id IN ({', '.join('?' for _ in instance_ids)})"
    rows = store.query(sql + " ORDER BY created_at NULLS LAST, instance_id", instance_ids or None)
    return rows


def instances(store) -> dict[str, dict[str, Any]]:
    return {row["instance_id"]: row for row in store.query("SELECT * FROM code_instances")}
