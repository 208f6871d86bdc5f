"""`tasksynth code`: code-agent environments (mine -> build -> validate).

Each command runs the `code` flow (`flows/code.py`) with the stages it names; the flow stores everything, so
every command can be interrupted and run again: finished work is not redone.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from tasksynth.cli import app_state, lifecycle
from tasksynth.cli import github_mining as gh_cli
from tasksynth.cli.code_environments import recipes_app
from tasksynth.cli.code_environments import report as environments_report
from tasksynth.errors import TasksynthError

app = typer.Typer(help="Code-agent environments: mine candidate changes (git history, SWE-bench files), build "
                       "Docker environments in layers (base -> repository environment -> instance), and validate "
                       "that the gold patch turns failing tests green (F2P > 0, P2F = 0).",
                  no_args_is_help=True)
console = Console(width=None if sys.stdout.isatty() else 160)
app.add_typer(recipes_app, name="recipes")
app.command("report")(environments_report)

GIT_HELP = "A repository to mine: a local path or a clone URL; repeatable. Every commit (or merged PR) on the " \
           "first-parent history that changes tests and code becomes a candidate."
SWEBENCH_HELP = "A SWE-bench-format .jsonl file to import; repeatable."
REPOS_DIR_HELP = "Where local mirrors of SWE-bench repositories live (owner__name or owner/name)."


def _run_pipeline(**params: Any) -> dict[str, Any]:
    """Run the code flow with a progress bar per stage; returns its summary."""
    from flows.runtime import prepare_prefect, task_runner
    from tasksynth.cli.progress import step_progress

    config = params.pop("config", None) or app_state.config()
    config.home_path.mkdir(parents=True, exist_ok=True)
    with lifecycle.importing():
        prepare_prefect(config)
        from flows.code import code_pipeline

    if params.get("build") or params.get("validate"):
        from tasksynth.docker.engine import require_engine

        require_engine()  # one clear line before any flow starts
    with step_progress():
        summary = code_pipeline.with_options(task_runner=task_runner(config))(config=config, **params)
    reaped = summary.get("reaped", {})
    if reaped.get("containers") or reaped.get("folders"):
        typer.echo(f"removed {reaped['containers']} container(s) and {reaped['folders']} folder(s) left by a "
                   "killed run of this home", err=True)
    return summary


def _with_scope(all_tests: bool):
    config = app_state.config()
    if all_tests:
        config = dataclasses.replace(config, code=dataclasses.replace(config.code, test_scope="all"))
    return config


def _report_errors(summary: dict[str, Any]) -> int:
    errors = [e for stage in ("mine", "build", "validate") for e in summary.get(stage, {}).get("errors", [])]
    for error in errors:
        typer.secho(f"not done (a rerun retries it): {error}", fg="yellow", err=True)
    return len(errors)


@app.command("mine")
def mine(
    git: list[str] = typer.Option(None, "--git", help=GIT_HELP),
    swebench: list[Path] = typer.Option(None, "--swebench", help=SWEBENCH_HELP, dir_okay=False),
    repos_dir: Path = typer.Option(None, "--repos-dir", help=REPOS_DIR_HELP, file_okay=False),
    clone: bool = typer.Option(True, "--clone/--no-clone", help="Clone a repository that has no local mirror."),
    # GitHub issue->PR mining (tasksynth/cli/github_mining.py)
    github: list[str] = typer.Option(None, "--github", metavar="OWNER/NAME", help=gh_cli.GITHUB_HELP),
    github_list: Path = typer.Option(None, "--github-list", dir_okay=False, help=gh_cli.GITHUB_LIST_HELP),
    since: str = typer.Option(None, "--since", metavar="DATE", help=gh_cli.SINCE_HELP),
    limit: int = typer.Option(None, "--limit", min=1, help=gh_cli.LIMIT_HELP),
) -> None:
    """Find candidates: (repository, base commit, gold patch, test patch, problem statement).

    Mining is idempotent: the same history or file mined twice adds nothing. Every change that is not kept is
    stored in `discards` with its reason (docs_only, no_test_changes, too_large, ...).

    Example: tasksynth code mine --git ../myrepo --swebench data/samples/minicalc.swebench.jsonl --repos-dir ~/mirrors
    """
    if github or github_list:  # GitHub: its own flow (flows/github.py), then the other sources if any
        gh_cli.mine_github_command(app_state.config(), github, github_list, since=since, limit=limit)
        if not git and not swebench:
            return
    if not git and not swebench:
        raise TasksynthError("name at least one source: --git PATH_OR_URL, --swebench FILE.jsonl, "
                             "--github OWNER/NAME or --github-list FILE")
    summary = _run_pipeline(git=list(git or []), swebench=[str(s) for s in swebench or []],
                            repos_dir=str(repos_dir) if repos_dir else None, clone=clone, build=False, validate=False)
    mined = summary.get("mine", {})
    typer.echo(f"sources: {mined.get('ran', 0)} mined, {mined.get('already_done', 0)} unchanged since the last run")
    typer.echo(f"new candidates: {mined.get('new_candidates', 0)}; new discards: {mined.get('new_discards', 0)}")
    _print_discards(summary["run_id"])
    if _report_errors(summary):
        raise typer.Exit(1)


@app.command("build")
def build(
    instance_ids: list[str] = typer.Argument(None, help="Instance ids to build (default: every candidate not yet "
                                                        "built)."),
    repeat: int = typer.Option(None, "--repeat", "-r", min=1, help="Runs per phase (default: code.repeat)."),
    all_tests: bool = typer.Option(False, "--all-tests", help="Run the whole test suite, not only the tests the "
                                                             "patches touch."),
) -> None:
    """Build each candidate's images and validate it: tests with the test patch only, then with the gold patch.

    A candidate is valid when some test fails before and passes after (F2P > 0) and none goes the other way
    (P2F = 0). Imported SWE-bench instances also report agreement with their FAIL_TO_PASS/PASS_TO_PASS."""
    summary = _run_pipeline(config=_with_scope(all_tests), instance_ids=list(instance_ids or []) or None,
                            repeat=repeat, build=True, validate=True)
    ids = list(instance_ids or []) or None
    _print_tasks(ids)
    _print_funnel(summary)
    if _report_errors(summary):
        raise typer.Exit(1)


@app.command("validate")
def validate(
    instance_ids: list[str] = typer.Argument(None, help="Instance ids to validate again."),
    repeat: int = typer.Option(None, "--repeat", "-r", min=1, help="Runs per phase (default: code.repeat)."),
    every: bool = typer.Option(False, "--all", help="Validate every stored candidate again."),
) -> None:
    """Run validation again for stored environments and report every verdict that changed.

    Each call records new runs (the old ones stay). An instance image removed since is rebuilt first."""
    if not instance_ids and not every:
        raise TasksynthError("give instance ids, or --all for every stored candidate")
    summary = _run_pipeline(instance_ids=list(instance_ids or []) or None, repeat=repeat, build=False,
                            validate=True, revalidate=True)
    validated = summary.get("validate", {})
    changed = validated.get("changed", [])
    typer.echo(f"validated {validated.get('ran', 0)} candidate(s); {len(changed)} verdict(s) changed")
    for change in changed:
        typer.echo(f"  {change['instance_id']}: {change['before']} -> {change['after']}")
    _print_tasks(list(instance_ids or []) or None)
    if _report_errors(summary):
        raise typer.Exit(1)


@app.command("list")
def list_tasks(
    verdict: str = typer.Option(None, "--verdict", help="Only this verdict (valid, rejected) or reason."),
    repo: str = typer.Option(None, "--repo", help="Only this repository."),
) -> None:
    """List candidates with their verdicts (candidates not yet validated show as pending)."""
    _print_tasks(None, verdict=verdict, repo=repo)


@app.command("show")
def show(instance_id: str = typer.Argument(..., help="The instance id.")) -> None:
    """Everything stored about one candidate: source, recipe, images, verdict, test lists and runs."""
    with _read_store() as store:
        candidate = store.query("SELECT * FROM candidates WHERE instance_id = ?", [instance_id])
        if not candidate:
            raise TasksynthError(f"no candidate with instance id {instance_id}")
        c = candidate[0]
        instance = store.query("SELECT * FROM code_instances WHERE instance_id = ?", [instance_id])
        task = store.query("SELECT * FROM code_tasks WHERE instance_id = ?", [instance_id])
        env = store.query("SELECT * FROM environments WHERE env_id = ?", [instance[0]["env_id"]]) \
            if instance and instance[0]["env_id"] else []
        runs = store.query("SELECT phase, attempt, status, exit_code, round(seconds, 2) AS seconds, validation_id "
                           "FROM test_runs WHERE instance_id = ? ORDER BY started_at, phase DESC, attempt",
                           [instance_id])
    console.rule(f"{instance_id}")
    typer.echo(f"repo: {c['repo']} ({c['source']}: {c['source_ref']})\nbase commit: {c['base_commit']}")
    typer.echo(f"problem statement:\n  " + "\n  ".join(c["problem_statement"].splitlines()[:12]))
    if env:
        recipe = env[0]["recipe"]
        typer.echo(f"environment: {env[0]['image']} ({env[0]['status']}, recipe from {env[0]['recipe_origin']}, "
                   f"Python {env[0]['python_version']})")
        for step in recipe.get("env_steps", []):
            typer.echo(f"  $ {step}")
    if instance:
        i = instance[0]
        typer.echo(f"instance: {i['image'] or '-'} ({i['status']}{', ' + i['reason'] if i['reason'] else ''})")
        typer.echo(f"test command: {i['test_command']}")
    if task:
        t = task[0]
        typer.echo(f"verdict: {t['verdict']}{' (' + t['reason'] + ')' if t['reason'] else ''}: {t['detail']}")
        for name in ("fail_to_pass", "pass_to_fail", "pass_to_pass", "flaky"):
            typer.echo(f"{name.upper()} ({len(t[name])}): " + ", ".join(t[name]))
        if t["agreement"]:
            typer.echo(f"agreement with the imported lists: {t['agreement']} (imported FAIL_TO_PASS: "
                       f"{c['imported_fail_to_pass']})")
    else:
        typer.echo("verdict: pending (run `tasksynth code build`)")
    if runs:
        table = Table("validation", "phase", "run", "status", "exit", "seconds")
        for run in runs:
            table.add_row(run["validation_id"][:8], run["phase"], str(run["attempt"] + 1), run["status"],
                          str(run["exit_code"]), str(run["seconds"]))
        console.print(table)


@app.command("sample")
def sample(dest: Path = typer.Option(None, "--dest", help="Repositories directory (default: <home>/repos/samples).",
                                     file_okay=False)) -> None:
    """Build the shipped sample repository (data/samples/minicalc.toml) as a real git repository with stable
    SHAs, and print the commands that mine, build and validate it."""
    from envbuilder.samples import build_sample, swebench_sample_path

    config = app_state.config()
    repos_dir = dest or config.home_path / "repos" / "samples"
    built = build_sample("minicalc", repos_dir)
    typer.echo(f"built {built.repo} at {built.path} ({len(built.shas)} commits, HEAD {built.head[:12]})")
    typer.echo(f"next: tasksynth code mine --git {built.path} --swebench {swebench_sample_path()} "
               f"--repos-dir {repos_dir}")
    typer.echo("      tasksynth code build")


@app.command("export-swebench")
def export_swebench(
    out: Path = typer.Argument(..., help="The .jsonl file to write.", dir_okay=False),
    valid_only: bool = typer.Option(False, "--valid-only", help="Only candidates whose verdict is valid."),
) -> None:
    """Write candidates in SWE-bench's format, with our FAIL_TO_PASS / PASS_TO_PASS where validated."""
    from envbuilder.records import candidates
    from envbuilder.sources.swebench import to_swebench

    with _read_store() as store:
        tasks = {t["instance_id"]: t for t in store.query("SELECT * FROM code_tasks")}
        rows = [to_swebench(c, tasks.get(c["instance_id"])) for c in candidates(store)
                if not valid_only or tasks.get(c["instance_id"], {}).get("verdict") == "valid"]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    typer.echo(f"wrote {len(rows)} instance(s) to {out}")


# ------------------------------------------------------------------------------------------------ printing


def _read_store():
    from tasksynth.store import open_store

    config = app_state.config()
    return open_store(config, read_only=config.store_path.exists())


def _print_tasks(instance_ids: list[str] | None, *, verdict: str | None = None, repo: str | None = None) -> None:
    sql = ("SELECT c.instance_id, c.repo, c.source, t.verdict, t.reason, len(t.fail_to_pass) AS f2p, "
           "len(t.pass_to_fail) AS p2f, len(t.pass_to_pass) AS p2p, len(t.flaky) AS flaky, t.agreement, "
           "i.status AS build FROM candidates c LEFT JOIN code_tasks t USING (instance_id) "
           "LEFT JOIN code_instances i USING (instance_id) WHERE true")
    params: list[Any] = []
    if instance_ids:
        sql += f" AND c.instance_id IN ({', '.join('?' for _ in instance_ids)})"
        params += instance_ids
    if repo:
        sql += " AND c.repo = ?"
        params.append(repo)
    if verdict:
        sql += " AND (t.verdict = ? OR t.reason = ?)"
        params += [verdict, verdict]
    with _read_store() as store:
        rows = store.query(sql + " ORDER BY c.repo, c.created_at NULLS LAST, c.instance_id", params or None)
    if not rows:
        typer.echo("no candidates (run `tasksynth code mine`)")
        return
    table = Table("instance", "source", "verdict", "reason", "F2P", "P2F", "P2P", "flaky", "agreement")
    for row in rows:
        shown = row["verdict"] or ("pending" if row["build"] != "failed" else "rejected")
        style = {"valid": "green", "rejected": "red"}.get(shown, "yellow")
        table.add_row(row["instance_id"], row["source"], f"[{style}]{shown}[/]", row["reason"] or "",
                      *(str(row[k]) if row[k] is not None else "" for k in ("f2p", "p2f", "p2p", "flaky")),
                      row["agreement"] or "")
    console.print(table)
    valid = sum(r["verdict"] == "valid" for r in rows)
    typer.echo(f"{valid} valid of {len(rows)} candidate(s)")


def _print_discards(run_id: str) -> None:
    with _read_store() as store:
        rows = store.query("SELECT reason, count(*) AS n FROM discards WHERE stage = 'mine' AND run_id = ? "
                           "GROUP BY reason ORDER BY n DESC", [run_id])
    for row in rows:
        typer.echo(f"  discarded {row['n']}: {row['reason']}")


def _print_funnel(summary: dict[str, Any]) -> None:
    built = summary.get("build", {})
    validated = summary.get("validate", {})
    typer.echo(f"built {built.get('ran', 0)} (already built {built.get('already_done', 0)}); validated "
               f"{validated.get('ran', 0)} (already validated {validated.get('already_done', 0)})")
    agreement = summary.get("verdicts", {}).get("agreement")
    if agreement:
        typer.echo("agreement with imported FAIL_TO_PASS/PASS_TO_PASS: "
                   + ", ".join(f"{k} {v}" for k, v in sorted(agreement.items())))
