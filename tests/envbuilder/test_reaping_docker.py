"""A validation killed with SIGKILL leaves its container and run folder; the next command of the same home
removes them, and leaves alone what another home or a live process owns."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tasksynth.docker.engine import docker
from tasksynth.docker.ownership import (OWNER_PID_LABEL, OWNER_START_LABEL, home_key, label_args, owner_labels,
                                        process_start_time)
from tasksynth.docker.reaping import OWNER_FILE

pytestmark = pytest.mark.docker
ROOT = Path(__file__).resolve().parents[2]
IMAGE = "tasksynth-test/reaping:1"
VALIDATION = """
import sys
from envbuilder.containers import PhasePlan, run_validation
from tasksynth.config import load_config

run_validation(load_config(), sys.argv[1], phases=[PhasePlan("before", ())], repeat=1, patches={},
               command="sleep 300", ok_exit_codes=[0], read_report=lambda code, report: ("ok", "", {}),
               report_path="/tmp/report.xml", max_log_bytes=1000)
"""


@pytest.fixture(scope="module")
def image(base_311):
    dockerfile = f"FROM {base_311.tag}\nRUN mkdir -p /testbed && chown 1000:1000 /testbed\n"
    docker("build", "-q", "--network", "none", "-t", IMAGE, "-", input=dockerfile, timeout=300)
    return IMAGE


def _containers(home: Path) -> set[str]:
    return set(docker("ps", "-aq", "--no-trunc", "--filter", f"label=org.tasksynth.home={home_key(home)}",
                      timeout=60).stdout.split())


def test_the_next_command_of_a_home_reaps_what_a_killed_validation_left(image, tmp_path, tasksynth):
    home, other_home = tmp_path / "home", tmp_path / "other"
    env = {**os.environ, "TASKSYNTH_HOME": str(home), "PYTHONPATH": f"{ROOT}:{os.environ.get('PYTHONPATH', '')}"}
    child = subprocess.Popen([sys.executable, "-c", VALIDATION, image], env=env)
    child_start = process_start_time(child.pid)
    try:
        deadline = time.monotonic() + 120
        while not _containers(home):
            assert child.poll() is None and time.monotonic() < deadline, "no validation container started"
            time.sleep(0.5)
        time.sleep(1)  # the container runs `sleep 300` now
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        killed = _containers(home)
        folders = list((home / "tmp").glob("tasksynth-run-*"))
        assert len(killed) == 1 and len(folders) == 1  # what the killed run left

        # another home's leftovers of the same dead owner, and a container of this home whose owner lives
        dead_owner = {OWNER_PID_LABEL: str(child.pid), OWNER_START_LABEL: child_start}
        other = docker("run", "-d", *label_args({**owner_labels(other_home, "validation"), **dead_owner}),
                       image, "sleep", "300", timeout=120).stdout.strip()
        alive = docker("run", "-d", *label_args(owner_labels(home, "session")), image, "sleep", "300",
                       timeout=120).stdout.strip()
        other_folder = other_home / "tmp" / "tasksynth-run-other"
        other_folder.mkdir(parents=True)
        (other_folder / OWNER_FILE).write_text(json.dumps({"pid": child.pid, "start": child_start}))

        rerun = tasksynth("code", "build", cwd=tmp_path, env={"TASKSYNTH_HOME": str(home)})
        assert rerun.returncode == 0, rerun.stderr
        assert "removed 1 container(s) and 1 folder(s) left by a killed run" in rerun.stderr
        assert _containers(home) == {alive}
        assert not any(folder.exists() for folder in folders)
        assert _containers(other_home) == {other} and other_folder.exists()
    finally:
        if child.poll() is None:
            child.kill()
        leftovers = _containers(home) | _containers(other_home)
        if leftovers:
            docker("rm", "-f", *leftovers, check=False, timeout=120)
