"""A two-step tool-using conversation against the real bundled model (SmolLM2-135M through
`tasksynth runner serve` on 127.0.0.1). The model may answer badly; this checks the mechanics (a tool call
made, executed and answered; a second user message continuing the conversation) and the accounting."""

from __future__ import annotations

import json

import pytest

from agent import Agent, StopReason, StoreRecorder
from tasksynth.config import DEFAULT_RUNNER_MODEL, Config, RoleConfig
from tasksynth.store import open_store

pytestmark = pytest.mark.model


def lookup_capital(country: str) -> str:
    """The capital city of a country.

    Args:
        country: The country's English name, e.g. "France".
    """
    capitals = {"france": "Paris", "italy": "Rome", "japan": "Tokyo"}
    return capitals.get(country.strip().lower(), f"no capital known for {country!r}")


def test_two_step_tool_use_with_the_bundled_model(runner_url, tmp_path):
    config = Config(home=str(tmp_path / "home"))
    config.agents["answerer"] = RoleConfig(base_url=runner_url, model=DEFAULT_RUNNER_MODEL, temperature=0.0,
                                           max_tokens=64, max_turns=3, timeout_s=300, max_retries=1,
                                           max_wall_s=900)
    with open_store(config) as store:
        agent = Agent("answerer", config, tools=[lookup_capital], recorder=StoreRecorder(store),
                      system_prompt="You answer questions. Use the lookup_capital tool to find capitals.")
        # step 1: the first call must be a tool call; the loop runs the tool and sends its result back
        first = agent.run_sync("What is the capital of France?", tool_choice="required")
        assert first.stop_reason in (StopReason.ANSWER, StopReason.TURNS), first.error
        opening = first.messages[2]
        assert opening["role"] == "assistant" and opening["tool_calls"][0]["function"]["name"] == "lookup_capital"
        result = first.messages[3]
        assert result["role"] == "tool" and result["tool_call_id"] == opening["tool_calls"][0]["id"]
        assert result["content"]  # the capital, or an error message the model can act on
        if "Error" not in result["content"]:
            arguments = json.loads(opening["tool_calls"][0]["function"]["arguments"])
            assert result["content"] == lookup_capital(**arguments)

        # step 2: a new user message continues the same conversation
        second = agent.run_sync(first.messages + [{"role": "user", "content": "Say it in one word."}])
        assert second.stop_reason in (StopReason.ANSWER, StopReason.TURNS), second.error
        assert second.messages[:len(first.messages)] == [
            {k: v for k, v in m.items() if k != "reasoning_content"} for m in first.messages]

        calls = store.query("select status, prompt_tokens, completion_tokens, latency_s, endpoint, model "
                            "from agent_calls where role = 'answerer'")
        assert len(calls) == first.usage.calls + second.usage.calls >= 2
        assert all(c["status"] == "ok" and c["prompt_tokens"] > 0 and c["completion_tokens"] > 0 for c in calls)
        assert {(c["endpoint"], c["model"]) for c in calls} == {(runner_url, DEFAULT_RUNNER_MODEL)}
        # the second conversation is longer than the first one's opening, and the server counted it
        assert max(c["prompt_tokens"] for c in calls) > min(c["prompt_tokens"] for c in calls)
        trajectories = store.query("select trajectory_id, turns, stop_reason from trajectories order by created_at")
        assert [t["trajectory_id"] for t in trajectories] == [first.trajectory_id, second.trajectory_id]
        transcript = json.loads(store.get_text(
            store.query("select transcript from trajectories where trajectory_id = ?",
                        [second.trajectory_id])[0]["transcript"]))
        assert transcript["usage"]["prompt_tokens"] == second.usage.prompt_tokens
