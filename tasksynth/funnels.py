"""A kind's funnel as the report and the Prefect artifacts show it: every stage and every discard reason with
exact counts, distributions, the agent roles whose calls it pays for, and where the time went.

Each pipeline has a `<kind>_section(store)` returning a `KindSection` (None while the store holds nothing of
it): `envbuilder.funnel`, `search_synth.funnel`, `general_env.funnel`; `flows.funnels.SECTIONS` lists them.
The page (`tasksynth report`) only draws what these return, and the tests compare the page with them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# Every kind of task, in the order the report and the export list them.
KINDS = ("code", "search", "general", "code_interpreter")


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


def count(store, sql: str, params: list | None = None) -> int:
    return int(store.query(sql, params)[0]["n"] or 0)


def discards_by_reason(store, sources: tuple[str, ...]) -> dict[str, int]:
    marks = ", ".join("?" for _ in sources)
    rows = store.query(f"SELECT stage, reason, count(*) AS n FROM discards WHERE source IN ({marks}) "
                       "GROUP BY ALL ORDER BY n DESC, stage, reason", list(sources))
    return {f"{r['stage']}: {r['reason']}": r["n"] for r in rows}


def histogram(store, sql: str) -> dict[str, int]:
    return {str(r["bucket"]): r["n"] for r in store.query(sql)}


def pass_rate_histogram(store, table: str) -> dict[str, int]:
    """Tasks of `table` (with columns c and n) by their pass rate c/n, in five buckets; unattempted ones left out."""
    return histogram(store, "SELECT CASE WHEN c = 0 THEN '0' WHEN c * 5 <= n THEN '(0, 0.2]' WHEN c * 2 <= n THEN "
                            "'(0.2, 0.5]' WHEN c * 5 <= n * 4 THEN '(0.5, 0.8]' ELSE '(0.8, 1]' END AS bucket, "
                            f"count(*) AS n FROM {table} WHERE n > 0 GROUP BY ALL ORDER BY bucket")


def seconds_sum(store, sql: str) -> float:
    return round(float(store.query(sql)[0]["s"] or 0.0), 1)


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
