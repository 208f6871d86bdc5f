"""What the model is told about a tool (schema from type hints and docstring), how its arguments are checked,
and how tool calls written as text are read."""

from __future__ import annotations

import asyncio
import enum
from typing import Annotated, Literal

import pytest

from agent import AgentError, as_tool, parse_text_calls, schema_for, tool
from agent.tools import resolve_tools


class Opaque:
    """A type with no JSON schema."""


class Engine(enum.Enum):
    LOCAL = "local"
    HTTP = "http"


def search(query: str, limit: int = 5, engine: Engine = Engine.LOCAL, exact: bool | None = None,
           fields: list[str] | None = None, mode: Literal["fast", "deep"] = "fast",
           weight: Annotated[float, "How much recent pages count, 0 to 1."] = 0.5) -> list[dict]:
    """Search the corpus for pages.

    Longer explanation that the model does not need.

    Args:
        query: Words to look for;
            quoted phrases match exactly.
        limit: How many hits to return.
        engine: Which index to ask.
        exact: Match whole words only.
        fields: Fields to search (title, body).

    Returns:
        Hits with title and url.
    """
    return [{"query": query, "limit": limit, "engine": engine.value}]


def test_schema_comes_from_type_hints_and_docstring():
    made = as_tool(search)
    assert made.name == "search"
    assert made.description == "Search the corpus for pages."
    params = made.parameters
    assert params["required"] == ["query"]
    assert params["additionalProperties"] is False
    props = params["properties"]
    assert props["query"] == {"type": "string",
                              "description": "Words to look for; quoted phrases match exactly."}
    assert props["limit"] == {"type": "integer", "description": "How many hits to return.", "default": 5}
    assert props["engine"] == {"enum": ["local", "http"], "type": "string", "description": "Which index to ask.",
                               "default": "local"}
    assert props["exact"] == {"type": "boolean", "description": "Match whole words only."}
    assert props["fields"] == {"type": "array", "items": {"type": "string"},
                               "description": "Fields to search (title, body)."}
    assert props["mode"]["enum"] == ["fast", "deep"]
    assert props["weight"] == {"type": "number", "description": "How much recent pages count, 0 to 1.",
                               "default": 0.5}
    assert made.spec()["function"]["parameters"] is params


def test_arguments_are_checked_with_messages_the_model_can_act_on():
    made = as_tool(search)
    assert made.check({"query": "paris"}) == []
    problems = made.check({"limit": "ten", "colour": "red"})
    assert "missing required argument 'query'" in problems
    assert any("unknown argument 'colour'" in p for p in problems)
    assert any("'limit' must be an integer" in p for p in problems)
    assert made.check({"query": "x", "engine": "bing"}) == [
        "argument 'engine' must be one of ['local', 'http'], got 'bing'"]
    assert made.check({"query": "x", "fields": ["title", 3]}) == [
        "argument 'fields[1]' must be a string, got integer 3"]
    assert made.check(["x"]) == ["arguments must be a JSON object, got list"]


def test_invoke_converts_enums_and_runs_sync_and_async_tools():
    made = as_tool(search)
    assert asyncio.run(made.invoke({"query": "q", "engine": "http", "limit": 2.0})) == \
        '[{"query": "q", "limit": 2, "engine": "http"}]'

    async def lookup(key: str) -> dict:
        """Look a key up."""
        return {"key": key}

    assert asyncio.run(as_tool(lookup).invoke({"key": "k"})) == '{"key": "k"}'


def test_decorated_tools_are_registered_and_selected_by_role_names():
    @tool(name="agent_test_clock")
    def clock() -> str:
        """The time."""
        return "noon"

    assert clock() == "noon"  # still callable as the function it was
    assert [t.name for t in resolve_tools(None, ["agent_test_clock"])] == ["agent_test_clock"]
    with pytest.raises(AgentError, match="no tool named 'nope'"):
        resolve_tools(None, ["nope"])
    with pytest.raises(AgentError, match="not given"):
        resolve_tools([search], ["agent_test_clock"])
    assert [t.name for t in resolve_tools([search, clock], ["agent_test_clock"])] == ["agent_test_clock"]


def test_tools_the_schema_cannot_describe_are_refused():
    def bad(*args: str) -> str:
        """Takes anything."""
        return ""

    def worse(thing: Opaque) -> str:
        """Takes an object."""
        return ""

    with pytest.raises(AgentError, match="must be named"):
        schema_for(bad)
    with pytest.raises(AgentError, match="no JSON schema"):
        schema_for(worse)


# ---------------------------------------------------------------------------------------------- text calls


@pytest.mark.parametrize("text", [
    'Let me look.\n<tool_call>{"name": "search", "arguments": {"query": "Paris"}}</tool_call>',
    '<tool_call>\n{"name": "search", "arguments": "{\\"query\\": \\"Paris\\"}"}\n</tool_call>',
    '<tool_call>{"name": "search", "parameters": {"query": "Paris"}}',  # stopped before the closing tag
    '<function=search>{"query": "Paris"}</function>',
    '[TOOL_CALLS][{"name": "search", "arguments": {"query": "Paris"}}]',
    'I will search.\n```json\n{"name": "search", "arguments": {"query": "Paris",}}\n```',
    '{"name": "search", "arguments": {"query": "Paris"}}',
    '{"type": "function", "function": {"name": "search", "arguments": {"query": "Paris"}}}',
])
def test_text_tool_calls_in_the_common_formats_are_read(text):
    rest, calls = parse_text_calls(text)
    assert [(c.name, c.arguments, c.error) for c in calls] == [("search", {"query": "Paris"}, None)]
    assert "Paris" not in rest


def test_several_text_calls_keep_their_order():
    _, calls = parse_text_calls('<tool_call>{"name": "a", "arguments": {}}</tool_call>\n'
                                '<tool_call>{"name": "b", "arguments": {"x": 1}}</tool_call>')
    assert [(c.name, c.arguments) for c in calls] == [("a", {}), ("b", {"x": 1})]


def test_malformed_text_calls_are_reported_not_dropped():
    _, calls = parse_text_calls('<tool_call>{"name": "search", "arguments": {"query": </tool_call>')
    assert len(calls) == 1 and calls[0].arguments is None
    assert calls[0].error.startswith("the tool call is not valid JSON")
    _, calls = parse_text_calls('<tool_call>{"arguments": {"q": 1}}</tool_call>')
    assert calls[0].error == 'the tool call has no "name"'
    _, calls = parse_text_calls('<tool_call>{"name": "search", "arguments": "not json"}</tool_call>')
    assert calls[0].name == "search" and "not valid JSON" in calls[0].error


@pytest.mark.parametrize("text", [
    "The capital of France is Paris.",
    'The answer is {"city": "Paris"}.',
    '```json\n{"city": "Paris", "country": "France"}\n```',
    '{"name": "Paris", "population": 2100000}',
])
def test_plain_answers_are_not_mistaken_for_calls(text):
    assert parse_text_calls(text) == (text, [])
