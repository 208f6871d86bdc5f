"""`tasksynth code mine --github OWNER/NAME [--since DATE] [--limit N]` and `--github-list FILE`.

The command's logic lives here so `tasksynth/cli/code.py` only adds the options and calls `mine_github`; the
mining itself is the `github_mining` flow (flows/github.py) over envbuilder/sources/github/.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from envbuilder.sources.github.client import GithubError
from envbuilder.sources.github.miner import MiningReport, normalize_repo, read_repo_list
from envbuilder.sources.github.waiting import CountdownSleeper
from tasksynth.cli import lifecycle
from tasksynth.config import Config, secret

GITHUB_HELP = "Mine merged pull requests that resolve issues in this GitHub repository (OWNER/NAME)."
GITHUB_LIST_HELP = "Mine every repository listed in FILE (one OWNER/NAME or URL per line; # starts a comment)."
SINCE_HELP = "GitHub: only pull requests updated on or after this date (YYYY-MM-DD)."
LIMIT_HELP = "GitHub: examine at most N new pull requests per repository this run (a rerun continues)."


def mine_github(config: Config, repos: list[str], *, since: str | None = None, limit: int | None = None,
                console: Console | None = None) -> dict[str, Any]:
    """Run the mining flow with a progress bar per repository; print the funnel; return the flow summary."""
    from flows.runtime import prepare_prefect

    console_given = console is not None
    console = console or Console(stderr=True)  # progress on stderr; the summary on stdout
    repos = [normalize_repo(r) for r in repos]
    if not repos:
        raise GithubError("no repository to mine: give --github OWNER/NAME or --github-list FILE")
    if secret(config.github.token_env) is None:
        console.print(f"[yellow]no token in ${config.github.token_env}: mining through the REST API at GitHub's "
                      "anonymous rate (60 requests/hour); set the variable for GraphQL and 5,000/hour[/]")
    with lifecycle.importing():
        prepare_prefect(config)
        from flows.github import github_mining  # after prepare_prefect: Prefect reads its settings at import

    # The rate-limit countdown is one more line of this display (CountdownSleeper adds it as a task).
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console) as progress:
        tasks = {repo: progress.add_task(repo, total=limit) for repo in repos}

        def on_page(report: MiningReport) -> None:
            progress.update(tasks[report.repo], completed=report.examined,
                            description=f"{report.repo}: {report.candidates} kept, "
                                        f"{sum(report.discarded.values())} dropped, {report.pages} pages")

        summary = github_mining(config=config, repos=repos, since=since, limit=limit,
                                sleeper=CountdownSleeper(progress=progress), on_page=on_page)
    print_summary(summary, console if console_given else Console(soft_wrap=True, highlight=False))
    return summary


def print_summary(summary: dict[str, Any], console: Console) -> None:
    for report in summary.get("repos", []):
        if "error" in report:
            console.print(f"[red]{report['repo']}: {report['error']}[/]")
            continue
        dropped = ", ".join(f"{reason} {count}" for reason, count in sorted(report["discarded"].items(),
                                                                           key=lambda kv: -kv[1]))
        state = "scan finished" if report["finished"] else "scan continues next run"
        console.print(f"{report['repo']}: {report['examined']} examined, {report['candidates']} candidates"
                      f"{'; dropped: ' + dropped if dropped else ''} ({state})")
    requests = summary.get("requests", {})
    console.print(f"GitHub requests: {requests.get('sent', 0)} sent, {requests.get('not_modified', 0)} answered "
                  f"from the cache (304), {requests.get('rate_limit_waits', 0)} rate-limit waits")


def exit_on_error(summary: dict[str, Any]) -> None:
    if summary.get("errors") and len(summary["errors"]) == len(summary.get("repos", [])):
        raise typer.Exit(1)


def mine_github_command(config: Config, github: list[str] | None, github_list: str | Path | None, *,
                        since: str | None, limit: int | None) -> dict[str, Any]:
    """What `tasksynth code mine --github/--github-list` does; exits 1 when no repository could be mined."""
    repos = list(github or [])
    if github_list:
        repos += read_repo_list(github_list)
    config.home_path.mkdir(parents=True, exist_ok=True)
    summary = mine_github(config, repos, since=since, limit=limit)
    exit_on_error(summary)
    return summary
