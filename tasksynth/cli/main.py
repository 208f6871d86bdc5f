"""The `tasksynth` command: one tool, grouped subcommands, one clear line on error."""

from __future__ import annotations

from tasksynth.cli import lifecycle

lifecycle.start()  # before any import registers an exit callback or allocates much: see lifecycle

import sys
from pathlib import Path

import typer

from tasksynth.cli import app_state
from tasksynth.cli.code import app as code_app
from tasksynth.cli.config_cmd import app as config_app
from tasksynth.cli.data_cmds import export_command, sql_command
from tasksynth.cli.doctor import demo_command, doctor_command
from tasksynth.cli.flows_cmd import app as flows_app
from tasksynth.cli.images import app as images_app
from tasksynth.cli.general import app as general_app
from tasksynth.cli.notebook import app as notebook_app
from tasksynth.cli.report import report_command
from tasksynth.cli.runner import app as runner_app
from tasksynth.cli.search import app as search_app
from tasksynth.errors import TasksynthError

lifecycle.imports_done()

app = typer.Typer(
    name="tasksynth",
    help="Manufacture verifiable agentic RL tasks: validated code environments, search QA and tool "
         "environments, stored in one DuckDB file and exported as Parquet shards.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


@app.callback()
def root(
    config: Path = typer.Option(None, "--config", "-c", help="Config file (default: ./tasksynth.toml if present).",
                                dir_okay=False),
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors."),
) -> None:
    app_state.configure(config_path=config, debug=debug)


app.add_typer(code_app, name="code")
app.add_typer(search_app, name="search")
app.add_typer(general_app, name="general")
app.add_typer(notebook_app, name="notebook")
app.add_typer(runner_app, name="runner")
app.add_typer(flows_app, name="flows")
app.add_typer(images_app, name="images")
app.add_typer(config_app, name="config")
app.command("export")(export_command)
app.command("sql")(sql_command)
app.command("doctor")(doctor_command)
app.command("demo")(demo_command)
app.command("report")(report_command)


def main() -> None:
    try:
        _dispatch()
    except SystemExit as exc:
        lifecycle.arm_exit(exc.code)
        raise


def _dispatch() -> None:
    try:
        code = app(standalone_mode=False)
        sys.exit(code if isinstance(code, int) else 0)
    except TasksynthError as exc:
        _fail(exc)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)
    except typer.Abort:
        typer.echo("aborted", err=True)
        sys.exit(1)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except Exception as exc:  # noqa: BLE001 - the one place where anything becomes one line
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        _fail(exc)


def _fail(exc: BaseException) -> None:
    if app_state.debug():
        raise exc
    kind = "" if isinstance(exc, TasksynthError) else f"{type(exc).__name__}: "
    typer.secho(f"error: {kind}{exc}", err=True, fg="red")
    if not isinstance(exc, TasksynthError):
        typer.echo("(run with --debug for the traceback)", err=True)
    sys.exit(1)


if __name__ == "__main__":
    main()
