"""Running one phase of tests in a throwaway container of an instance image.

    docker run --network none --cpus C --memory M --memory-swap M --pids-limit P --user 1000:1000
               -v <tmp>:/io --name tasksynth-run-<id> <instance image> bash /io/run.sh

The temp dir mounted at /io carries the patches in and the JUnit report, the patch log and pytest's exit code
out. A run longer than the wall-clock limit is killed by name (`docker kill`); the container is kept until
`docker inspect` has said whether the kernel's OOM killer ended it, then removed. At most
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
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from envbuilder.errors import CodeEnvError, DiskFull
from tasksynth.config import Config
from tasksynth.docker.engine import docker
from verifiers.grading import OOM, PATCH_DOES_NOT_APPLY, TIMEOUT
from verifiers.junit import TestOutcome

_slots: dict[int, threading.BoundedSemaphore] = {}
_slots_guard = threading.Lock()
RUN_USER = "1000:1000"


class ContainerFailed(CodeEnvError):
    """Docker could not start a run's container (not the tests' fault): the candidate is retried later."""


@contextlib.contextmanager
def container_slot(config: Config) -> Iterator[None]:
    with _slots_guard:
        slot = _slots.setdefault(config.docker.max_containers, threading.BoundedSemaphore(config.docker.max_containers))
    with slot:
        yield


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


RUN_SCRIPT = r"""#!/bin/bash
# One validation run: apply the patches, run the tests, leave the report and the exit code in /io.
set -u
cd /testbed
apply() {
  if git apply --verbose "/io/$1" >"/io/$1.log" 2>&1; then return 0; fi
  if patch --batch --forward -p1 -i "/io/$1" >>"/io/$1.log" 2>&1; then return 0; fi
  echo "$1" >/io/apply_failed
  cat "/io/$1.log"
  exit 97
}
apply test.patch
if [ -f /io/gold.patch ]; then apply gold.patch; fi
%(command)s
code=$?
echo "$code" >/io/exit_code
exit "$code"
"""


def run_phase(config: Config, image: str, *, phase: str, attempt: int, test_patch: str, gold_patch: str | None,
              command: str, read_report, max_log_bytes: int) -> PhaseRun:
    """One run; `read_report(exit_code, report)` is the runner's reading of what the tests left."""
    name = f"tasksynth-run-{uuid.uuid4().hex[:12]}"
    with tempfile.TemporaryDirectory(prefix="tasksynth-run-", dir=_scratch(config)) as tmp:
        io = Path(tmp)
        try:
            (io / "test.patch").write_text(test_patch)
            if gold_patch is not None:
                (io / "gold.patch").write_text(gold_patch)
            (io / "run.sh").write_text(RUN_SCRIPT % {"command": command})
        except OSError as exc:
            if exc.errno == 28:
                raise DiskFull(f"no space left for a run's files: {exc}") from None
            raise
        os.chmod(io, 0o777)
        args = ["run", "--name", name, "--network", "none", "--cpus", str(config.docker.cpus),
                "--memory", config.docker.memory, "--memory-swap", config.docker.memory,
                "--pids-limit", str(config.docker.pids_limit), "--user", RUN_USER,
                "-e", f"TASKSYNTH_ATTEMPT={attempt}", "-e", f"TASKSYNTH_PHASE={phase}",
                "-v", f"{io}:/io", image, "bash", "/io/run.sh"]
        started = time.monotonic()
        timed_out = False
        with container_slot(config):
            try:
                result = docker(*args, check=False, timeout=config.docker.test_timeout_s)
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
        log = cap_log(output, max_log_bytes)
        if timed_out:
            return PhaseRun(phase, attempt, TIMEOUT, None, seconds,
                            f"the tests ran longer than {config.docker.test_timeout_s}s and were killed", log=log)
        exit_code = state["exit"] if state else docker_code
        if state and state["oom"] or exit_code == 137 and _read(io / "exit_code") in (None, "137"):
            return PhaseRun(phase, attempt, OOM, exit_code, seconds,
                            f"the tests were killed by the OOM killer (memory limit {config.docker.memory})", log=log)
        failed_patch = _read(io / "apply_failed")
        if failed_patch:
            which = "the test patch" if failed_patch.startswith("test") else "the gold patch"
            apply_log = _read(io / f"{failed_patch}.log") or ""
            return PhaseRun(phase, attempt, PATCH_DOES_NOT_APPLY, exit_code, seconds,
                            f"{which} does not apply: {_last_lines(apply_log, 3)}", log=log)
        code_text = _read(io / "exit_code")
        test_code = int(code_text) if code_text and code_text.lstrip("-").isdigit() else exit_code
        report = _read(io / "junit.xml", strip=False)
        status, detail, tests = read_report(test_code, report)
        return PhaseRun(phase, attempt, status, test_code, seconds, detail, report, log, tests)


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


def _scratch(config: Config) -> str | None:
    path = config.home_path / "tmp"
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    return str(path)

