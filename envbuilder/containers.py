"""Running the tests of one validation in one throwaway container of an instance image, under a supervisor
the tests cannot reach.

    docker create -i <tasksynth.sandbox isolation: no network, read-only root, capped tmpfs work folders,
                      memory/cpu/pids/ulimits, the supervisor as root with SUPERVISOR_CAPS only>
                  <instance image> sh -c <the system python3 -I -S running validation_supervisor.py>
    docker cp <container>:/testbed -    (and $HOME): the trees as the image left them, read before it starts
    docker start -a -i <container>      plan, patches and trees on stdin; one JSON line per run on stdout

One container serves every run of a validation (R runs with the test patch, R with the test patch and the gold
patch): starting a container and the interpreter is most of a small project's run time. The runs stay
independent and honest (`envbuilder.validation_supervisor` says how): before each run every process of the run
user is killed by uid, its writable places emptied and the trees restored from root's copies; the tests run as
the untrusted uid with no capabilities and `no-new-privileges`; they see no phase, no run number and no harness
file (the plan and the patches never leave stdin and root's memory), and the runs happen in a random order, so
nothing a run can count tells it its phase. Results leave on the supervisor's stdout, read by it as root after
the run's processes are all dead, the report opened without following a link and capped in bytes: the host
never reads a file the tests wrote, so a link in the results cannot make it copy one of its own files.

Limits per run: the configured wall-clock limit, then SIGTERM to all of the run user's processes and SIGKILL
`KILL_GRACE_S` later. The container as a whole has the sum of the runs' limits plus slack; past it, it is killed
by name (`docker kill`) and the run in progress counts as timed out. The first run that cannot be graded (its
patch does not apply, a timeout, the OOM killer, the runner crashed or left no report) ends the validation:
repeating it would only spend the time again. A limit the tests hit is that run's outcome; only a container that
docker could not create, fill or start, or that started no run, is `ContainerFailed` (retried later). The
container is kept until `docker inspect` has said whether the OOM killer struck, then removed. At most
`docker.max_containers` containers (builds included) run at once in this process.
"""

from __future__ import annotations

import contextlib
import json
import random
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from envbuilder.errors import CodeEnvError, DiskFull
from tasksynth.config import Config
from tasksynth.docker.engine import docker, engine_status
from tasksynth.docker.ownership import owner_labels
from tasksynth.errors import DockerUnavailable
from tasksynth.sandbox import UNTRUSTED_UID, Limits, drop_privileges_prefix, isolated_run_args
from verifiers.grading import OK, OOM, PATCH_DOES_NOT_APPLY, TESTS_CRASHED, TIMEOUT
from verifiers.junit import TestOutcome

_slots: dict[int, threading.BoundedSemaphore] = {}
_slots_guard = threading.Lock()
KILL_GRACE_S = 10  # SIGTERM at the limit, SIGKILL this much later
RUN_SLACK_S = 20  # per run, for resetting the checkout and applying patches
CONTAINER_SLACK_S = 60  # per container, for starting it and receiving the trees
MAX_REPORT_BYTES = 16 * 1024 * 1024  # a JUnit report larger than this is not read (the run has no report)
WORKDIR = "/testbed"
SCRATCH = ("/tmp", "/io", "/dev/shm", "/dev/mqueue")  # emptied before each run; /io holds the JUnit report
PRIVATE = "/run/supervisor"  # the supervisor's own tmpfs (root, mode 0700): the trees' archives, the logs
SYSTEM_PYTHON = ("/usr/bin/python3", "/usr/local/bin/python3")
# The supervisor starts on the system interpreter, never a `python3` found on the image's PATH: the venv comes
# first there, and the repository's install code could have replaced it.
LAUNCH = ('for python in %s; do if [ -x "$python" ]; then exec "$python" -I -S -c "$0"; fi; done; '
          'echo "no system python3 in the image (looked for %s)" >&2; exit 96'
          % (" ".join(SYSTEM_PYTHON), ", ".join(SYSTEM_PYTHON)))
SUPERVISOR_SOURCE = (Path(__file__).parent / "validation_supervisor.py").read_text()

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
    attempt: int  # its place among its own phase's runs, in the order they ran
    status: str  # ok | patch_does_not_apply | timeout | oom | tests_crashed | junit_missing | junit_malformed
    exit_code: int | None
    seconds: float
    detail: str = ""
    junit: str | None = None
    log: str = ""
    tests: dict[str, TestOutcome] = field(default_factory=dict)


@dataclass
class ContainerReport:
    """What one validation's container did: its runs (those that ran, in the order they ran, cut after the
    first that cannot be graded) and the container's own figures."""

    runs: list[PhaseRun]
    seconds: float


@dataclass(frozen=True)
class PlannedRun:
    phase: str
    attempt: int
    patches: tuple[str, ...]


def run_order(phases: Sequence[PhasePlan], repeat: int, rng: random.Random | None = None) -> list[PlannedRun]:
    """The `repeat` runs of every phase in a random order (a run's position says nothing about its phase), each
    numbered by its place among its own phase's runs."""
    slots = [phase for phase in phases for _ in range(repeat)]
    (rng or random.SystemRandom()).shuffle(slots)
    seen: dict[str, int] = {}
    order = []
    for phase in slots:
        order.append(PlannedRun(phase.phase, seen.get(phase.phase, 0), phase.patches))
        seen[phase.phase] = seen.get(phase.phase, 0) + 1
    return order


def run_validation(config: Config, image: str, *, phases: Sequence[PhasePlan], repeat: int,
                   patches: Mapping[str, str], command: str, ok_exit_codes: Sequence[int], read_report: ReadReport,
                   report_path: str, max_log_bytes: int) -> ContainerReport:
    """Every run of `phases` (`repeat` each, in a random order) in one container; `read_report(exit_code,
    report)` is the runner's reading of what the tests of one run left, `ok_exit_codes` the exit codes after
    which it may be gradable (any other ends the validation)."""
    plan = run_order(phases, repeat)
    names = list(patches)
    limit = config.docker.test_timeout_s
    outer = len(plan) * (limit + KILL_GRACE_S + RUN_SLACK_S) + CONTAINER_SLACK_S
    name = f"tasksynth-run-{uuid.uuid4().hex[:12]}"
    home = _image_home(image)
    trees = [WORKDIR] + ([home] if home and home not in ("/", WORKDIR) else [])
    owned = f"uid={UNTRUSTED_UID},gid={UNTRUSTED_UID},mode=0755"
    args = isolated_run_args(Limits.from_config(config, wall_s=float(outer)), name=name,
                             labels=owner_labels(config.home_path, "validation"),
                             tmpfs={**{tree: owned for tree in trees}, "/tmp": "", "/io": owned,
                                    PRIVATE: "mode=0700"},
                             supervisor=True, workdir=WORKDIR)
    header = {"runs": [[names.index(p) for p in run.patches] for run in plan],
              "patches": [patches[n] for n in names], "command": command, "limit": limit,
              "kill_after": KILL_GRACE_S, "ok_codes": sorted(ok_exit_codes), "report": report_path,
              "max_log_bytes": max_log_bytes, "max_report_bytes": MAX_REPORT_BYTES, "uid": UNTRUSTED_UID,
              "drop": drop_privileges_prefix(), "workdir": WORKDIR, "scratch": list(SCRATCH)}
    with tempfile.TemporaryDirectory(prefix="tasksynth-run-", dir=scratch_dir(config)) as tmp, \
            container_slot(config):
        started = time.monotonic()
        created = docker("create", "-i", *args, image, "/bin/sh", "-c", LAUNCH, SUPERVISOR_SOURCE, check=False,
                         timeout=120)
        if created.returncode != 0:
            raise ContainerFailed(f"docker could not create a container of {image}: "
                                  f"{_last_lines(created.stderr or '', 1)}")
        try:
            archives = _copy_trees(name, trees, Path(tmp))
            header["trees"] = [{"path": tree, "bytes": path.stat().st_size} for tree, path in archives]
            session = _attach(name, header, [path for _, path in archives], timeout=outer,
                              line_cap=2 * (MAX_REPORT_BYTES + 2 * max_log_bytes) + 65536, stderr_cap=max_log_bytes)
            seconds = time.monotonic() - started
            state = _inspect(name)
        finally:
            docker("rm", "-f", name, check=False, timeout=120)
    runs = _runs(session, plan, names, config=config, state=state, outer=outer, read_report=read_report,
                 max_log_bytes=max_log_bytes)
    if session.stderr.strip() and runs and runs[-1].status != OK:
        runs[-1].log = cap_log(runs[-1].log + "\n[container]\n" + session.stderr, max_log_bytes)
    return ContainerReport(runs, seconds)


def _image_home(image: str) -> str | None:
    result = docker("image", "inspect", "--format", "{{json .Config.Env}}", image, check=False, timeout=60)
    if result.returncode != 0:
        raise ContainerFailed(f"docker could not inspect {image}: {_last_lines(result.stderr or '', 1)}")
    for entry in json.loads(result.stdout or "null") or []:
        key, _, value = entry.partition("=")
        if key == "HOME":
            return value.rstrip("/") or "/"
    return None


def _copy_trees(name: str, trees: Sequence[str], folder: Path) -> list[tuple[str, Path]]:
    """Each tree of the created (not yet started) container as the image holds it, as a tar archive on the
    host (copied side by side): the container's tmpfs work folders start empty, and the supervisor fills them
    from these."""
    with ThreadPoolExecutor(max_workers=len(trees)) as pool:
        copied = list(pool.map(lambda numbered: _copy_tree(name, *numbered, folder), enumerate(trees)))
    return [(tree, path) for tree, path in zip(trees, copied) if path is not None]


def _copy_tree(name: str, number: int, tree: str, folder: Path) -> Path | None:
    path = folder / f"tree-{number}.tar"
    try:
        with path.open("wb") as handle:
            done = subprocess.run(["docker", "cp", f"{name}:{tree}", "-"], stdout=handle, stderr=subprocess.PIPE,
                                  timeout=600)
    except OSError as exc:
        if exc.errno == 28:
            raise DiskFull(f"no space left for a copy of {tree}: {exc}") from None
        raise
    if done.returncode != 0:
        message = done.stderr.decode(errors="replace")
        if tree != WORKDIR and "Could not find the file" in message:
            return None  # an image whose $HOME does not exist: nothing to restore there
        if "Cannot connect to the Docker daemon" in message:
            raise DockerUnavailable(f"the Docker engine stopped answering: {_last_lines(message, 1)}")
        if "No space left" in message:
            raise DiskFull(f"no space left for a copy of {tree}: {_last_lines(message, 1)}")
        raise ContainerFailed(f"docker could not copy {tree} out of the image: {_last_lines(message, 1)}")
    return path


@dataclass
class _Session:
    """What the supervisor said: its events in order, its stderr (capped), and how the container ended."""

    events: list[dict[str, Any]]
    stderr: str
    exit_code: int | None
    timed_out: bool


def _attach(name: str, header: dict[str, Any], archives: Sequence[Path], *, timeout: float, line_cap: int,
            stderr_cap: int) -> _Session:
    """Start the container attached: feed it the header and the trees on stdin, read its events from stdout
    (each line capped before it is parsed: a run's line holds at most its capped report and logs, JSON-escaped;
    a longer one is dropped and that run counts as one that ended without an exit code), keep the head of
    stderr, kill it past `timeout`."""
    process = subprocess.Popen(["docker", "start", "-a", "-i", name], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    timed_out = threading.Event()

    def kill() -> None:
        timed_out.set()
        docker("kill", name, check=False, timeout=60)

    stderr: list[bytes] = []
    threads = [threading.Thread(target=_feed, args=(process.stdin, header, archives), daemon=True),
               threading.Thread(target=_drain, args=(process.stderr, stderr_cap, stderr), daemon=True)]
    for thread in threads:
        thread.start()
    killer = threading.Timer(timeout, kill)
    killer.start()
    events = []
    try:
        while line := process.stdout.readline(line_cap + 1):
            if len(line) > line_cap and not line.endswith(b"\n"):
                while line and not line.endswith(b"\n"):  # longer than any line the supervisor writes
                    line = process.stdout.readline(65536)
                continue
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict):
                events.append(event)
        code = process.wait()
    finally:
        killer.cancel()
        if process.poll() is None:
            process.kill()
            process.wait()
    for thread in threads:
        thread.join(timeout=10)
    return _Session(events, b"".join(stderr).decode(errors="replace"), code, timed_out.is_set())


def _feed(stdin: IO[bytes], header: dict[str, Any], archives: Sequence[Path]) -> None:
    try:
        stdin.write(json.dumps(header).encode() + b"\n")
        for path in archives:
            with path.open("rb") as handle:
                while chunk := handle.read(1 << 20):
                    stdin.write(chunk)
        stdin.close()
    except (ValueError, OSError):
        pass  # the container ended first (a broken pipe): its output says why


def _drain(stream: IO[bytes], cap: int, into: list[bytes]) -> None:
    kept = 0
    while chunk := stream.read(65536):
        if kept < cap:
            into.append(chunk[: cap - kept])
            kept += len(into[-1])


def _runs(session: _Session, plan: Sequence[PlannedRun], names: Sequence[str], *, config: Config,
          state: dict | None, outer: int, read_report: ReadReport, max_log_bytes: int) -> list[PhaseRun]:
    """The runs that started, in the order they ran, from the supervisor's events."""
    started = [e["index"] for e in session.events if e.get("event") == "start" and isinstance(e.get("index"), int)]
    results = {e["index"]: e for e in session.events if e.get("event") == "run" and isinstance(e.get("index"), int)}
    if not started:
        if not engine_status().ok:
            raise DockerUnavailable("the Docker engine stopped answering during a validation")
        raise ContainerFailed(f"no run started (container exit {session.exit_code}): "
                              f"{_last_lines(session.stderr, 3)}")
    runs = []
    for index in started:
        if not 0 <= index < len(plan):
            break
        run = _phase_run(results.get(index), plan[index], names, config=config, state=state, session=session,
                         outer=outer, read_report=read_report, max_log_bytes=max_log_bytes)
        runs.append(run)
        if run.status != OK:
            break
    return runs


def _phase_run(event: dict | None, planned: PlannedRun, names: Sequence[str], *, config: Config,
               state: dict | None, session: _Session, outer: int, read_report: ReadReport,
               max_log_bytes: int) -> PhaseRun:
    """One run from the supervisor's `run` event (None: the container ended during the run). Every field is
    checked for its type: the supervisor is ours, but a value of the wrong type must not become a verdict."""
    phase, attempt = planned.phase, planned.attempt
    limit = config.docker.test_timeout_s
    if event is None:
        if session.timed_out:
            return PhaseRun(phase, attempt, TIMEOUT, None, 0.0,
                            f"the container ran longer than {outer}s (the limit of all its runs) and was killed")
        if state and state["oom"]:
            return PhaseRun(phase, attempt, OOM, None, 0.0,
                            f"the run was killed by the OOM killer (memory limit {config.docker.memory})")
        return PhaseRun(phase, attempt, TESTS_CRASHED, None, 0.0,
                        f"the run ended without an exit code (container exit {state and state['exit']})")
    seconds = _number(event.get("millis")) / 1000
    log = cap_log(_string(event.get("log")), max_log_bytes)
    exit_code = event["exit_code"] if isinstance(event.get("exit_code"), int) else None
    if event.get("reset_failed"):
        return PhaseRun(phase, attempt, TESTS_CRASHED, None, seconds, "the checkout could not be reset for this "
                        f"run: {_last_lines(_string(event['reset_failed']), 2)}", log=log)
    failed = event.get("apply_failed")
    if isinstance(failed, int) and 0 <= failed < len(names):
        which = "the test patch" if names[failed].startswith("test") else "the gold patch"
        apply_log = cap_log(_string(event.get("apply_log")), max_log_bytes)
        return PhaseRun(phase, attempt, PATCH_DOES_NOT_APPLY, None, seconds,
                        f"{which} does not apply: {_last_lines(apply_log, 3)}", log=apply_log)
    if event.get("timed_out") is True:
        return PhaseRun(phase, attempt, TIMEOUT, None, seconds,
                        f"the tests ran longer than {limit}s and were killed", log=log)
    if _number(event.get("oom_kills")) > 0 or exit_code == 137:
        return PhaseRun(phase, attempt, OOM, exit_code, seconds,
                        f"the tests were killed by the OOM killer (memory limit {config.docker.memory})", log=log)
    report = event["report"] if isinstance(event.get("report"), str) else None
    status, detail, tests = read_report(exit_code, report)
    if report is None and event.get("report_error"):
        detail = f"{detail} ({_string(event['report_error'])})"
    return PhaseRun(phase, attempt, status, exit_code, seconds, detail, report, log, tests)


def _number(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0.0


def _string(value: Any) -> str:
    return value if isinstance(value, str) else ""


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


def _last_lines(text: str, count: int) -> str:
    return " | ".join(line.strip() for line in text.strip().splitlines()[-count:])


def scratch_dir(config: Config) -> str | None:
    """Temporary build contexts and run folders live in the home (not /tmp), beside the store they feed;
    None falls back to the system's temporary directory."""
    path = config.home_path / "tmp"
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    return str(path)
