"""The code-interpreter kind's funnel for the report and the flow's artifacts: tasks written -> passed the
gold, shortcut and ambiguity checks -> attempted -> kept, every discard reason, and the pass@k, answer-format
and dataset distributions."""

from __future__ import annotations

from tasksynth.funnels import KindSection, count, discards_by_reason, histogram, seconds_sum


def notebook_section(store) -> KindSection | None:
    tasks = count(store, "SELECT count(*) AS n FROM notebook_tasks")
    if not tasks:
        return None
    passed = count(store, "SELECT count(*) AS n FROM notebook_tasks WHERE status <> 'discarded' "
                           "OR reason = 'never_solved'")
    attempted = count(store, "SELECT count(*) AS n FROM notebook_tasks WHERE n > 0")
    kept = count(store, "SELECT count(*) AS n FROM notebook_tasks WHERE status = 'kept'")
    distributions = {
        "pass@k: successes c of n attempts": histogram(
            store, "SELECT CASE WHEN c = 0 THEN '0' WHEN c * 5 <= n THEN '(0, 0.2]' WHEN c * 2 <= n THEN "
                   "'(0.2, 0.5]' WHEN c * 5 <= n * 4 THEN '(0.5, 0.8]' ELSE '(0.8, 1]' END AS bucket, count(*) AS n "
                   "FROM notebook_tasks WHERE n > 0 GROUP BY ALL ORDER BY bucket"),
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

