"""CLI latency: a flow command with nothing to do, against the home's long-lived Prefect server and against
Prefect's ephemeral mode, with `tasksynth sql` (no Prefect) as the floor; all in one run.

    .venv/bin/python bench/cli_latency.py [--runs 5]

A fresh home mines a 2-commit git repository once; then each timed command is `tasksynth code mine --git
<repo>` again (nothing new: the source is unchanged) or `tasksynth sql "select 1"`, run as a user runs it
(the console script, a new process each time), `--runs` times each; the figure is the median wall time.
  ephemeral  flows.prefect_server = "ephemeral": Prefect starts a temporary server in every command (before)
  home       the home's server, started by the first command (not timed) and reused by every later one (after)
Target: a flow command with nothing to do in <= 3 s with the home server. Run it on an idle machine.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET_S = 3.0


def _git_repo(path: Path) -> Path:
    git = ["git", "-C", str(path), "-c", "user.email=bench@example.com", "-c", "user.name=bench"]
    path.mkdir(parents=True)
    subprocess.run(["git", "init", "-q", str(path)], check=True)
    (path / "tests").mkdir()
    for version in (1, 2):
        (path / "calc.py").write_text(f"def add(a, b):\n    return a + b + {version - 1}\n")
        (path / "tests" / "test_calc.py").write_text(f"from calc import add\n\ndef test_add():\n"
                                                     f"    assert add(1, 1) == {version + 1}\n")
        subprocess.run([*git, "add", "."], check=True)
        subprocess.run([*git, "commit", "-qm", f"version {version}"], check=True)
    return path


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _timed(args: list[str], env: dict[str, str], cwd: Path,
           failures: list[str] | None = None) -> tuple[float, float] | None:
    """Wall and CPU (user + system) seconds of one command; a failure ends the bench, or is counted in
    `failures` when given (the ephemeral mode fails on a busy machine: that is one of the things measured)."""
    started, cpu_before = time.perf_counter(), _children_cpu()
    result = subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True)
    seconds, cpu = time.perf_counter() - started, _children_cpu() - cpu_before
    if result.returncode != 0:
        if failures is None:
            raise SystemExit(f"{' '.join(args)} failed: {result.stderr.strip()[-500:]}")
        failures.append(result.stderr.strip().splitlines()[0][:160] if result.stderr.strip() else "failed")
        return None
    return seconds, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    exe = shutil.which("tasksynth", path=str(Path(sys.executable).parent)) or "tasksynth"
    work = Path(tempfile.mkdtemp(prefix="tasksynth-bench-cli-"))
    home = work / "home"
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("PREFECT_", "TASKSYNTH_"))}  # the bench's own home and Prefect, nothing else
    env.update(TASKSYNTH_HOME=str(home), PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT),
                                                                                  os.environ.get("PYTHONPATH")])))
    repo = _git_repo(work / "repo")
    mine = [exe, "code", "mine", "--git", str(repo)]
    sql = [exe, "sql", "select 1"]
    try:
        ephemeral = {**env, "TASKSYNTH_FLOWS__PREFECT_SERVER": "ephemeral"}
        first_home = _timed(mine, env, work)[0]  # starts the home server and mines; later runs have nothing to do
        runs: dict[str, list[tuple[float, float]]] = {"sql": [], "ephemeral": [], "home": []}
        ephemeral_failures: list[str] = []
        for _ in range(args.runs):  # interleaved, so a change in the machine's load hits every mode alike
            runs["sql"].append(_timed(sql, env, work))
            measured = _timed(mine, ephemeral, work, ephemeral_failures)
            if measured is not None:
                runs["ephemeral"].append(measured)
            runs["home"].append(_timed(mine, env, work))
    finally:
        subprocess.run([exe, "flows", "server", "stop"], env=env, cwd=work, capture_output=True)
        shutil.rmtree(work, ignore_errors=True)
    times = {mode: [wall for wall, _ in values] for mode, values in runs.items()}
    median = {mode: statistics.median(values) if values else float("nan") for mode, values in times.items()}
    cpu = {mode: statistics.median([c for _, c in values]) if values else float("nan")
           for mode, values in runs.items()}
    print(f"load average at the end: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores (run on an idle machine)")
    print(f"median of {args.runs} runs, seconds (all runs: "
          + "; ".join(f"{mode} " + " ".join(f"{v:.2f}" for v in values) for mode, values in times.items()) + ")")
    print(f"  tasksynth sql 'select 1'                     {median['sql']:6.2f}")
    print(f"  code mine, nothing to do, ephemeral (before) {median['ephemeral']:6.2f}"
          + (f"   ({len(ephemeral_failures)} of {args.runs} failed: {ephemeral_failures[0]})"
             if ephemeral_failures else ""))
    print(f"  code mine, nothing to do, home server (after) {median['home']:5.2f}   "
          f"(the first command, which starts the server and mines: {first_home:.2f})")
    print(f"CPU seconds (user + system, median; less sensitive to a busy machine than wall time): sql "
          f"{cpu['sql']:.2f}, ephemeral {cpu['ephemeral']:.2f}, home server {cpu['home']:.2f}")
    print(f"speed-up of the home server over the ephemeral mode: {median['ephemeral'] / median['home']:.1f}x; "
          f"target <= {TARGET_S:.0f} s: {'met' if median['home'] <= TARGET_S else 'NOT met'}")


if __name__ == "__main__":
    main()
