"""The funnel of the search pipeline, from the stored trail alone: entities -> questions -> verified ->
all wrong -> kept, the discards by reason, and what it cost (tokens, seconds of model time, US dollars)
per kept item. `tasksynth search report` prints it; the flow publishes it as a Prefect artifact.

- entities: long-tail entities picked;
- questions: questions the builder wrote (a reply with a question and an answer);
- verified: questions that passed the model-free checks and whose ground truth the verifier confirmed;
- all wrong: verified questions every answer agent got wrong (by exact match or the judge);
- kept: all wrong, and no wrong answer could also be correct (items accepted for export).

Cost counts every agent call of the trail (questions, candidates, verdicts), failed attempts included.
"""

from __future__ import annotations

from typing import Any

from tasksynth.funnels import KindSection, count, histogram

STAGES = ("entities", "questions", "verified", "all_wrong", "kept")


def funnel(store, corpus: str | None = None) -> dict[str, Any]:
    where_e = "WHERE e.corpus = ?" if corpus else ""
    params = [corpus] if corpus else []
    trail = f"""
        WITH e AS (SELECT * FROM search_entities e {where_e}),
        q AS (SELECT q.* FROM search_questions q JOIN e USING (entity_id)),
        c AS (SELECT c.* FROM search_candidates c JOIN q USING (question_id)),
        v AS (SELECT v.* FROM search_verdicts v JOIN q USING (question_id))"""
    counts = store.query(trail + """
        SELECT (SELECT count(*) FROM e) AS entities,
               (SELECT count(*) FROM q WHERE question IS NOT NULL AND answer IS NOT NULL) AS questions,
               (SELECT count(*) FROM q JOIN v USING (question_id)
                 WHERE q.status = 'ok' AND v.check_name = 'truth' AND v.outcome = 'supported') AS verified,
               (SELECT count(*) FROM q JOIN v USING (question_id)
                 WHERE q.status = 'ok' AND v.check_name = 'truth' AND v.outcome = 'supported'
                   AND EXISTS (SELECT 1 FROM c WHERE c.question_id = q.question_id)
                   AND NOT EXISTS (SELECT 1 FROM c LEFT JOIN v j ON j.candidate_id = c.candidate_id
                                      AND j.check_name = 'judge'
                                   WHERE c.question_id = q.question_id AND coalesce(j.outcome, '') <> 'wrong'))
                 AS all_wrong,
               (SELECT count(*) FROM search_items i JOIN q USING (question_id) WHERE i.accepted) AS kept,
               (SELECT count(*) FROM search_items i JOIN q USING (question_id)
                 WHERE i.accepted AND i.weak_filter) AS kept_weak_filter""", params)[0]
    cost = store.query(trail + """,
        t AS (SELECT trajectory_id FROM q UNION SELECT trajectory_id FROM c UNION SELECT trajectory_id FROM v)
        SELECT count(*) AS calls, coalesce(sum(prompt_tokens), 0) + coalesce(sum(completion_tokens), 0) AS tokens,
               coalesce(sum(latency_s), 0) AS seconds, coalesce(sum(cost_usd), 0) AS cost_usd
        FROM agent_calls WHERE trajectory_id IN (SELECT trajectory_id FROM t)""", params)[0]
    discards = store.query(f"""
        SELECT d.stage, d.reason, count(*) AS items FROM discards d
        WHERE d.stage LIKE 'search.%' {"AND d.source = ?" if corpus else ""}
          AND d.stage <> 'search.import'
        GROUP BY ALL ORDER BY items DESC, d.reason""", params)
    kept = counts["kept"]
    per_kept = {k: (cost[k] / kept if kept else None) for k in ("tokens", "seconds", "cost_usd")}
    return {"corpus": corpus, **{k: counts[k] for k in STAGES}, "kept_weak_filter": counts["kept_weak_filter"],
            "calls": cost["calls"], "tokens": int(cost["tokens"]), "seconds": round(float(cost["seconds"]), 3),
            "cost_usd": float(cost["cost_usd"]), "per_kept": per_kept, "discards": discards}


def funnel_table(report: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per stage, with the tokens, seconds and cost per kept item on the `kept` row."""
    rows = []
    previous = None
    for stage in STAGES:
        count = report[stage]
        row = {"stage": stage.replace("_", " "), "items": count,
               "of previous": f"{count / previous:.0%}" if previous else ""}
        previous = count
        rows.append(row)
    per = report["per_kept"]
    rows[-1]["of previous"] += f" ({report['kept_weak_filter']} weak_filter)" if report["kept_weak_filter"] else ""
    rows.append({"stage": "cost", "items": f"{report['calls']} calls, {report['tokens']} tokens, "
                                          f"{report['seconds']:.1f} s, ${report['cost_usd']:.4f}",
                 "of previous": "per kept item: " + (
                     f"{per['tokens']:.0f} tokens, {per['seconds']:.1f} s, ${per['cost_usd']:.4f}"
                     if report["kept"] else "n/a (nothing kept)")})
    return rows


def funnel_markdown(report: dict[str, Any]) -> str:
    lines = ["| stage | items | of previous |", "|---|---|---|"]
    lines += [f"| {r['stage']} | {r['items']} | {r['of previous']} |" for r in funnel_table(report)]
    if report["discards"]:
        lines += ["", "| discarded at | reason | items |", "|---|---|---|"]
        lines += [f"| {d['stage']} | {d['reason']} | {d['items']} |" for d in report["discards"]]
    return "\n".join(lines)


def search_section(store) -> KindSection | None:
    """The report's view of `funnel`: the stages, every discard reason, and the verdicts' distribution."""
    if not count(store, "SELECT count(*) AS n FROM search_entities") and \
            not count(store, "SELECT count(*) AS n FROM search_items"):
        return None
    report = funnel(store)
    discards = {f"{d['stage']}: {d['reason']}": d["items"] for d in report["discards"]}
    imported = store.query("SELECT reason, count(*) AS n FROM discards WHERE stage = 'search.import' GROUP BY ALL")
    discards.update({f"search.import: {r['reason']}": r["n"] for r in imported})
    verdicts = histogram(store, "SELECT verdict AS bucket, count(*) AS n FROM search_items GROUP BY ALL "
                                "ORDER BY n DESC")
    sources = histogram(store, "SELECT coalesce(source, 'synth') AS bucket, count(*) AS n FROM search_items "
                               "GROUP BY ALL ORDER BY n DESC")
    return KindSection("search", "Search QA", [(stage.replace("_", " "), report[stage]) for stage in STAGES],
                       discards, {"verdicts": verdicts, "items by source": sources},
                       ("question_builder", "answerer", "verifier", "grader"), report["kept"],
                       {"agent calls (model seconds)": round(report["seconds"], 1)})
