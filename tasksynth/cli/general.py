"""`tasksynth general`: general tool environments (synth -> report / show), and grading a trajectory.

`synth` runs the `general` flow (flows/general.py); every step is stored, so an interrupted run resumes.
`grade` needs no store and no pipeline: a bundle folder and a trajectory are enough.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from tasksynth.cli import app_state, lifecycle
from tasksynth.errors import TasksynthError
from tasksynth.store import open_store

app = typer.Typer(help="General tool environments: a sandboxed agent builds a database and tools per category; "
                       "per task a solution (tools only) and a verifier (check functions), made harder level by "
                       "level; kept when the solver succeeds at least once in k attempts (pass@k > 0).",
                  no_args_is_help=True)


@app.command("synth")
def synth(
    category: str = typer.Option(..., "--category", help="What the environments serve, e.g. \"travel planning\"."),
    envs: int = typer.Option(None, "--envs", min=1, help="Environments to build (default: general.envs)."),
    tasks_per_env: int = typer.Option(None, "--tasks-per-env", min=1,
                                      help="Level-1 tasks per environment (default: general.tasks_per_env)."),
    levels: int = typer.Option(None, "--levels", min=1, help="Make each task harder up to this level "
                                                             "(default: general.levels)."),
    k: int = typer.Option(None, "--k", min=1, help="Solver attempts per task for pass@k (default: general.k)."),
    stop_after_first_success: bool = typer.Option(None, "--stop-after-first-success/--all-attempts",
                                                  help="Stop a task's attempts at its first success (cheaper; "
                                                       "pass rates are then marked as not estimated)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the environments' data and the tools' randomness."),
) -> None:
    """Build environments for a category, write and verify tasks, filter them by pass@k.

    Example: tasksynth general synth --category "travel planning" --envs 2 --tasks-per-env 3 --levels 2 --k 100"""
    from flows.runtime import prepare_prefect, task_runner
    from tasksynth.cli.progress import step_progress
    from tasksynth.docker.engine import require_engine

    config = app_state.config()
    config.home_path.mkdir(parents=True, exist_ok=True)
    require_engine()
    with lifecycle.importing():
        prepare_prefect(config)
        from flows.general import general_pipeline

    with step_progress():
        summary = general_pipeline.with_options(task_runner=task_runner(config))(
            config=config, category=category, envs=envs, tasks_per_env=tasks_per_env, levels=levels, k=k,
            stop_after_first_success=stop_after_first_success, seed=seed)
    _print_funnel(summary["funnel"])
    errors = [e for key, step in summary.items() if isinstance(step, dict) for e in step.get("errors", [])]
    for error in errors:
        typer.secho(f"not done (a rerun retries it): {error}", fg="yellow", err=True)
    if errors:
        raise typer.Exit(1)


@app.command("report")
def report(
    category: str = typer.Option(None, "--category", help="Only this category."),
    as_json: bool = typer.Option(False, "--json", help="Print the funnel as JSON."),
) -> None:
    """The funnel: environments, tools, tasks per level, attempts, kept tasks, the pass@k distribution, every
    discard reason, and tokens / seconds / cost per kept task by role."""
    from general_env.funnel import general_funnel

    config = app_state.config()
    with open_store(config, read_only=config.store_path.exists()) as store:
        funnel = general_funnel(store, category=category)
    if as_json:
        typer.echo(json.dumps(funnel, indent=2, default=str))
    else:
        _print_funnel(funnel)


@app.command("show")
def show(task_id: str = typer.Argument(..., help="A task id (general_tasks.task_id) or an environment id."),
         ) -> None:
    """One task (statement, solution, verifier, pass@k, the tool its level added, attempts) or one environment
    (tools, gate, the tools its harder levels added or had rejected)."""
    config = app_state.config()
    with open_store(config, read_only=config.store_path.exists()) as store:
        tasks = store.query("SELECT * FROM general_tasks WHERE task_id = ?", [task_id])
        if tasks:
            task = tasks[0]
            attempts = store.query("SELECT attempt, outcome, reason, reward, tool_calls FROM general_attempts "
                                   "WHERE task_id = ? ORDER BY attempt", [task_id])
            added = store.query("SELECT tool, kind, status, reason, detail, bundle_id, parent_bundle_id "
                                "FROM general_level_tools WHERE task_id = ?", [task_id])
            typer.echo(json.dumps({**task, "tool_added_by_level": added[0] if added else None,
                                   "attempts": attempts}, indent=2, default=str))
            return
        envs = store.query("SELECT * FROM general_environments WHERE env_id = ?", [task_id])
        added = store.query("SELECT task_id, level, tool, kind, status, reason, bundle_id FROM general_level_tools "
                            "WHERE env_id = ? ORDER BY level, task_id", [task_id])
    if not envs:
        raise TasksynthError(f"no general task or environment with id {task_id!r}")
    typer.echo(json.dumps({**envs[0], "tools_added_by_levels": added}, indent=2, default=str))


@app.command("grade")
def grade(
    bundle: Path = typer.Argument(..., exists=True, file_okay=False, help="An environment bundle folder."),
    trajectory: Path = typer.Argument(..., exists=True, dir_okay=False,
                                      help="OpenAI chat messages (a list, or {\"messages\": [...]}, optionally "
                                           "with the task under \"task\")."),
    task: Path = typer.Option(None, "--task", exists=True, dir_okay=False,
                              help="The task: its verifier (check functions' source), or an exported row's "
                                   "`verifier` column, as JSON. Default: the trajectory's \"task\"."),
) -> None:
    """Grade one trajectory against a task of a bundle, in the sandbox; no store, no pipeline.

    Prints the reward (1 when every check passes and, where the task expects one, the final state matches),
    partial credit and each check's result."""
    from general_env.bundle import read_bundle
    from verifiers.general import grade_general
    from general_env.execution import WorldExecutor

    config = app_state.config()
    loaded = read_bundle(bundle)
    data = _read_json(trajectory)
    messages = data["messages"] if isinstance(data, dict) else data
    task_data = _task_from(_read_json(task) if task else (data.get("task") if isinstance(data, dict) else None))
    with WorldExecutor(config) as worlds, worlds.attempt(loaded.database) as world:
        result = grade_general(task_data, messages, db_path=world.db_path, tools_source=loaded.tools_source,
                               run=world.run, clock=loaded.clock, seed=loaded.seed)
    typer.echo(json.dumps(result.to_dict(), indent=2))


@app.command("status")
def status() -> None:
    """Count general tasks by level and acceptance."""
    config = app_state.config()
    with open_store(config, read_only=config.store_path.exists()) as store:
        rows = store.query("SELECT level, status, accepted, count(*) AS tasks FROM general_tasks GROUP BY ALL "
                           "ORDER BY ALL")
    if not rows:
        typer.echo(f"no general tasks in {config.store_path}")
    for row in rows:
        typer.echo("  ".join(f"{k}={v}" for k, v in row.items()))


def _task_from(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise TasksynthError("no task: pass --task FILE (the task's verifier as JSON) or put it in the trajectory "
                             "under \"task\"")
    if isinstance(value.get("verifier"), dict):  # an exported row's columns
        value = {**value, **value["verifier"]}
    source = value.get("source") if isinstance(value.get("source"), str) else value.get("verifier")
    if not isinstance(source, str):
        raise TasksynthError("the task has no verifier source (\"verifier\" or \"source\")")
    return {"verifier": source, "expected_state_hash": value.get("expected_state_hash")}


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise TasksynthError(f"cannot read {path} as JSON: {exc}") from None


def _print_funnel(funnel: dict[str, Any]) -> None:
    from general_env.funnel import funnel_table

    width = max((len(r["stage"]) for r in funnel_table(funnel)), default=10)
    for row in funnel_table(funnel):
        typer.echo(f"{row['stage']:<{width}}  {row['count']}")
    distribution = ", ".join(f"{k}: {v}" for k, v in funnel["pass_rate_distribution"].items())
    typer.echo(f"pass rate (c/n) of attempted tasks: {distribution}")
    per_task = funnel["per_kept_task"]
    if funnel["kept_tasks"]:
        typer.echo(f"per kept task: {per_task['tokens']} tokens, {per_task['seconds']} s, "
                   f"${per_task['cost_usd']}")
    else:
        typer.echo("no task kept yet")
