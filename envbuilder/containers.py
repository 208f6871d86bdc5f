"""Running the tests of one validation in one throwaway container of an instance image.

    docker run --network none --cpus C --memory M --memory-swap M --pids-limit P --user 1000:1000
               -v <tmp>:/io --name tasksynth-run-<id> <instance image> bash /io/validate.sh

One container serves every run of a validation (R runs with the test patch, then R with the test patch and the
gold patch): starting a container and the interpreter is most of a small project's run time, and the same for
every candidate. The runs stay independent: the script keeps a copy of the checkout and `$HOME` as the image
left them, and before each run after the first it puts them back and empties `/tmp` (what a run wrote there is
gone, and what it left running was killed with its process group; the venv is the image's and is not reset),
then applies that run's patches afresh. Each run leaves
its own folder `/io/runs/<phase>-<attempt>/` with its exit code, JUnit report, capped log, timing and the
kernel's OOM-kill count around it, so a failure is attributed to the run that had it.

Limits per run: the test command runs under `timeout` (the configured wall-clock limit, then SIGKILL 10 s later)
and anything it left running is killed with its process group. The container as a whole has the sum of the
runs' limits plus slack; past it, it is killed by name (`docker kill`) and the run in progress counts as timed
out. The first run that cannot be graded (its patch does not apply, a timeout, the OOM killer, the runner
crashed or left no report) ends the validation: repeating it would only spend the time again. The container is
kept until `docker inspect` has said whether the OOM killer struck, then removed. At most
`docker.max_containers` containers (builds included) run at once in this process.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from envbuilder.errors import CodeEnvError, DiskFull
from tasksynth.config import Config
from tasksynth.docker.engine import docker
from tasksynth.docker.ownership import label_args, owner_labels
from tasksynth.docker.reaping import claim_folder
from verifiers.grading import OK, OOM, PATCH_DOES_NOT_APPLY, TESTS_CRASHED, TIMEOUT
from verifiers.junit import TestOutcome

_slots: dict[int, threading.BoundedSemaphore] = {}
_slots_guard = threading.Lock()
RUN_USER = "1000:1000"
KILL_GRACE_S = 10  # SIGTERM at the limit, SIGKILL this much later
RUN_SLACK_S = 20  # per run, for resetting the checkout and applying patches
CONTAINER_SLACK_S = 60  # per container, for starting it and copying the checkout once
SETUP_FAILED, RESET_FAILED = 96, 95

ReadReport = Callable[[int | None, str | None], tuple[str, str, dict[str, TestOutcome]]]


class ContainerFailed(CodeEnvError):
    """Docker could not start a run's container (not the tests' fault): the candidate is retried later."""


@contextlib.contextmanager
def container_slot(config: Config) -> Iterator[None]:
    with _slots_guard:
        slot = _slots.setdefault(config.docker.max_containers, threading.BoundedSemaphore(config.docker.max_containers))
    with slot:
        yield


@dataclass(frozen=True)
class PhasePlan:
    """A phase of a validation: its name and the patches (names in `patches` of `run_validation`) applied, in
    order, to the checkout before each of its runs."""

    phase: str
    patches: tuple[str, ...]


@dataclass
class PhaseRun:
    phase: str  # before | after
    attempt: int
    status: str  # ok | patch_does_not_apply | timeout | oom | tests_crashed | junit_missing | junit_malformed
    exit_code: int | None
    seconds: float
    detail: str = ""
    junit: str | None = None
    log: str = ""
    tests: dict[str, TestOutcome] = field(default_factory=dict)


@dataclass
class ContainerReport:
    """What one validation's container did: its runs (those that ran, cut after the first that cannot be
    graded) and the container's own figures."""

    runs: list[PhaseRun]
    seconds: float


VALIDATE_SCRIPT = r"""#!/bin/bash
# One validation: each line of /io/plan is a run (phase, attempt, patches). Every run starts from the checkout,
# $HOME and /tmp as the image left them, and leaves its results in /io/runs/<phase>-<attempt>/.
set -u
LIMIT=%(limit)d
KILL_AFTER=%(kill_after)d
OK_CODES=" %(ok_codes)s "
STATE=/tmp/tasksynth-pristine
KEEP=(/testbed)  # the folders put back before each run ($HOME too, when it is the run user's own)
HOME_DIR=
if [ -n "${HOME:-}" ] && [ "$HOME" != / ] && [ -O "$HOME" ]; then HOME_DIR=$HOME; KEEP+=("$HOME"); fi
now() { date +%%s%%N; }
oom_kills() {  # the kernel's count of OOM kills in this container's memory cgroup (v2, then v1); -1: unknown
  local file key value
  for file in /sys/fs/cgroup/memory.events /sys/fs/cgroup/memory/memory.oom_control; do
    [ -r "$file" ] || continue
    while read -r key value; do
      if [ "$key" = oom_kill ]; then echo "$value"; return; fi
    done <"$file"
  done
  echo -1
}
reset() {  # put the checkout, $HOME and /tmp back as they were before the first run
  chmod -R u+rwX "${KEEP[@]}" 2>/dev/null
  find /tmp -mindepth 1 -maxdepth 1 ! -name tasksynth-pristine -exec chmod -R u+rwX {} + 2>/dev/null
  find "${KEEP[@]}" -mindepth 1 -delete 2>/dev/null
  find /tmp -mindepth 1 -maxdepth 1 ! -name tasksynth-pristine -exec rm -rf {} + 2>/dev/null
  if [ -n "$(find "${KEEP[@]}" -mindepth 1 -print -quit)" ]; then
    echo "files a run left in ${KEEP[*]} could not be removed"; return 1
  fi
  cp -a "$STATE/testbed/." /testbed/ || return 1
  if [ -n "$HOME_DIR" ]; then cp -a "$STATE/home/." "$HOME_DIR/"; fi
}
apply() {  # apply /io/patches/$1 to /testbed, its log in $2
  if git apply --verbose "/io/patches/$1" >"$2/$1.log" 2>&1; then return 0; fi
  patch --batch --forward -p1 -i "/io/patches/$1" >>"$2/$1.log" 2>&1
}
if ! { mkdir -p "$STATE" && cp -a /testbed "$STATE/testbed" &&
       { [ -z "$HOME_DIR" ] || cp -a "$HOME_DIR" "$STATE/home"; }; } >/io/setup.log 2>&1; then
  cat /io/setup.log
  exit %(setup_failed)d
fi
first=1
while read -r phase attempt patches <&3; do
  run="/io/runs/$phase-$attempt"
  now >"$run/started"
  if [ "$first" = 0 ] && ! reset >"$run/reset.log" 2>&1; then
    cat "$run/reset.log"; echo reset >"$run/reset_failed"; exit %(reset_failed)d
  fi
  first=0
  cd /testbed || exit %(reset_failed)d
  for name in $patches; do
    if ! apply "$name" "$run"; then
      echo "$name" >"$run/apply_failed"
      echo $(( ($(now) - $(cat "$run/started")) / 1000000 )) >"$run/millis"
      exit 97
    fi
  done
  rm -f %(report)s
  ooms=$(oom_kills)
  tests_started=$(now)
  TASKSYNTH_PHASE="$phase" TASKSYNTH_ATTEMPT="$attempt" \
    timeout --kill-after="$KILL_AFTER" "$LIMIT" bash /io/command.sh </dev/null >"$run/output.log" 2>&1 &
  group=$!
  wait "$group"
  code=$?
  kill -KILL -- "-$group" 2>/dev/null  # whatever the tests left running
  ended=$(now)
  [ -f %(report)s ] && mv %(report)s "$run/junit.xml"
  echo $(( (ended - $(cat "$run/started")) / 1000000 )) >"$run/millis"
  ooms_after=$(oom_kills)
  if [ "$ooms" -ge 0 ] && [ "$ooms_after" -gt "$ooms" ]; then echo $(( ooms_after - ooms )) >"$run/oom_kills"; fi
  echo "$code" >"$run/exit_code"
  tests_millis=$(( (ended - tests_started) / 1000000 ))
  if { [ "$code" = 124 ] || [ "$code" = 137 ]; } && [ "$tests_millis" -ge $(( LIMIT * 1000 )) ]; then
    echo "$LIMIT" >"$run/timed_out"; exit 124
  fi
  [ -f "$run/oom_kills" ] && exit 137
  case "$OK_CODES" in *" $code "*) ;; *) exit "$code" ;; esac
  [ -s "$run/junit.xml" ] || exit 98
done 3</io/plan
exit 0
"""


def run_validation(config: Config, image: str, *, phases: Sequence[PhasePlan], repeat: int,
                   patches: Mapping[str, str], command: str, ok_exit_codes: Sequence[int], read_report: ReadReport,
                   report_path: str, max_log_bytes: int) -> ContainerReport:
    """Every run of `phases` (`repeat` each, in order) in one container; `read_report(exit_code, report)` is the
    runner's reading of what the tests of one run left, `ok_exit_codes` the exit codes after which it may be
    gradable (any other ends the validation)."""
    plan = [(p.phase, attempt, p.patches) for p in phases for attempt in range(repeat)]
    limit = config.docker.test_timeout_s
    outer = len(plan) * (limit + KILL_GRACE_S + RUN_SLACK_S) + CONTAINER_SLACK_S
    name = f"tasksynth-run-{uuid.uuid4().hex[:12]}"
    with tempfile.TemporaryDirectory(prefix="tasksynth-run-", dir=scratch_dir(config)) as tmp:
        io = Path(tmp)
        try:
            claim_folder(io)  # a killed run's folder is reaped by the next run of this home
            (io / "patches").mkdir()
            for patch_name, text in patches.items():
                (io / "patches" / patch_name).write_text(text)
            for phase, attempt, _ in plan:
                (io / "runs" / f"{phase}-{attempt}").mkdir(parents=True)
            (io / "plan").write_text("".join(f"{phase} {attempt} {' '.join(names)}\n"
                                             for phase, attempt, names in plan))
            (io / "command.sh").write_text(command + "\n")
            (io / "validate.sh").write_text(VALIDATE_SCRIPT % {
                "limit": limit, "kill_after": KILL_GRACE_S, "ok_codes": " ".join(str(c) for c in ok_exit_codes),
                "setup_failed": SETUP_FAILED, "reset_failed": RESET_FAILED, "report": report_path})
        except OSError as exc:
            if exc.errno == 28:
                raise DiskFull(f"no space left for a run's files: {exc}") from None
            raise
        for path in [io, *io.rglob("*")]:
            if path.is_dir():
                os.chmod(path, 0o777)
        args = ["run", "--name", name, *label_args(owner_labels(config.home_path, "validation")),
                "--network", "none", "--cpus", str(config.docker.cpus),
                "--memory", config.docker.memory, "--memory-swap", config.docker.memory,
                "--pids-limit", str(config.docker.pids_limit), "--user", RUN_USER,
                "-v", f"{io}:/io", image, "bash", "/io/validate.sh"]
        started = time.monotonic()
        timed_out = False
        with container_slot(config):
            try:
                result = docker(*args, check=False, timeout=outer)
                output, docker_code = (result.stdout or "") + (result.stderr or ""), result.returncode
            except subprocess.TimeoutExpired as exc:
                timed_out = True
                docker("kill", name, check=False, timeout=60)
                output, docker_code = _text(exc.stdout) + _text(exc.stderr), None
            seconds = time.monotonic() - started
            state = _inspect(name)
            docker("rm", "-f", name, check=False, timeout=120)
        if state is None and not timed_out and docker_code in (125, 126, 127):
            raise ContainerFailed(f"docker could not run {image}: {output.strip().splitlines()[-1:]}")
        if docker_code == SETUP_FAILED:
            if "No space left" in output:
                raise DiskFull(f"no space left to copy the checkout in {image}: {_last_lines(output, 2)}")
            raise ContainerFailed(f"the checkout of {image} could not be copied: {_last_lines(output, 2)}")
        runs: list[PhaseRun] = []
        for phase, attempt, _ in plan:
            run = _read_run(io / "runs" / f"{phase}-{attempt}", phase, attempt, config=config, state=state,
                            container_timed_out=timed_out, outer=outer, read_report=read_report,
                            max_log_bytes=max_log_bytes)
            if run is None:
                break
            runs.append(run)
            if run.status != OK:
                break
        if output.strip() and runs and runs[-1].status != OK:
            runs[-1].log = cap_log(runs[-1].log + "\n[container]\n" + output, max_log_bytes)
        if not runs:
            raise ContainerFailed(f"no run started in {image} (container exit {docker_code}): "
                                  f"{_last_lines(output, 3)}")
        return ContainerReport(runs, seconds)


def _read_run(run: Path, phase: str, attempt: int, *, config: Config, state: dict | None,
              container_timed_out: bool, outer: int, read_report: ReadReport, max_log_bytes: int) -> PhaseRun | None:
    """One run's result from its folder; None when it never started."""
    started_ns = _read(run / "started")
    if started_ns is None:
        return None
    millis = _read(run / "millis")
    seconds = int(millis) / 1000 if millis and millis.isdigit() else _since(started_ns)
    log = _read_capped(run / "output.log", max_log_bytes)
    code_text = _read(run / "exit_code")
    exit_code = int(code_text) if code_text and code_text.lstrip("-").isdigit() else None
    if _read(run / "reset_failed") is not None:
        return PhaseRun(phase, attempt, TESTS_CRASHED, None, seconds, "the checkout could not be reset for this run: "
                        f"{_last_lines(_read(run / 'reset.log') or '', 2)}", log=log)
    failed_patch = _read(run / "apply_failed")
    if failed_patch:
        which = "the test patch" if failed_patch.startswith("test") else "the gold patch"
        apply_log = _read(run / f"{failed_patch}.log") or ""
        return PhaseRun(phase, attempt, PATCH_DOES_NOT_APPLY, None, seconds,
                        f"{which} does not apply: {_last_lines(apply_log, 3)}", log=cap_log(apply_log, max_log_bytes))
    limit = config.docker.test_timeout_s
    if _read(run / "timed_out") is not None:
        return PhaseRun(phase, attempt, TIMEOUT, None, seconds,
                        f"the tests ran longer than {limit}s and were killed", log=log)
    if exit_code is None:  # the container ended during this run
        if container_timed_out:
            return PhaseRun(phase, attempt, TIMEOUT, None, seconds,
                            f"the container ran longer than {outer}s (the limit of all its runs) and was killed",
                            log=log)
        if state and state["oom"]:
            return PhaseRun(phase, attempt, OOM, None, seconds,
                            f"the run was killed by the OOM killer (memory limit {config.docker.memory})", log=log)
        return PhaseRun(phase, attempt, TESTS_CRASHED, None, seconds,
                        f"the run ended without an exit code (container exit {state and state['exit']})", log=log)
    if _read(run / "oom_kills") is not None or exit_code == 137:
        return PhaseRun(phase, attempt, OOM, exit_code, seconds,
                        f"the tests were killed by the OOM killer (memory limit {config.docker.memory})", log=log)
    status, detail, tests = read_report(exit_code, _read(run / "junit.xml", strip=False))
    return PhaseRun(phase, attempt, status, exit_code, seconds, detail, _read(run / "junit.xml", strip=False), log,
                    tests)


def _inspect(name: str) -> dict | None:
    result = docker("inspect", "--format", "{{.State.OOMKilled}} {{.State.ExitCode}}", name, check=False, timeout=60)
    if result.returncode != 0:
        return None
    oom, _, code = result.stdout.strip().partition(" ")
    return {"oom": oom == "true", "exit": int(code) if code.lstrip("-").isdigit() else None}


def cap_log(text: str, limit: int) -> str:
    """Keep the head and the tail of a long log (the tail matters most), with a marker where it was cut."""
    data = text.encode(errors="replace")
    if len(data) <= limit:
        return text
    head, tail = data[: limit // 4], data[-(limit - limit // 4):]
    cut = len(data) - len(head) - len(tail)
    return (head.decode(errors="replace") + f"\n[... {cut} bytes cut ...]\n" + tail.decode(errors="replace"))


def _read_capped(path: Path, limit: int) -> str:
    """A log file capped as `cap_log` caps it, reading only the head and the tail of a long one."""
    try:
        with path.open("rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            if size <= limit:
                return handle.read().decode(errors="replace")
            head = handle.read(limit // 4)
            handle.seek(size - (limit - limit // 4))
            tail = handle.read()
    except OSError:
        return ""
    cut = size - len(head) - len(tail)
    return head.decode(errors="replace") + f"\n[... {cut} bytes cut ...]\n" + tail.decode(errors="replace")


def _since(started_ns: str) -> float:
    return max(0.0, time.time() - int(started_ns) / 1e9) if started_ns.isdigit() else 0.0


def _read(path: Path, *, strip: bool = True) -> str | None:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return None
    return text.strip() if strip else text


def _last_lines(text: str, count: int) -> str:
    return " | ".join(line.strip() for line in text.strip().splitlines()[-count:])


def _text(value) -> str:
    if value is None:
        return ""
    return value.decode(errors="replace") if isinstance(value, bytes) else value


def scratch_dir(config: Config) -> str | None:
    """Temporary build contexts and run folders live in the home (not /tmp), beside the store they feed;
    None falls back to the system's temporary directory."""
    path = config.home_path / "tmp"
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    return str(path)
