"""n samples of a first turn in one request, each continued as its own run (pass@k with one shared prefill)."""

from __future__ import annotations

from scripted_server import reply, several, tool_call

from agent import Agent, BufferedRecorder


def add(a: int, b: int) -> int:
    """Add two integers.

    Args:
        a: First.
        b: Second.
    """
    return a + b


def test_openings_are_sampled_once_and_each_run_continues_its_own(scripted, make_config):
    server = scripted([several(reply(tool_calls=[tool_call("add", {"a": 1, "b": 2})], usage=(50, 9)),
                               reply("I give up.")),
                       reply("3")])
    recorder = BufferedRecorder()
    agent = Agent("solver", make_config(solver=server.role()), tools=[add], recorder=recorder)
    openings = agent.sample_openings_sync("What is 1 + 2?", 2)
    assert len(openings) == 2 and server.requests[0].body["n"] == 2
    first = agent.run_sync("What is 1 + 2?", opening=openings[0])
    second = agent.run_sync("What is 1 + 2?", opening=openings[1])
    assert first.final_answer == "3" and first.tool_calls == 1
    assert second.final_answer == "I give up." and second.turns == 1
    # two HTTP requests in all: the shared opening (recorded once, with its usage) and the first run's second turn
    assert len(server.requests) == 2
    assert [c.prompt_tokens for c in recorder.calls][:1] == [50]


def test_an_endpoint_without_n_gives_one_opening(scripted, make_config):
    server = scripted([reply("4")])
    agent = Agent("solver", make_config(solver=server.role()), tools=[add])
    assert [o.message["content"] for o in agent.sample_openings_sync("2 + 2?", 3)] == ["4"]
