"""Roles from config: prompt files, the example config, validation of role settings, and a run inside a real
Prefect flow recording its flow run id."""

from __future__ import annotations

from pathlib import Path

import pytest
from scripted_server import reply, tool_call

from agent import Agent, AgentError, StoreRecorder
from agent.prompts import SHIPPED_PROMPTS
from tasksynth.config import load_config
from tasksynth.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
ROLES = ("env_builder", "question_builder", "answerer", "verifier", "solver", "grader", "tool_writer",
         "solution_writer", "verifier_writer", "task_writer")


def test_every_role_ships_a_prompt_file(scripted, make_config):
    server = scripted([reply("ok")])
    for role in ROLES:
        text = (SHIPPED_PROMPTS / f"{role}.md").read_text()
        assert 200 < len(text) < 2000, role  # short, real prompts
    agent = Agent("verifier", make_config(verifier=server.role()))
    agent.run_sync("Check this.")
    assert server.requests[0].messages[0] == {"role": "system",
                                              "content": (SHIPPED_PROMPTS / "verifier.md").read_text().strip()}


def test_a_prompt_in_the_home_overrides_the_shipped_one_and_takes_variables(scripted, make_config):
    server = scripted([reply("ok")])
    config = make_config(answerer=server.role(prompt="answerer_fr"))
    prompts = config.home_path / "prompts"
    prompts.mkdir(parents=True)
    (prompts / "answerer_fr.md").write_text("Answer in ${language}. Shell: echo $HOME")
    Agent("answerer", config, prompt_vars={"language": "French"}).run_sync("Capital?")
    assert server.requests[0].messages[0]["content"] == "Answer in French. Shell: echo $HOME"
    with pytest.raises(AgentError, match=r"needs a value for \$\{language\}"):
        Agent("answerer", config)


def test_tool_choice_applies_to_the_first_call_only(scripted, make_config):
    server = scripted([reply(tool_calls=[tool_call("shout", {"text": "hi"})]), reply("done")])

    def shout(text: str) -> str:
        """Upper-case a text.

        Args:
            text: What to shout.
        """
        return text.upper()

    result = Agent("solver", make_config(solver=server.role()), tools=[shout]).run_sync("Shout hi.",
                                                                                       tool_choice="required")
    assert result.ok and result.messages[-2]["content"] == "HI"
    assert server.requests[0].body["tool_choice"] == "required"
    assert "tool_choice" not in server.requests[1].body


def test_the_example_config_loads_and_role_settings_are_validated(tmp_path):
    config = load_config(REPO / "tasksynth.example.toml", environ={})
    assert config.role("answerer_deepseek").api_key_env == "DEEPSEEK_API_KEY"
    assert config.role("env_builder").extra_body == {"chat_template_kwargs": {"enable_thinking": False}}
    assert config.prices["deepseek-chat"].output_per_mtok == 0.42
    assert config.role("not_configured").base_url == "http://127.0.0.1:8000/v1"

    for line, message in [('tool_format = "xml"', "agents.x.tool_format' must be one of native, text"),
                          ("backoff_s = -1", "agents.x.backoff_s' must not be negative"),
                          ("context_window = 0", "agents.x.context_window' must be positive")]:
        bad = tmp_path / "bad.toml"
        bad.write_text(f"[agents.x]\n{line}\n")
        with pytest.raises(ConfigError, match=message):
            load_config(bad, environ={})
    overridden = load_config(REPO / "tasksynth.example.toml",
                             environ={"TASKSYNTH_AGENTS__GRADER__TOOL_FORMAT": "text"})
    assert overridden.role("grader").tool_format == "text"


def test_calls_made_inside_a_prefect_flow_carry_its_flow_run_id(scripted, make_config, store):
    server = scripted([reply("ok")])
    config = make_config(answerer=server.role())
    from flows.runtime import prepare_prefect

    prepare_prefect(config)  # the tests' conftest already points Prefect at a session home
    from prefect import flow
    from prefect.runtime import flow_run

    @flow(name="agent-accounting-test")
    def ask() -> tuple[str, str]:
        result = Agent("answerer", config, recorder=StoreRecorder(store)).run_sync("hi")
        return str(flow_run.id), result.trajectory_id

    run_id, trajectory_id = ask()
    assert store.query("select flow_run_id, trajectory_id from agent_calls") == [
        {"flow_run_id": run_id, "trajectory_id": trajectory_id}]
    assert store.query("select flow_run_id from trajectories") == [{"flow_run_id": run_id}]
