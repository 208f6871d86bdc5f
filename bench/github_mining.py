"""GitHub mining against the local fake GitHub: API requests per PR and PRs examined per minute.

    .venv/bin/python bench/github_mining.py [--prs 2000] [--latency-ms 50] [--concurrency 4]

One repository of N merged PRs (plus ~10% closed unmerged) in a realistic mix (35% linked by GitHub, 10% by
a keyword only, 7% linked without tests, the rest linking no issue), every request delayed by the latency.
Runs, each in a fresh home unless said:
  graphql cold        token; GraphQL pages of 50 with files/commits/closing issues inline, then diffs
  graphql rerun       the same store again: the cursor says everything is done
  graphql re-mine     a fresh store but the warm HTTP cache (e.g. after changing a filter): 304s for diffs
  rest cold           no token: the REST listing, issues and diffs
  rest re-mine        fresh store, warm cache: every REST answer is a 304 (no quota)
Requests are counted per merged PR in the repository (for the cold runs, the PRs examined). Baseline: the
naive REST miner, 1 listing request per 100 PRs + files + issue + diff per linked PR (~1.5 per PR here).
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
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "envbuilder" / "github")]

from fake_github import FakeGithub  # noqa: E402
from scenarios import bulk_repo  # noqa: E402

from envbuilder.sources.github.client import GithubClient  # noqa: E402
from envbuilder.sources.github.miner import RepositoryMiner  # noqa: E402
from tasksynth.config import load_config  # noqa: E402
from tasksynth.store import open_store  # noqa: E402

TOKEN = "bench-token"


def run(fake: FakeGithub, home: Path, *, token: str | None, concurrency: int, page_size: int) -> dict:
    config = load_config(environ={"TASKSYNTH_HOME": str(home)})
    config.github.concurrency = concurrency
    config.github.page_size = page_size
    quota_before = {k: q.remaining for k, q in fake.quotas.items()}
    with open_store(config) as store, GithubClient(fake.url, token=token, concurrency=concurrency,
                                                   cache_dir=home / "cache" / "github",
                                                   sleeper=lambda s, r: time.sleep(min(s, 0.1))) as client:
        started = time.perf_counter()
        report = RepositoryMiner(client, store, config).mine("bench/big")
        wall = time.perf_counter() - started
        stats = client.stats.as_dict()
        candidates = store.query("SELECT count(*) AS n FROM candidates")[0]["n"]
    spent = sum(quota_before.get(k, q.limit) - q.remaining for k, q in fake.quotas.items())
    return {"wall_s": wall, "examined": report.examined, "candidates": candidates, "sent": stats["sent"],
            "quota": stats["quota"], "not_modified": stats["not_modified"], "server_quota_spent": spent}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prs", type=int, default=2000)
    parser.add_argument("--latency-ms", type=float, default=50.0)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--page-size", type=int, default=50)
    args = parser.parse_args()
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    work = Path(tempfile.mkdtemp(prefix="tasksynth-bench-github-"))
    rows = []
    with FakeGithub(token=TOKEN, latency_s=args.latency_ms / 1000, limit=10**9, anonymous_limit=10**9) as fake:
        bulk_repo(fake, "bench", "big", args.prs, seed=1)
        merged = sum(1 for p in fake.repos["bench/big"].pulls.values() if p.merged_at)
        for name, token, home in [("graphql cold", TOKEN, "g1"), ("graphql rerun", TOKEN, "g1"),
                                  ("graphql re-mine", TOKEN, "g2"), ("rest cold", None, "r1"),
                                  ("rest re-mine", None, "r2")]:
            if name.endswith("re-mine"):  # a fresh store with the previous run's HTTP cache
                shutil.copytree(work / ("g1" if token else "r1") / "cache", work / home / "cache")
            rows.append((name, run(fake, work / home, token=token, concurrency=args.concurrency,
                                   page_size=args.page_size)))
    shutil.rmtree(work, ignore_errors=True)

    print(f"GitHub mining bench: {merged} merged PRs, {args.latency_ms:.0f} ms latency per request, "
          f"concurrency {args.concurrency}, page size {args.page_size}")
    print(f"{'run':<17}{'wall s':>8}{'examined':>10}{'kept':>6}{'requests':>10}{'quota':>7}{'304s':>6}"
          f"{'req/PR':>8}{'quota/PR':>9}{'PRs/min':>9}")
    for name, r in rows:
        per_minute = r["examined"] / r["wall_s"] * 60 if r["examined"] else 0
        print(f"{name:<17}{r['wall_s']:>8.2f}{r['examined']:>10}{r['candidates']:>6}{r['sent']:>10}{r['quota']:>7}"
              f"{r['not_modified']:>6}{r['sent'] / merged:>8.3f}{r['quota'] / merged:>9.3f}{per_minute:>9.0f}")
    cold, rerun, remine = rows[0][1], rows[1][1], rows[2][1]
    rest_cold, rest_remine = rows[3][1], rows[4][1]
    print(f"warm rerun vs cold (graphql): requests x{rerun['sent'] / cold['sent']:.4f}, "
          f"quota x{rerun['quota'] / cold['quota']:.4f}")
    print(f"re-mine with warm cache vs cold: graphql quota x{remine['quota'] / cold['quota']:.3f}, "
          f"rest quota x{rest_remine['quota'] / rest_cold['quota']:.3f}")
    print(f"target: <= 1.5 requests per PR cold -> {cold['sent'] / merged:.3f} "
          f"({'met' if cold['sent'] / merged <= 1.5 else 'NOT met'}); warm rerun "
          f"{rerun['sent'] / merged:.4f} per PR")


if __name__ == "__main__":
    main()
