"""The home's long-lived Prefect server: started on demand, shared, reused, replaced when stale, stopped when idle
or by a command; a slow start does not fail a command; a configured PREFECT_API_URL is used as it is."""

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from flows.prefect_server import (OWNED_URL_ENV, START_DELAY_ENV, _zombie, ensure_server, healthy, read_record,
                                  stop_server)
from tasksynth.config import load_config
from tasksynth.docker.ownership import process_start_time

ROOT = Path(__file__).resolve().parents[2]
PREPARE = ("import os; from tasksynth.config import load_config; from flows.runtime import prepare_prefect; "
           "prepare_prefect(load_config()); print(os.environ['PREFECT_API_URL'])")


@pytest.fixture
def own_prefect_home(home, tmp_path, monkeypatch):
    """This test's own Prefect home (not the session's shared one), its server stopped at the end."""
    prefect_home = (tmp_path / "prefect").resolve()
    monkeypatch.setenv("PREFECT_HOME", str(prefect_home))
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.delenv(OWNED_URL_ENV, raising=False)
    yield prefect_home
    stop_server(prefect_home)
    assert _servers_of(prefect_home) == []


def _servers_of(prefect_home: Path) -> list[int]:
    """Pids of our server program running for this Prefect home."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"flows.prefect_server" in cmdline and str(prefect_home).encode() in cmdline \
                and not _zombie(int(proc.name)):
            found.append(int(proc.name))
    return found


def _flow_runs(url: str) -> list[dict]:
    request = urllib.request.Request(f"{url}/flow_runs/filter", data=b"{}", method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def _git_repo(path: Path) -> Path:
    path.mkdir(parents=True)
    git = ["git", "-c", "user.email=t@example.com", "-c", "user.name=t"]
    subprocess.run(["git", "init", "-q", str(path)], check=True)
    (path / "calc.py").write_text("def add(a, b):\n    return a + b\n")
    subprocess.run([*git, "-C", str(path), "add", "."], check=True)
    subprocess.run([*git, "-C", str(path), "commit", "-qm", "first"], check=True)
    return path


def test_concurrent_commands_of_a_home_share_one_server_that_later_commands_reuse(own_prefect_home, tmp_path,
                                                                                    tasksynth):
    assert "no local Prefect server" in tasksynth("flows", "server", "status", cwd=tmp_path, check=True).stdout
    env = {**os.environ, "PYTHONPATH": f"{ROOT}:{os.environ.get('PYTHONPATH', '')}"}
    children = [subprocess.Popen([sys.executable, "-c", PREPARE], env=env, stdout=subprocess.PIPE, text=True)
                for _ in range(3)]
    urls = {child.communicate(timeout=300)[0].strip() for child in children}
    assert all(child.returncode == 0 for child in children)
    record = read_record(own_prefect_home)
    assert urls == {record.url} and _servers_of(own_prefect_home) == [record.pid]
    assert record.start == process_start_time(record.pid)

    # a flow command reuses it, and its run is recorded there
    repo = _git_repo(tmp_path / "repo")
    tasksynth("code", "mine", "--git", str(repo), cwd=tmp_path, check=True)
    assert read_record(own_prefect_home) == record
    assert [run["name"] for run in _flow_runs(record.url)]
    status = tasksynth("flows", "server", "status", cwd=tmp_path, check=True).stdout
    assert status.startswith("running:") and record.url in status and str(record.pid) in status

    stopped = tasksynth("flows", "server", "stop", cwd=tmp_path, check=True).stdout
    assert f"pid {record.pid}" in stopped
    assert _servers_of(own_prefect_home) == [] and read_record(own_prefect_home) is None


def test_a_dead_or_reused_record_is_replaced_and_an_unrelated_process_is_left_alone(own_prefect_home):
    config = load_config()
    ensure_server(config)
    first = read_record(own_prefect_home)
    os.kill(first.pid, signal.SIGKILL)  # a server killed from outside: its record is stale
    second_url = ensure_server(config)
    second = read_record(own_prefect_home)
    assert second.pid != first.pid and healthy(second_url) and _servers_of(own_prefect_home) == [second.pid]

    # a record whose pid now belongs to another process (this test) with another start time: not stopped
    (own_prefect_home / "server.json").write_text(json.dumps({**second.__dict__, "pid": os.getpid(),
                                                              "start": "1"}))
    assert stop_server(own_prefect_home) is None and read_record(own_prefect_home) is None
    os.kill(second.pid, signal.SIGTERM)
    deadline = time.monotonic() + 30
    while second.alive() and time.monotonic() < deadline:
        time.sleep(0.2)


def test_an_idle_server_stops_itself_and_removes_its_record(own_prefect_home, monkeypatch):
    monkeypatch.setenv("TASKSYNTH_FLOWS__SERVER_IDLE_S", "2")
    config = load_config()
    ensure_server(config)
    record = read_record(own_prefect_home)
    deadline = time.monotonic() + 60
    while record.alive() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not record.alive(), "the idle server kept running"
    assert read_record(own_prefect_home) is None  # the next command starts another


def test_a_slow_server_start_does_not_fail_the_command(own_prefect_home, tmp_path, tasksynth):
    repo = _git_repo(tmp_path / "repo")
    result = tasksynth("code", "mine", "--git", str(repo), cwd=tmp_path, env={START_DELAY_ENV: "8"})
    assert result.returncode == 0, result.stderr
    assert "new candidates" in result.stdout and healthy(read_record(own_prefect_home).url)


def test_a_server_that_never_answers_is_tried_twice_then_one_line_and_nothing_left(own_prefect_home, tmp_path,
                                                                                   tasksynth):
    result = tasksynth("code", "mine", "--git", str(_git_repo(tmp_path / "repo")), cwd=tmp_path,
                       env={START_DELAY_ENV: "60", "TASKSYNTH_FLOWS__SERVER_START_TIMEOUT_S": "2"})
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "no answer within 2s; then no answer within 2s" in lines[0]
    assert "prefect-server.log" in lines[0]
    assert _servers_of(own_prefect_home) == [] and read_record(own_prefect_home) is None


def test_a_configured_prefect_api_url_is_used_and_nothing_is_started(own_prefect_home, tmp_path, tasksynth):
    url = ensure_server(load_config())  # stands for the user's own Prefect server
    other_home = tmp_path / "other-prefect"
    result = tasksynth("code", "mine", "--git", str(_git_repo(tmp_path / "repo")), cwd=tmp_path,
                       env={"PREFECT_API_URL": url, "PREFECT_HOME": str(other_home)})
    assert result.returncode == 0, result.stderr
    assert not (other_home / "server.json").exists() and _servers_of(other_home.resolve()) == []
    assert any(run["flow_id"] for run in _flow_runs(url))  # the run shows on the configured server


EPHEMERAL_FLOW = """
import time
from tasksynth.config import load_config
from flows.runtime import prepare_prefect

prepare_prefect(load_config())
from prefect import flow


@flow
def waits():
    print("in flow", flush=True)
    time.sleep(300)


waits()
"""


def test_an_ephemeral_server_left_by_a_killed_command_is_reaped_by_the_next_one(own_prefect_home, monkeypatch):
    monkeypatch.setenv("TASKSYNTH_FLOWS__PREFECT_SERVER", "ephemeral")  # Prefect's own mode, as before
    env = {**os.environ, "PYTHONPATH": f"{ROOT}:{os.environ.get('PYTHONPATH', '')}",
           "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "300"}
    child = subprocess.Popen([sys.executable, "-c", EPHEMERAL_FLOW], env=env, stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "in flow"
    from flows.prefect_server import orphaned_ephemeral_servers, reap_orphaned_ephemeral_servers

    assert orphaned_ephemeral_servers(own_prefect_home) == []  # its command is alive: not an orphan
    servers = _ephemeral_servers()
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    orphans = orphaned_ephemeral_servers(own_prefect_home)
    assert orphans and set(orphans) <= set(servers)
    assert reap_orphaned_ephemeral_servers(load_config()) == len(orphans)
    assert orphaned_ephemeral_servers(own_prefect_home) == []
    assert all(_zombie(pid) for pid in orphans)  # gone (or exited, waiting for init to collect it)


def _ephemeral_servers() -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if b"prefect.server.api.server:create_app" in (proc / "cmdline").read_bytes():
                found.append(int(proc.name))
        except (OSError, ValueError):
            continue
    return found
