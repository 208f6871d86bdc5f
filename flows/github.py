"""Mining GitHub issue->PR pairs over a list of repositories, in parallel across repositories, resumable.

    repositories -> [mine one repository: pages -> filters -> candidates | discards] x N -> funnel summary

Each repository is one Prefect task (retried with backoff on a GitHub failure); the miner writes every
page with its cursor, so a retry or a rerun after a crash continues where the scan stopped. The work is
network-bound and writes as it goes, so the tasks run on threads of the flow process, the store's writer
(`flows.task_runner = "dask"` is not used for this flow).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from prefect.futures import as_completed
from prefect.task_runners import ThreadPoolTaskRunner

from envbuilder.sources.github.client import GithubClient, GithubError
from envbuilder.sources.github.miner import RepositoryMiner, normalize_repo, read_repo_list
from flows.prefect_flow import flow
from flows.runtime import flow_run, step_task
from tasksynth.config import Config, load_config
from tasksynth.store import open_store


@flow(name="github-mining", validate_parameters=False, task_runner=ThreadPoolTaskRunner(max_workers=8))
def github_mining(config: Config | None = None, repos: list[str] | tuple[str, ...] = (), since: str | None = None,
                  limit: int | None = None, config_path: str | None = None, *, reviewer=None, sleeper=None,
                  on_page=None) -> dict[str, Any]:
    """Mine `repos` (owner/name each); `since`: only PRs updated since this date; `limit`: at most this many
    PRs examined per repository. `reviewer`, `sleeper`, `on_page` replace the configured LLM review, the
    rate-limit countdown and the progress callback."""
    config = config or load_config(config_path)
    if not repos and config.github.repos_file:  # a scheduled run names no repositories
        repos = read_repo_list(config.github.repos_file)
    repos = list(dict.fromkeys(normalize_repo(r) for r in repos))
    since_time = parse_since(since)
    params = {"repos": repos, "since": since, "limit": limit}
    with open_store(config) as store, flow_run(store, "github", params) as summary, \
            GithubClient.from_config(config, sleeper=sleeper) as client:
        if reviewer is None and config.github.llm_review:
            from envbuilder.filters.github_review import make_reviewer

            reviewer = make_reviewer(config, store=store)
        miner = RepositoryMiner(client, store, config, reviewer=reviewer, run_id=summary["run_id"], on_page=on_page)

        def mine_repository(repo: str) -> dict[str, Any]:
            try:
                return miner.mine(repo, since=since_time, limit=limit).as_dict()
            except GithubError as exc:
                if exc.status in (401, 403, 404):  # retrying will not help: report it and go on
                    return {"repo": repo, "error": str(exc)}
                raise

        task = step_task(mine_repository, config, name="mine-github-repository")
        futures = {task.submit(repo): repo for repo in repos}
        reports = []
        for future in as_completed(list(futures)):
            try:
                reports.append(future.result())
            except Exception as exc:  # noqa: BLE001 - one repository's failure must not stop the others
                reports.append({"repo": futures[future], "error": f"{type(exc).__name__}: {exc}"})
        reports.sort(key=lambda r: repos.index(r["repo"]))
        summary.update(repos=reports, requests=client.stats.as_dict(),
                       examined=sum(r.get("examined", 0) for r in reports),
                       candidates=sum(r.get("candidates", 0) for r in reports),
                       errors=[r for r in reports if "error" in r])
    return summary


def parse_since(value: str | dt.date | dt.datetime | None) -> dt.datetime | None:
    """`2024-05-01` or an ISO time, as an aware UTC datetime."""
    if value is None or value == "":
        return None
    if isinstance(value, dt.datetime):
        moment = value
    elif isinstance(value, dt.date):
        moment = dt.datetime(value.year, value.month, value.day)
    else:
        try:
            moment = dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
        except ValueError:
            raise GithubError(f"--since: not a date (expected YYYY-MM-DD): {value!r}") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.timezone.utc)
