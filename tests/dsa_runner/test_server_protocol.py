"""The protocol layer without the model: request validation, output parsing (reasoning, tool calls,
streaming splits) and the JSON-prefix automaton that backs response_format json_object."""

import json

import pytest

from dsa_runner import json_prefix
from dsa_runner.protocol import BadRequest, OutputParser, parse_chat_request, parse_output

BASE = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


@pytest.mark.parametrize("patch, param", [
    ({"n": 0}, "n"),
    ({"n": 500}, "n"),
    ({"temperature": 3}, "temperature"),
    ({"top_p": -0.1}, "top_p"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, "messages[0].content[0]"),
    ({"tools": [{"type": "function", "function": {"name": "bad name!"}}]}, "tools[0].function.name"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"response_format": {"type": "xml"}}, "response_format"),
    ({"presence_penalty": 0.5}, "presence_penalty"),
    ({"logprobs": True}, "logprobs"),
])
def test_bad_requests_name_the_field(patch, param):
    with pytest.raises(BadRequest) as err:
        parse_chat_request({**BASE, **patch})
    assert err.value.param == param and err.value.status == 400


def test_request_fields_are_read():
    req = parse_chat_request({**BASE, "n": 3, "temperature": 0, "top_p": 0.5, "max_completion_tokens": 7,
                              "stop": "END", "seed": 5, "stream": True, "stream_options": {"include_usage": True},
                              "response_format": {"type": "json_object"},
                              "tools": [{"type": "function", "function": {"name": "f"}}],
                              "tool_choice": {"type": "function", "function": {"name": "f"}}})
    assert (req.n, req.temperature, req.top_p, req.max_tokens, req.stop, req.seed) == (3, 0.0, 0.5, 7, ("END",), 5)
    assert req.stream and req.include_usage and req.json_object and req.tool_choice == {"name": "f"}


def test_tool_calls_and_reasoning_are_split_from_content():
    text = ('<think>the user wants weather</think>Let me look.\n<tool_call>\n{"name": "get_weather", '
            '"arguments": {"city": "Paris"}}\n</tool_call>')
    out = parse_output(text, tools=True)
    assert out["reasoning_content"] == "the user wants weather"
    assert out["content"] == "Let me look."
    [call] = out["tool_calls"]
    assert call.name == "get_weather" and json.loads(call.arguments) == {"city": "Paris"}


def test_unparsable_tool_call_stays_in_content_and_tags_are_plain_text_without_tools():
    out = parse_output("<tool_call>not json</tool_call>", tools=True)
    assert out["tool_calls"] == [] and "not json" in out["content"]
    assert parse_output("<tool_call>{}</tool_call>", tools=False)["content"] == "<tool_call>{}</tool_call>"


def test_streaming_parser_holds_back_partial_markers():
    parser = OutputParser(tools=True)
    pieces = []
    for chunk in ["Hel", "lo <tool", "_call>{\"name\": \"f\", \"argu", "ments\": {}}</tool_call>", " bye"]:
        pieces += parser.feed(chunk)
    rest, calls = parser.finish()
    pieces += rest
    assert "".join(t for _, t in pieces) == "Hello  bye"
    assert not any("<tool" in t for _, t in pieces)
    assert [c.name for c in calls] == ["f"]


def test_json_prefix_accepts_objects_and_rejects_the_rest():
    for good in ['{}', ' {"a": [1, -2.5e3, true, null, {"b": "\\u00e9\\n"}]}']:
        state = json_prefix.advance(json_prefix.INITIAL, good)
        assert state is not None and json_prefix.is_done(state)
    for bad in ['[1]', '{"a" 1}', '{"a": 01}', '{a: 1}', '{"a": 1,}', 'hello']:
        state = json_prefix.advance(json_prefix.INITIAL, bad)
        assert state is None or not json_prefix.is_done(state)


def test_json_prefix_tool_call_names_are_constrained():
    state = json_prefix.tool_call_state(["get_weather", "get_time"])
    assert json_prefix.advance(state, "get_x") is None
    assert json_prefix.advance(state, 'get_time", "arguments": []') is None  # arguments must be an object
    done = json_prefix.advance(state, 'get_time", "arguments": {"tz": "UTC"}}')
    assert done is not None and json_prefix.is_done(done)
