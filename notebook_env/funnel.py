"""The code-interpreter pipeline's funnel, read from the store: what `tasksynth notebook report` prints and
what the flow publishes as a Prefect artifact (through `notebook_section`, the report's view), so they agree."""

from __future__ import annotations

from typing import Any

from tasksynth.funnels import KindSection, count, discards_by_reason, histogram, pass_rate_histogram, seconds_sum


def notebook_funnel(store, source: str | None = None) -> dict[str, Any]:
    """The funnel of every task, or of one source's (`synth`: written by agents, `mine`: from notebooks)."""
    where, params = ("WHERE source = ?", [source]) if source else ("", [])
    tasks = store.query(f"SELECT status, reason, c, n FROM notebook_tasks {where}", params)
    if source:
        attempts = store.query("SELECT outcome, count(*) AS n FROM notebook_attempts WHERE task_id IN "
                               "(SELECT task_id FROM notebook_tasks WHERE source = ?) GROUP BY ALL", [source])
        return _funnel(tasks, attempts)
    return _funnel(tasks, store.query("SELECT outcome, count(*) AS n FROM notebook_attempts GROUP BY ALL"))


def _funnel(tasks: list[dict[str, Any]], attempts: list[dict[str, Any]]) -> dict[str, Any]:
    by_outcome = {row["outcome"]: row["n"] for row in attempts}
    reasons: dict[str, int] = {}
    for task in tasks:
        if task["status"] == "discarded":
            reasons[task["reason"] or "unknown"] = reasons.get(task["reason"] or "unknown", 0) + 1
    passed_filters = sum(t["status"] != "discarded" or t["reason"] == "never_solved" for t in tasks)
    return {"tasks_written": len(tasks), "passed_filters": passed_filters,
            "kept": sum(t["status"] == "kept" for t in tasks),
            "attempts": {"graded": by_outcome.get("solved", 0) + by_outcome.get("failed", 0),
                         "solved": by_outcome.get("solved", 0), "errors": by_outcome.get("error", 0)},
            "discards": dict(sorted(reasons.items(), key=lambda item: -item[1]))}


def funnel_table(funnel: dict[str, Any]) -> list[dict[str, Any]]:
    rows = [{"stage": "tasks written", "count": funnel["tasks_written"]},
            {"stage": "passed gold, shortcut and ambiguity filters", "count": funnel["passed_filters"]},
            {"stage": "attempts graded", "count": funnel["attempts"]["graded"]},
            {"stage": "attempts solved", "count": funnel["attempts"]["solved"]},
            {"stage": "tasks kept (pass@k > 0)", "count": funnel["kept"]}]
    return rows + [{"stage": f"discarded: {reason}", "count": n} for reason, n in funnel["discards"].items()]


def notebook_section(store) -> KindSection | None:
    tasks = count(store, "SELECT count(*) AS n FROM notebook_tasks")
    if not tasks:
        return None
    passed = count(store, "SELECT count(*) AS n FROM notebook_tasks WHERE status <> 'discarded' "
                           "OR reason = 'never_solved'")
    attempted = count(store, "SELECT count(*) AS n FROM notebook_tasks WHERE n > 0")
    kept = count(store, "SELECT count(*) AS n FROM notebook_tasks WHERE status = 'kept'")
    distributions = {
        "pass@k: successes c of n attempts": pass_rate_histogram(store, "notebook_tasks"),
        "answer formats": histogram(
            store, "SELECT answer_format->>'type' AS bucket, count(*) AS n FROM notebook_tasks "
                   "WHERE answer_format IS NOT NULL GROUP BY ALL ORDER BY bucket"),
        "tasks per dataset": histogram(store, "SELECT dataset AS bucket, count(*) AS n FROM notebook_tasks "
                                               "GROUP BY ALL ORDER BY bucket"),
    }
    return KindSection("code_interpreter", "Code-interpreter tasks",
                       [("tasks written", tasks), ("passed gold, shortcut and ambiguity", passed),
                        ("attempted (pass@k)", attempted), ("kept (pass@k > 0)", kept)],
                       discards_by_reason(store, ("notebook",)), distributions,
                       ("notebook_task_writer", "notebook_solution_writer", "notebook_answerer", "notebook_solver"),
                       kept, {"attempts": seconds_sum(store, "SELECT sum(seconds) AS s FROM notebook_attempts")})

