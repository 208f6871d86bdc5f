"""Tool calls that a model wrote as text instead of the endpoint's `tool_calls` field.

Small and older models, and endpoints started without a tool-call parser, put the call in the message text.
The forms read here:

- Hermes / Qwen: ``<tool_call>{"name": "search", "arguments": {...}}</tool_call>`` (the closing tag may be
  missing when generation stopped on it; ``<function_call>`` is read the same way);
- Llama 3: ``<function=search>{"query": "..."}</function>``;
- Mistral: ``[TOOL_CALLS][{"name": ..., "arguments": ...}]``;
- a fenced block (```` ```json ````, ```` ```tool_call ````) or the whole message being such a JSON object or
  list, when the object has a ``name`` and ``arguments`` (or ``parameters``) and nothing else of note.

A call whose JSON cannot be read is returned with an `error`, so the loop can tell the model what was wrong
instead of stopping.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

_TAGGED = re.compile(r"<(tool_call|function_call)>\s*(.*?)\s*(?:</\1>|$)", re.S)
_LLAMA = re.compile(r"<function=([A-Za-z0-9_.-]+)>\s*(.*?)\s*</function>", re.S)
_MISTRAL = re.compile(r"\[TOOL_CALLS\]\s*(.*)$", re.S)
_FENCED = re.compile(r"```[ \t]*(json|tool_call|tool|function_call)?[ \t]*\n(.*?)```", re.S)
_TRAILING_COMMA = re.compile(r",\s*([}\]])")
_CALL_KEYS = {"name", "arguments", "parameters", "id", "type", "function"}


@dataclass
class TextCall:
    """One tool call read from text: `name` and `arguments`, or an `error` saying why it could not be read."""

    name: str | None
    arguments: dict[str, Any] | None
    raw: str
    error: str | None = None


def parse_text_calls(content: str | None) -> tuple[str, list[TextCall]]:
    """(the text with the calls taken out, the calls in order); no calls: (content, [])."""
    if not content:
        return content or "", []
    for reader in (_read_tagged, _read_llama, _read_mistral, _read_fenced, _read_whole):
        rest, calls = reader(content)
        if calls:
            return rest.strip(), calls
    return content, []


def _read_tagged(content: str) -> tuple[str, list[TextCall]]:
    calls: list[TextCall] = []
    for match in _TAGGED.finditer(content):
        calls.extend(_calls_from_json(match.group(2), strict=True))
    return _TAGGED.sub("", content), calls


def _read_llama(content: str) -> tuple[str, list[TextCall]]:
    calls = []
    for match in _LLAMA.finditer(content):
        name, body = match.group(1), match.group(2)
        value, error = _load_json(body or "{}")
        if error:
            calls.append(TextCall(name, None, match.group(0), f"the arguments of {name} are not valid JSON: {error}"))
        elif not isinstance(value, dict):
            calls.append(TextCall(name, None, match.group(0), f"the arguments of {name} must be a JSON object"))
        else:
            calls.append(TextCall(name, value, match.group(0)))
    return _LLAMA.sub("", content), calls


def _read_mistral(content: str) -> tuple[str, list[TextCall]]:
    match = _MISTRAL.search(content)
    if not match:
        return content, []
    return content[:match.start()], _calls_from_json(match.group(1), strict=True)


def _read_fenced(content: str) -> tuple[str, list[TextCall]]:
    calls: list[TextCall] = []
    spans = []
    for match in _FENCED.finditer(content):
        found = _calls_from_json(match.group(2), strict=match.group(1) in ("tool_call", "tool", "function_call"))
        if found:
            calls.extend(found)
            spans.append(match.span())
    rest = content
    for start, end in reversed(spans):
        rest = rest[:start] + rest[end:]
    return rest, calls


def _read_whole(content: str) -> tuple[str, list[TextCall]]:
    text = content.strip()
    if not text or text[0] not in "[{":
        return content, []
    return "", _calls_from_json(text, strict=False)


def _calls_from_json(body: str, *, strict: bool) -> list[TextCall]:
    """Calls in a JSON body. `strict`: the body was marked as a tool call, so anything unreadable is reported
    as a malformed call; otherwise only a body that clearly is a call counts."""
    value, error = _load_json(body)
    if error:
        return [TextCall(None, None, body, f"the tool call is not valid JSON: {error}")] if strict else []
    items = value if isinstance(value, list) else [value]
    if not strict and not all(_looks_like_call(item) for item in items):
        return []
    if not items:
        return [TextCall(None, None, body, "the tool call is empty")] if strict else []
    return [_call_from_object(item, body) for item in items]


def _looks_like_call(item: Any) -> bool:
    if not isinstance(item, dict):
        return False
    if isinstance(item.get("function"), dict):
        item = item["function"]
    return (isinstance(item.get("name"), str) and ("arguments" in item or "parameters" in item)
            and set(item) <= _CALL_KEYS)


def _call_from_object(item: Any, raw: str) -> TextCall:
    if not isinstance(item, dict):
        return TextCall(None, None, raw, "a tool call must be a JSON object with \"name\" and \"arguments\"")
    if isinstance(item.get("function"), dict):
        item = item["function"]
    name = item.get("name")
    if not isinstance(name, str) or not name:
        return TextCall(None, None, raw, "the tool call has no \"name\"")
    arguments = item.get("arguments", item.get("parameters", {}))
    if isinstance(arguments, str):
        arguments, error = _load_json(arguments or "{}")
        if error:
            return TextCall(name, None, raw, f"the arguments of {name} are not valid JSON: {error}")
    if arguments is None:
        arguments = {}
    if not isinstance(arguments, dict):
        return TextCall(name, None, raw, f"the arguments of {name} must be a JSON object")
    return TextCall(name, arguments, raw)


def _load_json(text: str) -> tuple[Any, str | None]:
    text = text.strip()
    try:
        return json.loads(text), None
    except ValueError as first:
        cleaned = _TRAILING_COMMA.sub(r"\1", text)
        try:
            value, end = json.JSONDecoder().raw_decode(cleaned)
            if cleaned[end:].strip() in ("", "}", "]"):  # a stray closing bracket after a complete value
                return value, None
        except ValueError:
            pass
        return None, str(first)
