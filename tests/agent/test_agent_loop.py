"""The agent loop against a scripted OpenAI-compatible server on 127.0.0.1: tool execution, text-format and
malformed calls, thinking retention, context strategies and budgets."""

from __future__ import annotations

import json
import threading

import pytest
from scripted_server import reply, tool_call

from agent import Agent, AgentError, StopReason


def lookup(city: str) -> dict:
    """Population of a city.

    Args:
        city: The city's English name.
    """
    lookup.seen.append((city, threading.current_thread().name))
    return {"city": city, "population": {"Paris": 2_100_000}.get(city)}


lookup.seen = []


async def add(a: int, b: int) -> int:
    """Add two integers.

    Args:
        a: First.
        b: Second.
    """
    return a + b


def explode(reason: str) -> str:
    """A tool that fails.

    Args:
        reason: Why it fails.
    """
    raise RuntimeError(f"disk on fire: {reason}")


def assistant_calls(messages):
    return [m for m in messages if m["role"] == "assistant" and m.get("tool_calls")]


def tool_results(messages):
    return [m for m in messages if m["role"] == "tool"]


def test_native_tool_calls_are_executed_and_their_results_sent_back(scripted, make_config):
    server = scripted([
        reply(tool_calls=[tool_call("lookup", {"city": "Paris"}), tool_call("add", {"a": 2, "b": 3})]),
        reply("Paris has 2.1 million people; 2 + 3 = 5."),
    ])
    lookup.seen.clear()
    agent = Agent("answerer", make_config(answerer=server.role()), tools=[lookup, add], system_prompt="Be exact.")
    result = agent.run_sync("How many people live in Paris, and what is 2 + 3?")

    assert result.ok and result.final_answer == "Paris has 2.1 million people; 2 + 3 = 5."
    assert result.turns == 2 and result.tool_calls == 2
    first, second = server.requests
    assert [t["function"]["name"] for t in first.body["tools"]] == ["lookup", "add"]
    assert first.body["tools"][0]["function"]["parameters"]["properties"]["city"]["description"] == \
        "The city's English name."
    assert [m["role"] for m in first.messages] == ["system", "user"]
    # the sync tool ran in a worker thread, not on the event loop
    assert lookup.seen[0][0] == "Paris" and lookup.seen[0][1] != threading.main_thread().name
    call_ids = [c["id"] for c in second.messages[2]["tool_calls"]]
    results = tool_results(second.messages)
    assert [r["tool_call_id"] for r in results] == call_ids
    assert json.loads(results[0]["content"]) == {"city": "Paris", "population": 2100000}
    assert results[1]["content"] == "5"
    assert server.remaining == 0


def test_tool_calls_written_as_text_are_parsed_and_kept_in_structured_form(scripted, make_config):
    server = scripted([
        reply('I will look it up.\n<tool_call>{"name": "lookup", "arguments": {"city": "Paris"}}</tool_call>'),
        reply("About 2.1 million."),
    ])
    agent = Agent("answerer", make_config(answerer=server.role()), tools=[lookup])
    result = agent.run_sync("Population of Paris?")

    assert result.ok and result.final_answer == "About 2.1 million." and result.tool_calls == 1
    sent = server.requests[1].messages
    assistant = assistant_calls(sent)[0]
    assert assistant["content"] == "I will look it up."
    assert assistant["tool_calls"][0]["function"] == {"name": "lookup", "arguments": '{"city": "Paris"}'}
    assert tool_results(sent)[0]["tool_call_id"] == assistant["tool_calls"][0]["id"]
    assert '"population": 2100000' in tool_results(sent)[0]["content"]


def test_text_tool_format_describes_tools_in_the_system_prompt(scripted, make_config):
    server = scripted([
        reply('<tool_call>{"name": "add", "arguments": {"a": 40, "b": 2}}</tool_call>'),
        reply("42"),
    ])
    agent = Agent("solver", make_config(solver=server.role(tool_format="text")), tools=[add],
                  system_prompt="Solve it.")
    result = agent.run_sync("40 + 2?")

    assert result.ok and result.final_answer == "42"
    first, second = server.requests
    assert "tools" not in first.body
    system = first.messages[0]["content"]
    assert system.startswith("Solve it.") and "<tool_call>" in system and '"a": {"type": "integer"' in system
    # the model sees its own call as the text it wrote, and the result as a tool message
    assert second.messages[2] == {"role": "assistant",
                                  "content": '<tool_call>{"name": "add", "arguments": {"a": 40, "b": 2}}</tool_call>'}
    assert second.messages[3]["role"] == "tool" and second.messages[3]["content"] == "42"


def test_malformed_calls_get_an_error_message_and_the_loop_goes_on(scripted, make_config):
    server = scripted([
        reply(tool_calls=[tool_call("lookup", '{"city": "Par'),           # arguments that are not JSON
                          tool_call("weather", {"city": "Paris"}),        # a tool that does not exist
                          tool_call("add", {"a": "two", "b": 3}),         # wrong argument type
                          tool_call("explode", {"reason": "test"})]),     # a tool that raises
        reply('<tool_call>{"name": "add", "arguments": {"a": 1, </tool_call>'),  # unreadable text call
        reply(tool_calls=[tool_call("add", {"a": 2, "b": 2})]),
        reply("4"),
    ])
    agent = Agent("answerer", make_config(answerer=server.role()), tools=[lookup, add, explode])
    result = agent.run_sync("Try things.")

    assert result.ok and result.final_answer == "4"
    assert result.turns == 4 and result.tool_calls == 6
    errors = [m["content"] for m in tool_results(server.requests[1].messages)]
    assert errors[0].startswith("Error: your tool call could not be read: the arguments are not valid JSON")
    assert 'You wrote: {"city": "Par' in errors[0]
    assert errors[1] == "Error: there is no tool named 'weather'. The tools are: lookup, add, explode."
    assert errors[2] == "Error: wrong arguments for add: argument 'a' must be an integer, got string \"two\"."
    assert errors[3] == "Error: explode failed: RuntimeError: disk on fire: test"
    # the unreadable arguments go back to the endpoint as a valid (empty) object
    assert assistant_calls(server.requests[1].messages)[0]["tool_calls"][0]["function"]["arguments"] == "{}"
    text_error = tool_results(server.requests[2].messages)[-1]["content"]
    assert text_error.startswith("Error: your tool call could not be read: the tool call is not valid JSON")
    assert tool_results(server.requests[3].messages)[-1]["content"] == "4"


def test_reasoning_is_kept_within_a_turn_and_dropped_when_a_new_user_message_arrives(scripted, make_config):
    server = scripted([
        reply(tool_calls=[tool_call("lookup", {"city": "Paris"})], reasoning="I need the population."),
        reply(tool_calls=[tool_call("add", {"a": 1, "b": 1})], reasoning="Now a sum."),
        reply("2.1 million", reasoning="Done."),
        reply("Yes, about 2.1 million.", reasoning="Second question."),
    ])
    agent = Agent("answerer", make_config(answerer=server.role()), tools=[lookup, add], system_prompt="S")
    first = agent.run_sync("Population of Paris?")
    assert first.ok

    # within the turn: every earlier assistant message goes back with its reasoning
    within = server.requests[2].messages
    assert [m.get("reasoning_content") for m in assistant_calls(within)] == ["I need the population.",
                                                                             "Now a sum."]

    second = agent.run_sync(first.messages + [{"role": "user", "content": "Are you sure?"}])
    assert second.final_answer == "Yes, about 2.1 million."
    after = server.requests[3].messages
    assert not any("reasoning_content" in m for m in after)
    # tool calls and their results are always kept
    assert len(assistant_calls(after)) == 2 and len(tool_results(after)) == 2
    assert after[-1] == {"role": "user", "content": "Are you sure?"}
    assert not any("reasoning_content" in m for m in second.messages[:-1])
    assert second.messages[-1]["reasoning_content"] == "Second question."


def _growing(steps: int, last_prompt: int):
    """Tool-calling replies whose reported context grows, the last one past 80 % of a 1000-token window."""
    replies = [reply(tool_calls=[tool_call("add", {"a": i, "b": i})], usage=(100 * (i + 1), 10))
               for i in range(steps - 1)]
    replies.append(reply(tool_calls=[tool_call("add", {"a": 9, "b": 9})], usage=(last_prompt, 10)))
    return replies


@pytest.mark.parametrize("strategy,kept_groups", [("discard-75", 1), ("discard-all", 0)])
def test_discard_strategies_drop_the_oldest_tool_history(scripted, make_config, strategy, kept_groups):
    server = scripted(_growing(4, 850) + [reply("done")])
    role = server.role(context_window=1000, context_strategy=strategy)
    agent = Agent("env_builder", make_config(env_builder=role), tools=[add], system_prompt="S")
    result = agent.run_sync("Build it.")

    assert result.ok and result.turns == 5
    assert len(assistant_calls(server.requests[3].messages)) == 3  # below 80 %: nothing dropped
    last = server.requests[4].messages
    assert len(assistant_calls(last)) == kept_groups and len(tool_results(last)) == kept_groups
    if kept_groups:  # the newest call is the one kept
        assert assistant_calls(last)[0]["tool_calls"][0]["function"]["arguments"] == '{"a": 9, "b": 9}'
    assert last[:2] == [{"role": "system", "content": "S"}, {"role": "user", "content": "Build it."}]
    event = result.context_events[0]
    assert event["strategy"] == strategy and event["dropped_groups"] == 4 - kept_groups
    assert event["tokens_before"] > 800 > event["tokens_after"]
    # the transcript keeps everything that happened, dropped history included
    assert len(tool_results(result.transcript)) == 4


def test_summary_strategy_restarts_from_the_task_and_a_summary(scripted, make_config):
    server = scripted([
        reply(tool_calls=[tool_call("lookup", {"city": "Paris"})], usage=(200, 10)),
        reply(tool_calls=[tool_call("add", {"a": 1, "b": 2})], usage=(850, 10), reasoning="thinking"),
        reply("Task: population of Paris. Found: 2,100,000 (lookup). Next: answer."),
        reply("2,100,000"),
    ])
    role = server.role(context_window=1000, context_strategy="summary")
    agent = Agent("question_builder", make_config(question_builder=role), tools=[lookup, add], system_prompt="S")
    result = agent.run_sync("Population of Paris?")

    assert result.ok and result.final_answer == "2,100,000"
    summary_request = server.requests[2]
    assert "tools" not in summary_request.body
    assert summary_request.messages[-1]["content"].startswith("Your context is nearly full. Summarise")
    assert len(tool_results(summary_request.messages)) == 2  # the model summarises the whole trajectory
    restarted = server.requests[3].messages
    assert [m["role"] for m in restarted] == ["system", "user", "user"]
    assert restarted[1]["content"] == "Population of Paris?"
    assert "Found: 2,100,000 (lookup)" in restarted[2]["content"]
    assert "tools" in server.requests[3].body
    assert result.context_events[0]["strategy"] == "summary"
    assert result.usage.calls == 4  # the summary call is accounted like any other
    assert any(m.get("summary_request") for m in result.transcript)


def test_a_conversation_that_cannot_fit_stops_without_calling(scripted, make_config):
    server = scripted([reply("never sent")])
    role = server.role(context_window=100, context_strategy="discard-75")
    result = Agent("answerer", make_config(answerer=role)).run_sync("x " * 400)
    assert result.stop_reason == StopReason.CONTEXT and server.requests == []
    assert "context window" in result.error


# ---------------------------------------------------------------------------------------------- budgets


def test_turn_budget(scripted, make_config):
    server = scripted([reply(tool_calls=[tool_call("add", {"a": i, "b": 1})]) for i in range(3)])
    result = Agent("solver", make_config(solver=server.role(max_turns=2)), tools=[add]).run_sync("Loop.")
    assert result.stop_reason == StopReason.TURNS and result.turns == 2 and result.final_answer is None
    assert len(server.requests) == 2 and len(tool_results(result.messages)) == 2


def test_token_budget(scripted, make_config):
    server = scripted([reply(tool_calls=[tool_call("add", {"a": 1, "b": 1})], usage=(300, 10))] * 3)
    result = Agent("solver", make_config(solver=server.role(max_total_tokens=500)), tools=[add]).run_sync("Go.")
    assert result.stop_reason == StopReason.TOKENS and result.usage.total_tokens == 620
    assert len(server.requests) == 2


def test_cost_budget_uses_the_configured_prices(scripted, make_config):
    server = scripted([reply(tool_calls=[tool_call("add", {"a": 1, "b": 1})], usage=(150_000, 1_000))] * 2)
    role = server.role(max_cost_usd=0.04)
    result = Agent("solver", make_config(solver=role), tools=[add]).run_sync("Go.")
    assert result.stop_reason == StopReason.COST
    assert result.cost_usd == pytest.approx((150_000 * 0.28 + 1_000 * 0.42) / 1e6)
    assert len(server.requests) == 1


def test_wall_time_budget_cuts_a_slow_call(scripted, make_config):
    server = scripted([reply(tool_calls=[tool_call("add", {"a": 1, "b": 1})], delay_s=0.3),
                       reply("too late", delay_s=3.0)])
    role = server.role(max_wall_s=0.8)
    result = Agent("solver", make_config(solver=role), tools=[add]).run_sync("Go.")
    assert result.stop_reason == StopReason.WALL and result.turns == 1
    assert "timeout" in result.error


def test_setup_errors_raise_before_any_call(scripted, make_config, monkeypatch):
    server = scripted([])
    monkeypatch.delenv("AGENT_TEST_MISSING_KEY", raising=False)
    role = server.role(api_key_env="AGENT_TEST_MISSING_KEY")
    with pytest.raises(AgentError, match=r"\$AGENT_TEST_MISSING_KEY, which is not set"):
        Agent("answerer", make_config(answerer=role)).run_sync("hi")
    with pytest.raises(AgentError, match="no prompt file 'missing.md'"):
        Agent("answerer", make_config(answerer=server.role(prompt="missing.md")))
    assert server.requests == []
