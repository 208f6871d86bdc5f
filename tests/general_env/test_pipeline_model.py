"""A small general synthesis with the real bundled model (SmolLM2-135M) on the real sandbox. The model is
weak: it rarely writes a usable environment, so this checks that the run finishes, discards with reasons and
accounts for every call honestly, not that it keeps anything."""

from __future__ import annotations

import json

import pytest

pytestmark = [pytest.mark.model, pytest.mark.docker]
ROLES = ("tool_writer", "task_writer", "solution_writer", "verifier_writer", "solver")


def test_a_small_synthesis_with_the_bundled_model(runner_url, home, tmp_path, tasksynth, docker_engine):
    roles = "".join(f'[agents.{role}]\nbase_url = "{runner_url}"\nmax_tokens = 160\nmax_turns = 3\n'
                    f'timeout_s = 300\nmax_retries = 1\n\n' for role in ROLES)
    (tmp_path / "tasksynth.toml").write_text(f"[general]\ntasks_per_env = 1\nlevels = 1\nk = 2\n\n{roles}")
    result = tasksynth("general", "synth", "--category", "library loans", "--envs", "1", cwd=tmp_path, timeout=900)
    assert result.returncode == 0, result.stderr + result.stdout
    assert "environments made" in result.stdout

    funnel = json.loads(tasksynth("general", "report", "--json", cwd=tmp_path, check=True).stdout)
    assert funnel["environments"]["made"] == 1
    envs = json.loads(tasksynth("sql", "--json", "select status, reason from general_environments",
                                cwd=tmp_path, check=True).stdout)
    assert envs[0]["status"] == "built" or envs[0]["reason"]  # kept, or discarded with its reason
    calls = json.loads(tasksynth("sql", "--json", "select role, status, prompt_tokens, completion_tokens "
                                 "from agent_calls", cwd=tmp_path, check=True).stdout)
    builder = [c for c in calls if c["role"] == "tool_writer"]
    assert builder and all(c["status"] == "ok" and c["prompt_tokens"] > 0 for c in builder)
    assert funnel["cost_by_role"][0]["tokens"] == sum(c["prompt_tokens"] + c["completion_tokens"]
                                                      for c in calls if c["role"] == funnel["cost_by_role"][0]["role"])
