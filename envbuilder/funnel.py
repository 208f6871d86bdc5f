"""The code kind's funnel for the report and the flow's artifacts: candidates mined -> instances built ->
validated -> valid, every discard reason (mining filters, builds, verdicts), F2P / P2P / language
distributions and the seconds spent building and testing."""

from __future__ import annotations

from typing import Any

from tasksynth.funnels import KindSection, count, discards_by_reason, histogram, seconds_sum


def code_section(store) -> KindSection | None:
    mined = count(store, "SELECT count(*) AS n FROM candidates")
    if not mined:
        return None
    built = count(store, "SELECT count(*) AS n FROM code_instances WHERE status = 'built'")
    validated = count(store, "SELECT count(*) AS n FROM code_tasks")
    valid = count(store, "SELECT count(*) AS n FROM code_tasks WHERE verdict = 'valid'")
    discards = discards_by_reason(store, ("git", "swebench", "github"))
    for row in store.query("SELECT reason, count(*) AS n FROM code_instances WHERE status <> 'built' GROUP BY ALL"):
        discards[f"build: {row['reason']}"] = row["n"]
    for row in store.query("SELECT reason, count(*) AS n FROM code_tasks WHERE verdict <> 'valid' GROUP BY ALL"):
        discards[f"validate: {row['reason']}"] = row["n"]
    distributions = {
        "fail-to-pass tests per valid task": histogram(
            store, "SELECT least(len(fail_to_pass), 10) AS bucket, count(*) AS n FROM code_tasks "
                   "WHERE verdict = 'valid' GROUP BY ALL ORDER BY bucket"),
        "pass-to-pass tests per valid task": histogram(
            store, "SELECT least(len(pass_to_pass) // 10 * 10, 100) AS bucket, count(*) AS n FROM code_tasks "
                   "WHERE verdict = 'valid' GROUP BY ALL ORDER BY bucket"),
        "languages": histogram(store, "SELECT language AS bucket, count(*) AS n FROM candidates GROUP BY ALL "
                                       "ORDER BY n DESC"),
    }
    seconds = {
        "environment builds": seconds_sum(store, "SELECT sum(build_seconds) AS s FROM environments"),
        "instance builds": seconds_sum(store, "SELECT sum(build_seconds) AS s FROM code_instances"),
        "test runs": seconds_sum(store, "SELECT sum(seconds) AS s FROM test_runs"),
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
    candidates = count(store, "SELECT count(*) AS n FROM candidates")
    if not candidates:
        return None
    marks = ", ".join("?" for _ in BUILD_FILTER_REASONS)
    filtered = count(store, f"SELECT count(*) AS n FROM code_instances WHERE reason IS NULL OR reason NOT IN "
                             f"({marks})", list(BUILD_FILTER_REASONS))
    by_origin = {r["origin"]: r["n"] for r in store.query(
        "SELECT CASE WHEN e.recipe_origin = 'agent' THEN 'agent' ELSE 'heuristic' END AS origin, count(*) AS n "
        "FROM code_instances i JOIN environments e USING (env_id) WHERE i.status = 'built' GROUP BY ALL")}
    valid = count(store, "SELECT count(*) AS n FROM code_tasks WHERE verdict = 'valid'")
    valid_envs = count(store, "SELECT count(DISTINCT env_id) AS n FROM code_tasks WHERE verdict = 'valid'")
    # A store opened read-only before migration 009 ran has no agent columns yet: no agent ever ran there.
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
