"""Shared fixtures: every test gets its own tasksynth home (store, blobs, Prefect database) in tmp_path."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

# Prefect keeps its own database; one per test session, never the user's ~/.prefect.
os.environ.setdefault("PREFECT_HOME", str(Path(os.environ.get("TMPDIR", "/tmp")) / f"tasksynth-tests-prefect-{os.getpid()}"))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")  # Prefect's client sends no usage events
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("PREFECT_RESULTS_PERSIST_BY_DEFAULT", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session", autouse=True)
def prefect_server_of_the_session():
    """Flows of every test (in this process and in the CLI subprocesses) share one local Prefect server, the
    one of the session's PREFECT_HOME, started by the first test that runs a flow; it is stopped at the end."""
    import time

    started = time.time()
    yield
    from flows.prefect_server import read_record, stop_server

    home = Path(os.environ["PREFECT_HOME"]).resolve()
    record = read_record(home)
    if record is not None and record.started_at >= started:
        stop_server(home)


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """A fresh TASKSYNTH_HOME; the current directory has no tasksynth.toml."""
    path = tmp_path / "home"
    monkeypatch.setenv("TASKSYNTH_HOME", str(path))
    monkeypatch.chdir(tmp_path)
    return path


@pytest.fixture
def config(home):
    from tasksynth.config import load_config

    return load_config()


@pytest.fixture
def store(config):
    from tasksynth.store import open_store

    with open_store(config) as opened:
        yield opened


def run_tasksynth(*args, cwd, env=None, check=False, timeout=300):
    """Run the installed `tasksynth` console script as a user would."""
    exe = shutil.which("tasksynth", path=str(Path(sys.executable).parent)) or "tasksynth"
    result = subprocess.run([exe, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                            env={**os.environ, **(env or {})})
    if check:
        assert result.returncode == 0, result.stderr
    return result


@pytest.fixture
def tasksynth():
    return run_tasksynth


@pytest.fixture(scope="session")
def runner_url(tmp_path_factory):
    """The bundled runner, shared by every real-model test of the session (tests/support/bundled_runner.py)."""
    from bundled_runner import serve_runner

    yield from serve_runner(tmp_path_factory.mktemp("runner"))


@pytest.fixture(scope="session")
def docker_engine():
    """The Docker engine every `docker` test needs (`make test` starts one)."""
    from tasksynth.docker.engine import engine_status

    status = engine_status()
    if not status.ok:
        pytest.fail(f"these tests need a Docker engine (`make test` starts one): {status.detail}")
    return status


@pytest.fixture(scope="session")
def base_311(docker_engine, tmp_path_factory):
    """The Python 3.11 base image (debootstrap, about a minute the first time on a machine; then cached)."""
    from tasksynth.config import load_config
    from tasksynth.docker.base_images import base_image

    config = load_config(environ={"TASKSYNTH_HOME": str(tmp_path_factory.mktemp("base-home"))})
    return base_image(config, "3.11", log=lambda line: None)
