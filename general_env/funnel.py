"""The general pipeline's funnel, read from the store: environments, tools (the environments' own and those
harder levels added), tasks per level, pass@k.

`general_funnel` is what `tasksynth general report` prints and what the flow publishes as Prefect artifacts,
so the two always agree. Every number is a count of rows; every discard is listed with its reason.
"""

from __future__ import annotations

import json
from typing import Any

from tasksynth.funnels import KindSection, count, discards_by_reason, histogram, pass_rate_histogram, seconds_sum

PASS_BUCKETS = ((0.0, 0.0, "0 (never solved)"), (0.0, 0.2, "(0, 0.2]"), (0.2, 0.5, "(0.2, 0.5]"),
                (0.5, 0.8, "(0.5, 0.8]"), (0.8, 1.0, "(0.8, 1]"))


def general_funnel(store, *, category: str | None = None) -> dict[str, Any]:
    where, params = ("WHERE category = ?", [category]) if category else ("", [])
    envs = store.query(f"SELECT env_id, status, reason, tools, dropped_tools FROM general_environments {where}",
                       params)
    env_ids = [e["env_id"] for e in envs]
    tasks = _rows(store, "general_tasks", env_ids)
    task_ids = [t["task_id"] for t in tasks]
    attempts = _rows(store, "general_attempts", task_ids, column="task_id")
    built = [e for e in envs if e["status"] == "built"]
    level_tools = _rows(store, "general_level_tools", env_ids)
    tools_by_level: dict[str, dict[str, int]] = {}
    for row in level_tools:
        counts = tools_by_level.setdefault(str(row["level"]), {"added": 0, "rejected": 0})
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    levels: dict[int, dict[str, int]] = {}
    for task in tasks:
        level = levels.setdefault(task["level"], {"written": 0, "verified": 0, "attempted": 0, "kept": 0})
        level["written"] += 1
        level["verified"] += task["status"] != "discarded"
        level["attempted"] += task["status"] == "attempted"
        level["kept"] += bool(task["accepted"])
    distribution = {label: 0 for _, _, label in PASS_BUCKETS}
    for task in tasks:
        if task["status"] == "attempted" and task["n"]:
            rate = task["c"] / task["n"]
            label = next(lbl for low, high, lbl in PASS_BUCKETS if (rate == 0 and high == 0) or low < rate <= high)
            distribution[label] += 1
    discards: dict[str, int] = {}
    for row in store.query("SELECT stage, reason, count(*) AS n FROM discards WHERE source = 'general' "
                           "GROUP BY ALL ORDER BY stage, n DESC"):
        discards[f"{row['stage']}: {row['reason']}"] = row["n"]
    cost = store.query("SELECT role, count(*) AS calls, sum(coalesce(prompt_tokens, 0) + coalesce(completion_tokens, "
                       "0)) AS tokens, sum(latency_s) AS seconds, sum(cost_usd) AS cost_usd FROM agent_calls WHERE "
                       "role IN ('tool_writer', 'task_writer', 'solution_writer', 'verifier_writer', 'solver') "
                       "GROUP BY role ORDER BY role")
    kept = sum(bool(t["accepted"]) for t in tasks)
    return {
        "environments": {"made": len(envs), "built": len(built),
                         "tools_kept": sum(len(_json(e["tools"]) or []) for e in built),
                         "tools_dropped": sum(len(_json(e["dropped_tools"]) or []) for e in envs),
                         "tools_added_by_levels": sum(r["status"] == "added" for r in level_tools),
                         "tools_rejected_at_levels": sum(r["status"] == "rejected" for r in level_tools)},
        "tools_by_level": dict(sorted(tools_by_level.items())),
        "tasks_by_level": {str(level): counts for level, counts in sorted(levels.items())},
        "attempts": {"graded": sum(a["outcome"] != "error" for a in attempts),
                     "solved": sum(a["outcome"] == "solved" for a in attempts),
                     "errors": sum(a["outcome"] == "error" for a in attempts)},
        "kept_tasks": kept,
        "pass_rate_distribution": distribution,
        "discards": discards,
        "cost_by_role": cost,
        "per_kept_task": {key: round(sum((r[key] or 0) for r in cost) / kept, 4) if kept else None
                          for key in ("tokens", "seconds", "cost_usd")},
    }


def funnel_table(funnel: dict[str, Any]) -> list[dict[str, Any]]:
    """The funnel as rows (stage, count), for a table artifact or a terminal."""
    rows = [{"stage": "environments made", "count": funnel["environments"]["made"]},
            {"stage": "environments built", "count": funnel["environments"]["built"]},
            {"stage": "tools kept", "count": funnel["environments"]["tools_kept"]},
            {"stage": "tools added by levels", "count": funnel["environments"]["tools_added_by_levels"]},
            {"stage": "tools rejected at levels", "count": funnel["environments"]["tools_rejected_at_levels"]}]
    for level, counts in funnel["tasks_by_level"].items():
        rows += [{"stage": f"level {level} tasks {what}", "count": n} for what, n in counts.items()]
    rows += [{"stage": "attempts graded", "count": funnel["attempts"]["graded"]},
             {"stage": "attempts solved", "count": funnel["attempts"]["solved"]},
             {"stage": "tasks kept (pass@k > 0)", "count": funnel["kept_tasks"]}]
    rows += [{"stage": f"discarded at {reason}", "count": n} for reason, n in funnel["discards"].items()]
    return rows


def _rows(store, table: str, ids: list[str], column: str = "env_id") -> list[dict[str, Any]]:
    if not ids:
        return []
    marks = ", ".join("?" for _ in ids)
    return store.query(f"SELECT * FROM {table} WHERE {column} IN ({marks})", ids)


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


def general_section(store) -> KindSection | None:
    envs = count(store, "SELECT count(*) AS n FROM general_environments")
    if not envs:
        return None
    built = count(store, "SELECT count(*) AS n FROM general_environments WHERE status = 'built'")
    tasks = count(store, "SELECT count(*) AS n FROM general_tasks")
    verified = count(store, "SELECT count(*) AS n FROM general_tasks WHERE status <> 'discarded'")
    kept = count(store, "SELECT count(*) AS n FROM general_tasks WHERE accepted")
    distributions = {
        "pass@k: successes c of n attempts": pass_rate_histogram(store, "general_tasks"),
        "tools per environment": histogram(
            store, "SELECT json_array_length(tools) AS bucket, count(*) AS n FROM general_environments "
                   "WHERE status = 'built' GROUP BY ALL ORDER BY bucket"),
        "tasks per level": histogram(store, "SELECT level AS bucket, count(*) AS n FROM general_tasks "
                                             "GROUP BY ALL ORDER BY bucket"),
    }
    return KindSection("general", "General tool environments",
                       [("environments made", envs), ("environments built", built), ("tasks written", tasks),
                        ("tasks verified", verified), ("kept (pass@k > 0)", kept)], discards_by_reason(store, ("general",)),
                       distributions, ("tool_writer", "task_writer", "solution_writer", "verifier_writer", "solver"),
                       kept, {"attempts": seconds_sum(store, "SELECT sum(seconds) AS s FROM general_attempts")})

