"""`tasksynth flows serve` turns the configured cron schedules into served Prefect deployments."""

import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path


def test_serve_registers_a_deployment_per_schedule(home, tmp_path):
    (tmp_path / "tasksynth.toml").write_text('[flows.schedules]\ndemo = "0 3 * * *"\ngithub = "30 2 * * 1"\n')
    exe = shutil.which("tasksynth", path=str(Path(sys.executable).parent)) or "tasksynth"
    server = subprocess.Popen([exe, "flows", "serve"], cwd=tmp_path, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, env={**os.environ, "COLUMNS": "200"},
                              start_new_session=True)
    seen = []
    # serve runs until stopped: a watchdog ends it if the deployments never show, so the read loop ends too
    watchdog = threading.Timer(180, lambda: os.killpg(server.pid, signal.SIGKILL))
    watchdog.start()
    try:
        for line in server.stdout:
            seen.append(line)
            if "github-mining/tasksynth-github" in "".join(seen) and "demo/tasksynth-demo" in "".join(seen):
                break
    finally:
        watchdog.cancel()
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
    output = "".join(seen)
    assert "being served" in output
    assert "demo/tasksynth-demo" in output and "github-mining/tasksynth-github" in output


def test_serve_without_schedules_says_how_to_add_them(home, tmp_path, tasksynth):
    result = tasksynth("flows", "serve", cwd=tmp_path)
    assert result.returncode == 1 and "[flows.schedules]" in result.stderr
