"""A small code-interpreter synthesis with the real bundled model (SmolLM2-135M) on the real sandbox kernel.
The model is weak: it rarely writes a usable task, so this checks that the run finishes, discards with a
reason and accounts for every call, not that it keeps anything."""

from __future__ import annotations

import json

import pytest
from scripted_notebook_world import ROLES

pytestmark = [pytest.mark.model, pytest.mark.docker]


def test_a_small_synthesis_with_the_bundled_model(runner_url, home, tmp_path, tasksynth, kernel_image_tag,
                                                  monkeypatch):
    monkeypatch.setenv("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    roles = "".join(f'[agents.{role}]\nbase_url = "{runner_url}"\nmax_tokens = 128\nmax_turns = 2\n'
                    f'timeout_s = 300\nmax_retries = 1\n\n' for role in ROLES)
    (tmp_path / "tasksynth.toml").write_text(roles)
    result = tasksynth("notebook", "synth", "--datasets", "penguins", "--tasks", "1", "--k", "2", "--kernels", "1",
                       cwd=tmp_path, timeout=900)
    assert result.returncode == 0, result.stderr + result.stdout
    assert "tasks written" in result.stdout

    tasks = json.loads(tasksynth("sql", "--json", "select status, reason, data_files from notebook_tasks",
                                 cwd=tmp_path, check=True).stdout)
    assert len(tasks) == 1 and (tasks[0]["status"] == "kept" or tasks[0]["reason"])
    files = tasks[0]["data_files"]
    assert "penguins.csv" in (json.loads(files) if isinstance(files, str) else files)
    calls = json.loads(tasksynth("sql", "--json", "select role, status, prompt_tokens from agent_calls",
                                 cwd=tmp_path, check=True).stdout)
    writer = [c for c in calls if c["role"] == "notebook_task_writer"]
    assert writer and all(c["status"] == "ok" and c["prompt_tokens"] > 0 for c in writer)
