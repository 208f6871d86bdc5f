"""`tasksynth notebook`: code-interpreter tasks (synth -> report / show).

`synth` runs the `notebook` flow (flows/notebook.py); every step is stored, so an interrupted run resumes.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from tasksynth.cli import app_state, lifecycle
from tasksynth.errors import TasksynthError
from tasksynth.store import open_store

app = typer.Typer(help="Code-interpreter tasks: an agent explores a real table in a sandboxed Jupyter kernel and "
                       "writes a question with a closed answer format and a reference solution; the solution's "
                       "executed answer is the gold one; tasks answered without the data, or by a second "
                       "solution differently, are dropped; kept when the solver succeeds at least once in k "
                       "attempts (pass@k > 0).", no_args_is_help=True)


@app.command("synth")
def synth(
    datasets: str = typer.Option(None, "--datasets", help="Comma-separated packaged tables (default: penguins, "
                                                          "seattle-weather, stocks, iowa-electricity)."),
    data_dir: Path = typer.Option(None, "--data-dir", exists=True, file_okay=False,
                                  help="A folder of your own .csv/.parquet tables, one dataset per file."),
    tasks: int = typer.Option(4, "--tasks", min=1, help="Tasks to write, spread over the datasets."),
    k: int = typer.Option(100, "--k", min=1, help="Solver attempts per task for pass@k."),
    pool_size: int = typer.Option(2, "--kernels", min=1, help="Kernels kept warm."),
    seed: int = typer.Option(0, "--seed", help="Seed in the task writer's request (another seed, other tasks)."),
) -> None:
    """Write, check and filter code-interpreter tasks.

    Example: tasksynth notebook synth --datasets penguins,stocks --tasks 10 --k 100"""
    from flows.runtime import prepare_prefect, task_runner
    from notebook_env.datasets import PACKAGED
    from tasksynth.cli.progress import step_progress
    from tasksynth.docker.engine import require_engine

    names = [name.strip() for name in datasets.split(",") if name.strip()] if datasets else None
    unknown = [name for name in names or [] if name not in PACKAGED]
    if unknown:
        raise TasksynthError(f"unknown dataset {', '.join(unknown)}; known: {', '.join(sorted(PACKAGED))}")
    config = app_state.config()
    config.home_path.mkdir(parents=True, exist_ok=True)
    require_engine()
    with lifecycle.importing():
        prepare_prefect(config)
        from flows.notebook import notebook_pipeline

    with step_progress():
        summary = notebook_pipeline.with_options(task_runner=task_runner(config))(
            config=config, datasets=names if names is not None else ([] if data_dir else None),
            data_dir=str(data_dir) if data_dir else None, tasks=tasks, k=k, pool_size=pool_size, seed=seed)
    _print_funnel(summary["funnel"])
    errors = [e for step in summary.values() if isinstance(step, dict) for e in step.get("errors", [])]
    for error in errors:
        typer.secho(f"not done (a rerun retries it): {error}", fg="yellow", err=True)
    if errors:
        raise typer.Exit(1)


@app.command("mine")
def mine(
    git: Path = typer.Option(None, "--git", exists=True, file_okay=False,
                             help="A git repository whose notebooks (at HEAD) become tasks."),
    github: str = typer.Option(None, "--github", metavar="OWNER/NAME",
                               help="A GitHub repository whose notebooks (its default branch) become tasks: the "
                                    "notebooks and their data files are fetched through the GitHub API (token "
                                    "from $GITHUB_TOKEN if set; rate limits are waited out)."),
) -> None:
    """Tasks from real notebooks: each one whose cells ran in order without errors on the repository's own data,
    re-run in the sandbox kernel with the same final output, becomes a task (question: its last markdown cell
    before the final code cell; answer: that cell's output). Every other notebook is discarded with its reason.
    Give exactly one of --git and --github; a rerun goes on where an interrupted one stopped.

    Example: tasksynth notebook mine --git ./analysis-repo
    Example: tasksynth notebook mine --github owner/analysis-repo"""
    from envbuilder.sources.github.miner import normalize_repo
    from notebook_env.datasets import data_root
    from notebook_env.kernel_image import kernel_image
    from notebook_env.mining import KernelsOnFirstUse, git_notebooks, mine_repository
    from tasksynth.docker.engine import require_engine

    if (git is None) == (github is None):
        raise TasksynthError("give exactly one source: --git PATH (a git repository) or --github OWNER/NAME")
    repo = normalize_repo(github) if github is not None else None  # a malformed name: one line, before any work
    config = app_state.config()
    config.home_path.mkdir(parents=True, exist_ok=True)
    require_engine()
    if git is not None:
        try:
            paths = git_notebooks(git)
        except ValueError as exc:
            raise TasksynthError(str(exc)) from None
        folder, repo_name = git.resolve(), git.resolve().name
    else:
        folder, repo_name, paths = _github_snapshot(config, repo)
    kernels = KernelsOnFirstUse(config, lambda: kernel_image(config).tag)
    try:
        with open_store(config) as store:
            counts = mine_repository(store, kernels, folder, repo_name, paths, data_dir=data_root(config),
                                     progress=lambda line: typer.echo(line, err=True))
    finally:
        kernels.close()
    for key, count in counts.items():
        typer.echo(f"{key}  {count}")


def _github_snapshot(config, repo: str) -> tuple[Path, str, list[str]]:
    """The repository's notebooks and data files fetched into a local snapshot; one line on a GitHub error."""
    from envbuilder.sources.github.client import GithubClient
    from notebook_env.github_source import fetch_snapshot
    from tasksynth.config import secret

    if secret(config.github.token_env) is None:
        typer.secho(f"no token in ${config.github.token_env}: fetching at GitHub's anonymous rate "
                    "(60 requests/hour)", fg="yellow", err=True)
    with GithubClient.from_config(config) as client:
        snapshot = fetch_snapshot(client, repo, config.home_path, progress=lambda line: typer.echo(line, err=True))
    typer.echo(f"{repo} at {snapshot.commit[:12]}: {len(snapshot.notebooks)} notebook(s); {snapshot.fetched} "
               f"file(s) fetched, {snapshot.reused} already here, {len(snapshot.left_out)} left out", err=True)
    for path, why in sorted(snapshot.left_out.items()):
        typer.echo(f"left out {path}: {why}", err=True)
    return snapshot.folder, repo, snapshot.notebooks


@app.command("report")
def report(as_json: bool = typer.Option(False, "--json", help="Print the funnel as JSON.")) -> None:
    """The funnel: tasks written, passed the filters, attempts graded and solved, kept, every discard reason."""
    from notebook_env.funnel import notebook_funnel

    config = app_state.config()
    with open_store(config, read_only=config.store_path.exists()) as store:
        funnel = notebook_funnel(store)
    if as_json:
        typer.echo(json.dumps(funnel, indent=2, default=str))
    else:
        _print_funnel(funnel)


@app.command("show")
def show(task_id: str = typer.Argument(..., help="A task id (notebook_tasks.task_id).")) -> None:
    """One task (question, format, solution, gold answer, filters, pass@k) and its attempts."""
    config = app_state.config()
    with open_store(config, read_only=config.store_path.exists()) as store:
        tasks = store.query("SELECT * FROM notebook_tasks WHERE task_id = ?", [task_id])
        if not tasks:
            raise TasksynthError(f"no notebook task with id {task_id!r}")
        attempts = store.query("SELECT attempt, outcome, reason, final_answer, cells, restarts, notebook FROM "
                               "notebook_attempts WHERE task_id = ? ORDER BY attempt", [task_id])
    typer.echo(json.dumps({**tasks[0], "attempts": attempts}, indent=2, default=str))


def _print_funnel(funnel: dict) -> None:
    from notebook_env.funnel import funnel_table

    rows = funnel_table(funnel)
    width = max(len(r["stage"]) for r in rows)
    for row in rows:
        typer.echo(f"{row['stage']:<{width}}  {row['count']}")
