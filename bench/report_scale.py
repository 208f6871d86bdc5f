"""Benchmark: the report page with 100k tasks in the store: its size, the time to build it, and the time
Debian's headless Chromium takes to load it (navigation to the load event, over the DevTools protocol).

Targets: under 20 MB and under 3 s to load, with a stratified sample of 500 browsable tasks and every count
exact. Baseline, same run: the same page with all 100k tasks embedded (what a report without sampling would
be), to show what the sample saves.

    python bench/report_scale.py [--tasks 100000] [--sample 500]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "support")]

from headless_browser import HeadlessChromium  # noqa: E402

from tasksynth.report.page import render_page, report_data  # noqa: E402
from tasksynth.store import Store  # noqa: E402


def fill_with_sql(store: Store, tasks: int) -> None:
    """`tasks` tasks, nine in ten code and one in ten general, written with set-based SQL (fast)."""
    code, general = tasks * 9 // 10, tasks // 10
    store.execute(f"""INSERT INTO candidates (candidate_id, source, instance_id, repo, base_commit, patch, test_patch,
                       problem_statement, language)
                   SELECT 'c' || i, 'git', 'repo-' || i, 'org/repo' || (i % 50), 'abc', 'diff --git a/x b/x',
                          'diff --git a/t b/t', 'Issue ' || i || ': the parser drops a trailing comma', 'python'
                   FROM range({code}) t(i)""")
    store.execute(f"""INSERT INTO code_instances (instance_id, candidate_id, status, image, build_seconds)
                   SELECT 'repo-' || i, 'c' || i, CASE WHEN i % 17 = 0 THEN 'failed' ELSE 'built' END, 'img', 0.4
                   FROM range({code}) t(i)""")
    store.execute(f"""INSERT INTO code_tasks (instance_id, candidate_id, repo, base_commit, image, verdict, reason,
                       fail_to_pass, pass_to_pass)
                   SELECT 'repo-' || i, 'c' || i, 'org/repo' || (i % 50), 'abc', 'img',
                          CASE WHEN i % 3 = 0 THEN 'rejected' ELSE 'valid' END,
                          CASE WHEN i % 3 = 0 THEN 'pass_to_fail' END, ['t.py::test_' || i], ['t.py::ok']
                   FROM range({code}) t(i) WHERE i % 17 <> 0""")
    store.execute(f"""INSERT INTO discards (stage, source, item, reason)
                   SELECT 'filter', 'git', 'commit' || i, CASE WHEN i % 2 = 0 THEN 'docs_only' ELSE 'too_large' END
                   FROM range({code // 4}) t(i)""")
    store.execute("""INSERT INTO general_environments (env_id, category, status, tools)
                     SELECT 'env' || i, 'travel planning', 'built', '[{"function": {"name": "search"}}]'
                     FROM range(100) t(i)""")
    store.execute(f"""INSERT INTO general_tasks (task_id, env_id, level, prompt, verifier, status, c, n, accepted)
                   SELECT 'g' || i, 'env' || (i % 100), 1 + i % 3, 'Book trip ' || i, 'def check_x(s, a): return True',
                          'attempted', i % 7, 10, i % 7 > 0
                   FROM range({general}) t(i)""")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--sample", type=int, default=500)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="bench-report-"))
    try:
        print(f"load average before: {os.getloadavg()[0]:.2f}")
        with Store(workdir / "store.duckdb") as store:
            started = time.perf_counter()
            fill_with_sql(store, args.tasks)
            print(f"store filled with {args.tasks} tasks in {time.perf_counter() - started:.1f} s")
            figures = {}
            for label, sample in (("sampled", args.sample), ("everything (baseline)", args.tasks)):
                started = time.perf_counter()
                page = render_page(report_data(store, sample=sample))
                built = time.perf_counter() - started
                path = workdir / f"report-{sample}.html"
                path.write_text(page)
                with HeadlessChromium(workdir) as browser:
                    load = min(browser.open(path.as_uri(), timeout_s=120) for _ in range(3))
                    assert browser.console_errors == [], browser.console_errors
                figures[label] = (path.stat().st_size / 1e6, built, load)
                print(f"{label:>22}: {figures[label][0]:6.1f} MB, built in {built:5.1f} s, loaded in {load:5.2f} s "
                      f"(best of 3)")
        size, _, load = figures["sampled"]
        base_size, _, base_load = figures["everything (baseline)"]
        print(f"sampled page vs every task embedded: size x{size / base_size:.2f}, load x{load / base_load:.2f}")
        print(f"targets: size < 20 MB {'met' if size < 20 else 'missed'}; load < 3 s {'met' if load < 3 else 'missed'}")
        print(f"load average after: {os.getloadavg()[0]:.2f}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
