"""response_format json_schema: the schema automaton accepts exactly the prefixes of matching documents,
and a schema it cannot enforce is a 400 naming the keyword (never accepted and ignored)."""

from __future__ import annotations

import json

import pytest

from dsa_runner import json_prefix, json_schema
from dsa_runner.protocol import BadRequest, parse_chat_request, render_prompt

PERSON = {"type": "object", "properties": {
    "name": {"type": "string"}, "age": {"type": "integer"}, "score": {"type": "number"},
    "tags": {"type": "array", "items": {"type": "string", "enum": ["a", "b"]}},
    "ok": {"type": "boolean"}, "pet": {"type": ["string", "null"]}, "meta": {},
    "size": {"enum": [1, 10, "big"]}}, "required": ["name", "age"], "additionalProperties": False}


def _done(schema: dict, text: str) -> bool | None:
    """True: the text is a whole matching document; False: a valid prefix only; None: refused."""
    state = json_prefix.advance(json_schema.initial_state(json_schema.compile_schema(schema)), text)
    return None if state is None else json_prefix.is_done(state)


@pytest.mark.parametrize("text", [
    '{"name": "Ann", "age": 3}',
    '{"age": -12,"name":"B\\u00e9"}',
    '{ "name": "x", "age": 0, "score": 1.5e3, "tags": ["a", "b", "a"], "ok": false, "pet": null }',
    '{"name": "x", "age": 1, "pet": "cat", "meta": {"any": [1, {"thing": null}]}, "size": 10}',
    '{"name": "x", "age": 1, "size": 1, "tags": []}',
    '{"name": "x", "age": 1, "size": "big"}',
])
def test_matching_documents_complete(text):
    assert _done(PERSON, text) is True
    for cut in range(1, len(text)):  # every prefix is allowed on the way
        assert _done(PERSON, text[:cut]) is not None, text[:cut]


@pytest.mark.parametrize("text", [
    '{"name": "x"}',  # age is required: the object cannot close
    '{"name": "x", "age": 1.5}',  # integer
    '{"name": 3, "age": 1}',  # string
    '{"name": "x", "age": 1, "extra": 1}',  # not a property
    '{"name": "x", "name": "y", "age": 1}',  # twice
    '{"name": "x", "age": 1, "tags": ["c"]}',  # enum
    '{"name": "x", "age": 1, "size": 2}',  # enum of numbers
    '{"name": "x", "age": 1, "ok": "yes"}',  # boolean
    '{"name": "x", "age": 1} trailing',
    '["name"]',
])
def test_mismatching_documents_are_refused(text):
    assert _done(PERSON, text) is not True


@pytest.mark.parametrize("schema, keyword", [
    ({"type": "object", "properties": {"a": {"type": "string", "pattern": "^a"}}}, "pattern"),
    ({"type": "object", "properties": {"a": {"$ref": "#/$defs/x"}}}, "$ref"),
    ({"type": "object", "properties": {"a": {"anyOf": [{"type": "string"}]}}}, "anyOf"),
    ({"type": "object", "properties": {"a": {"type": "integer", "minimum": 0}}}, "minimum"),
    ({"type": "object", "additionalProperties": {"type": "string"}}, "additionalProperties"),
    ({"type": "array", "items": {"type": "string"}}, "root must be an object"),
])
def test_unsupported_schemas_are_a_400_naming_the_keyword(schema, keyword):
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}],
            "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}}
    with pytest.raises(BadRequest) as err:
        parse_chat_request(body)
    assert err.value.status == 400 and err.value.code == "unsupported_schema"
    assert err.value.param == "response_format.json_schema.schema" and keyword in err.value.message


def test_the_schema_reaches_the_prompt_and_the_constraint():
    class Template:
        chat_template = "{{ messages }}"

        def apply_chat_template(self, messages, **kwargs):
            return json.dumps(messages)

    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}],
            "response_format": {"type": "json_schema", "json_schema": {"name": "p", "schema": PERSON}}}
    prompt = render_prompt(Template(), parse_chat_request(body))
    assert '\\"age\\"' in prompt.text  # the model is told the schema
    assert prompt.json_state is not None and json_prefix.advance(prompt.json_state, '{"nope"') is None
