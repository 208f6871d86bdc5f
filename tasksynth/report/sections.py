"""What the report shows of each kind, read from the store: its funnel (every stage and every discard
reason, exact counts), its distributions, its costs and where the time went.

Each kind has one function here returning a `KindSection`; the page (`tasksynth.report.page`) only draws what
these return, and the tests compare the page with these numbers. A kind with nothing in the store is left out.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class KindSection:
    kind: str
    title: str
    funnel: list[tuple[str, int]]  # stages in order, each with its count
    discards: dict[str, int]  # "stage: reason" -> count
    distributions: dict[str, dict[str, int]] = field(default_factory=dict)  # name -> {bucket: count}
    roles: tuple[str, ...] = ()  # the agent roles whose calls count for this kind
    kept: int = 0
    seconds_by_step: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "title": self.title, "funnel": [list(s) for s in self.funnel],
                "discards": self.discards, "distributions": self.distributions, "kept": self.kept,
                "seconds_by_step": self.seconds_by_step}


def _count(store, sql: str, params: list | None = None) -> int:
    return int(store.query(sql, params)[0]["n"] or 0)


def _discards(store, sources: tuple[str, ...]) -> dict[str, int]:
    marks = ", ".join("?" for _ in sources)
    rows = store.query(f"SELECT stage, reason, count(*) AS n FROM discards WHERE source IN ({marks}) "
                       "GROUP BY ALL ORDER BY n DESC, stage, reason", list(sources))
    return {f"{r['stage']}: {r['reason']}": r["n"] for r in rows}


def _histogram(store, sql: str) -> dict[str, int]:
    return {str(r["bucket"]): r["n"] for r in store.query(sql)}


def code_section(store) -> KindSection | None:
    mined = _count(store, "SELECT count(*) AS n FROM candidates")
    if not mined:
        return None
    built = _count(store, "SELECT count(*) AS n FROM code_instances WHERE status = 'built'")
    validated = _count(store, "SELECT count(*) AS n FROM code_tasks")
    valid = _count(store, "SELECT count(*) AS n FROM code_tasks WHERE verdict = 'valid'")
    discards = _discards(store, ("git", "swebench", "github"))
    for row in store.query("SELECT reason, count(*) AS n FROM code_instances WHERE status <> 'built' GROUP BY ALL"):
        discards[f"build: {row['reason']}"] = row["n"]
    for row in store.query("SELECT reason, count(*) AS n FROM code_tasks WHERE verdict <> 'valid' GROUP BY ALL"):
        discards[f"validate: {row['reason']}"] = row["n"]
    distributions = {
        "fail-to-pass tests per valid task": _histogram(
            store, "SELECT least(len(fail_to_pass), 10) AS bucket, count(*) AS n FROM code_tasks "
                   "WHERE verdict = 'valid' GROUP BY ALL ORDER BY bucket"),
        "pass-to-pass tests per valid task": _histogram(
            store, "SELECT least(len(pass_to_pass) // 10 * 10, 100) AS bucket, count(*) AS n FROM code_tasks "
                   "WHERE verdict = 'valid' GROUP BY ALL ORDER BY bucket"),
        "languages": _histogram(store, "SELECT language AS bucket, count(*) AS n FROM candidates GROUP BY ALL "
                                       "ORDER BY n DESC"),
    }
    seconds = {
        "environment builds": _sum(store, "SELECT sum(build_seconds) AS s FROM environments"),
        "instance builds": _sum(store, "SELECT sum(build_seconds) AS s FROM code_instances"),
        "test runs": _sum(store, "SELECT sum(seconds) AS s FROM test_runs"),
    }
    return KindSection("code", "Code-agent environments",
                       [("candidates mined", mined), ("instances built", built), ("validated", validated),
                        ("valid", valid)], discards, distributions, ("statement_writer", "github_reviewer", "env_builder"),
                       valid, seconds)


# Reasons of build_candidate that end a candidate before any image is built: it did not pass the filters.
BUILD_FILTER_REASONS = ("patch_outside_repo", "unsupported_project", "repo_unavailable")


def environment_funnel(store) -> dict[str, Any] | None:
    """Code environments from candidate to valid task: candidates -> filtered (reached an image build) -> built
    with a heuristic (or user) recipe -> built with an agent's recipe -> valid; with the environment-building
    agent's cost and the build time per valid environment (environments of at least one valid task)."""
    candidates = _count(store, "SELECT count(*) AS n FROM candidates")
    if not candidates:
        return None
    marks = ", ".join("?" for _ in BUILD_FILTER_REASONS)
    filtered = _count(store, f"SELECT count(*) AS n FROM code_instances WHERE reason IS NULL OR reason NOT IN "
                             f"({marks})", list(BUILD_FILTER_REASONS))
    by_origin = {r["origin"]: r["n"] for r in store.query(
        "SELECT CASE WHEN e.recipe_origin = 'agent' THEN 'agent' ELSE 'heuristic' END AS origin, count(*) AS n "
        "FROM code_instances i JOIN environments e USING (env_id) WHERE i.status = 'built' GROUP BY ALL")}
    valid = _count(store, "SELECT count(*) AS n FROM code_tasks WHERE verdict = 'valid'")
    valid_envs = _count(store, "SELECT count(DISTINCT env_id) AS n FROM code_tasks WHERE verdict = 'valid'")
    # A store opened read-only before migration 013 ran has no agent columns yet: no agent ever ran there.
    columns = {r["column_name"] for r in store.query(
        "SELECT column_name FROM information_schema.columns WHERE table_name = 'environments'")}
    agent = "agent_status" in columns
    totals = store.query(("SELECT sum(coalesce(agent_cost_usd, 0)) AS cost, sum(coalesce(agent_seconds, 0)) AS "
                          "agent_s, count(agent_status) AS episodes, " if agent else
                          "SELECT 0.0 AS cost, 0.0 AS agent_s, 0 AS episodes, ") +
                         "sum(coalesce(build_seconds, 0)) AS build_s FROM environments")[0]
    agent_status = {r["agent_status"]: r["n"] for r in store.query(
        "SELECT agent_status, count(*) AS n FROM environments WHERE agent_status IS NOT NULL GROUP BY ALL "
        "ORDER BY n DESC, agent_status")} if agent else {}
    cost, seconds = float(totals["cost"] or 0.0), float(totals["agent_s"] or 0.0) + float(totals["build_s"] or 0.0)
    return {"funnel": [("candidates", candidates), ("filtered", filtered),
                       ("built heuristically", by_origin.get("heuristic", 0)),
                       ("built by agent", by_origin.get("agent", 0)), ("valid", valid)],
            "valid_environments": valid_envs, "agent_episodes": int(totals["episodes"] or 0),
            "agent_outcomes": agent_status, "agent_cost_usd": round(cost, 6),
            "environment_seconds": round(seconds, 1),
            "cost_usd_per_valid_environment": round(cost / valid_envs, 6) if valid_envs else None,
            "seconds_per_valid_environment": round(seconds / valid_envs, 1) if valid_envs else None}


def search_section(store) -> KindSection | None:
    items = _count(store, "SELECT count(*) AS n FROM search_items")
    if not items:
        return None
    kept = _count(store, "SELECT count(*) AS n FROM search_items WHERE accepted")
    verdicts = {str(r["verdict"]): r["n"] for r in store.query(
        "SELECT verdict, count(*) AS n FROM search_items GROUP BY ALL ORDER BY n DESC")}
    discards = _discards(store, ("search", "search_import"))
    for verdict, n in verdicts.items():
        if verdict != "kept":
            discards.setdefault(f"verdict: {verdict}", n)
    return KindSection("search", "Search QA", [("items made", items), ("kept", kept)], discards,
                       {"verdicts": verdicts}, ("question_builder", "answerer", "verifier", "grader"), kept)


def general_section(store) -> KindSection | None:
    envs = _count(store, "SELECT count(*) AS n FROM general_environments")
    if not envs:
        return None
    built = _count(store, "SELECT count(*) AS n FROM general_environments WHERE status = 'built'")
    tasks = _count(store, "SELECT count(*) AS n FROM general_tasks")
    verified = _count(store, "SELECT count(*) AS n FROM general_tasks WHERE status <> 'discarded'")
    kept = _count(store, "SELECT count(*) AS n FROM general_tasks WHERE accepted")
    distributions = {
        "pass@k: successes c of n attempts": _histogram(
            store, "SELECT CASE WHEN c = 0 THEN '0' WHEN c * 5 <= n THEN '(0, 0.2]' WHEN c * 2 <= n THEN "
                   "'(0.2, 0.5]' WHEN c * 5 <= n * 4 THEN '(0.5, 0.8]' ELSE '(0.8, 1]' END AS bucket, count(*) AS n "
                   "FROM general_tasks WHERE n > 0 GROUP BY ALL ORDER BY bucket"),
        "tools per environment": _histogram(
            store, "SELECT json_array_length(tools) AS bucket, count(*) AS n FROM general_environments "
                   "WHERE status = 'built' GROUP BY ALL ORDER BY bucket"),
        "tasks per level": _histogram(store, "SELECT level AS bucket, count(*) AS n FROM general_tasks "
                                             "GROUP BY ALL ORDER BY bucket"),
    }
    return KindSection("general", "General tool environments",
                       [("environments made", envs), ("environments built", built), ("tasks written", tasks),
                        ("tasks verified", verified), ("kept (pass@k > 0)", kept)], _discards(store, ("general",)),
                       distributions, ("tool_writer", "task_writer", "solution_writer", "verifier_writer", "solver"),
                       kept, {"attempts": _sum(store, "SELECT sum(seconds) AS s FROM general_attempts")})


def _sum(store, sql: str) -> float:
    return round(float(store.query(sql)[0]["s"] or 0.0), 1)


SECTIONS: dict[str, Callable[[Any], KindSection | None]] = {
    "code": code_section, "search": search_section, "general": general_section,
}


def costs(store, section: KindSection) -> list[dict[str, Any]]:
    """Tokens, seconds and cost by role and model, totals and per kept task of the kind."""
    if not section.roles:
        return []
    marks = ", ".join("?" for _ in section.roles)
    rows = store.query(f"SELECT role, model, count(*) AS calls, sum(coalesce(prompt_tokens, 0) + "
                       f"coalesce(completion_tokens, 0)) AS tokens, sum(coalesce(latency_s, 0)) AS seconds, "
                       f"sum(coalesce(cost_usd, 0)) AS cost_usd FROM agent_calls WHERE role IN ({marks}) "
                       f"GROUP BY ALL ORDER BY role, model", list(section.roles))
    for row in rows:
        for key in ("tokens", "seconds", "cost_usd"):
            row[f"{key}_per_kept"] = round(row[key] / section.kept, 4) if section.kept else None
        row["seconds"] = round(row["seconds"], 2)
    return rows
