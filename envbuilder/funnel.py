"""The code kind's funnel for the report and the flow's artifacts: candidates mined -> instances built ->
validated -> valid, every discard reason (mining filters, builds, verdicts), F2P / P2P / language
distributions and the seconds spent building and testing."""

from __future__ import annotations

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
                        ("valid", valid)], discards, distributions, ("statement_writer", "github_reviewer"),
                       valid, seconds)

