"""Tools: Python callables that an agent may call, described to the model by a JSON schema.

The schema comes from the callable itself: parameter types from its type hints, the tool's description from
the first paragraph of its docstring, and each parameter's description from the docstring's ``Args:``
section (Google style)::

    @tool
    def search(query: str, limit: int = 5) -> list[dict]:
        \"\"\"Search the corpus.

        Args:
            query: Words to look for.
            limit: How many hits to return.
        \"\"\"

Tools are our own code (search, a bash shell inside a container): the loop runs them in this process, sync
ones in a worker thread so that one slow tool does not hold up the other agents. Code written by a model is
never a tool; it runs only inside a sandbox that a tool drives.
"""

from __future__ import annotations

import asyncio
import enum
import inspect
import json
import re
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from agent.errors import AgentError

TOOL_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_ARGS_HEADER = re.compile(r"^\s*(Args|Arguments|Parameters)\s*:\s*$")
_OTHER_HEADER = re.compile(r"^\s*(Returns|Return|Raises|Yields|Examples?|Notes?|See Also)\s*:\s*$")
_ARG_LINE = re.compile(r"^(\s*)\*{0,2}([A-Za-z_][A-Za-z0-9_]*)\s*(\([^)]*\))?\s*:\s*(.*)$")

_REGISTRY: dict[str, Tool] = {}


@dataclass(frozen=True)
class Tool:
    """A callable with the name, description and parameter schema the model sees."""

    name: str
    description: str
    parameters: dict[str, Any]
    fn: Callable[..., Any]

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)

    def spec(self) -> dict[str, Any]:
        """The entry for the `tools` list of a chat completion request."""
        return {"type": "function",
                "function": {"name": self.name, "description": self.description, "parameters": self.parameters}}

    def check(self, arguments: Any) -> list[str]:
        """What is wrong with these arguments, as sentences the model can act on (empty: nothing)."""
        if not isinstance(arguments, dict):
            return [f"arguments must be a JSON object, got {type(arguments).__name__}"]
        return _check_object(self.parameters, arguments, "")

    async def invoke(self, arguments: dict[str, Any]) -> str:
        """Run the tool with checked arguments; the result as text for a `tool` message."""
        kwargs = _convert_enums(self.fn, arguments)
        if inspect.iscoroutinefunction(self.fn):
            result = await self.fn(**kwargs)
        else:
            result = await asyncio.to_thread(self.fn, **kwargs)
        return result_text(result)


def tool(fn: Callable[..., Any] | None = None, *, name: str | None = None, description: str | None = None,
         register: bool = True):
    """Decorator: make `fn` a `Tool` (still callable as before) and register it under its name, so a role's
    `tools = ["name", ...]` in the config can select it."""

    def wrap(f: Callable[..., Any]) -> Tool:
        made = as_tool(f, name=name, description=description)
        if register:
            registered = _REGISTRY.get(made.name)
            if registered is not None and _origin(registered.fn) != _origin(f):
                raise AgentError(f"two different tools are named {made.name!r}: {_origin(registered.fn)} and "
                                 f"{_origin(f)}")
            _REGISTRY[made.name] = made
        return made

    return wrap(fn) if fn is not None else wrap


def as_tool(fn: Callable[..., Any] | Tool, *, name: str | None = None, description: str | None = None) -> Tool:
    """`fn` as a `Tool` (a `Tool` is returned as it is)."""
    if isinstance(fn, Tool):
        return fn
    tool_name = name or fn.__name__
    if not TOOL_NAME.match(tool_name):
        raise AgentError(f"tool name {tool_name!r} must be 1-64 letters, digits, '_' or '-'")
    summary, _ = parse_docstring(inspect.getdoc(fn) or "")
    return Tool(name=tool_name, description=description or summary or tool_name, parameters=schema_for(fn), fn=fn)


def registered_tool(name: str) -> Tool:
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY)) or "none"
        raise AgentError(f"no tool named {name!r} is registered (registered: {known}); decorate it with "
                         "@agent.tool and import its module first") from None


def resolve_tools(tools: Sequence[Callable[..., Any] | Tool] | None, names: Sequence[str] = ()) -> list[Tool]:
    """The tools an agent gets: the given ones, or the registered ones that the role names.

    When both are given, the role's names select among the given tools (a name that is not among them is
    an error, so a config typo does not silently leave an agent without its tool)."""
    if tools is None:
        return [registered_tool(n) for n in names]
    made = [as_tool(t) for t in tools]
    by_name: dict[str, Tool] = {}
    for t in made:
        if t.name in by_name:
            raise AgentError(f"two tools given to one agent are named {t.name!r}")
        by_name[t.name] = t
    if not names:
        return made
    missing = [n for n in names if n not in by_name]
    if missing:
        raise AgentError(f"the role names tools {missing} that this agent was not given "
                         f"(given: {', '.join(by_name) or 'none'})")
    return [by_name[n] for n in names]


# ---------------------------------------------------------------------------------------------- schema


def schema_for(fn: Callable[..., Any]) -> dict[str, Any]:
    """The JSON schema (an object) of `fn`'s parameters, from its type hints and its docstring's Args."""
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError) as exc:
        raise AgentError(f"cannot read the signature of {fn!r}: {exc}") from None
    try:
        hints = typing.get_type_hints(fn, include_extras=True)
    except Exception as exc:  # noqa: BLE001 - a hint that does not resolve is the tool author's error
        raise AgentError(f"cannot resolve the type hints of {_origin(fn)}: {exc}") from None
    _, arg_docs = parse_docstring(inspect.getdoc(fn) or "")
    properties: dict[str, Any] = {}
    required: list[str] = []
    for pname, param in signature.parameters.items():
        if pname in ("self", "cls"):
            continue
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            raise AgentError(f"tool {_origin(fn)} takes *{pname}; a tool's parameters must be named")
        if param.kind is param.POSITIONAL_ONLY:
            raise AgentError(f"tool {_origin(fn)} has positional-only parameter {pname!r}")
        prop = type_schema(hints.get(pname, Any), where=f"{_origin(fn)}({pname})")
        if pname in arg_docs and "description" not in prop:
            prop["description"] = arg_docs[pname]
        if param.default is param.empty:
            required.append(pname)
        elif param.default is not None and _json_able(param.default):
            prop["default"] = param.default.value if isinstance(param.default, enum.Enum) else param.default
        properties[pname] = prop
    schema: dict[str, Any] = {"type": "object", "properties": properties, "additionalProperties": False}
    if required:
        schema["required"] = required
    return schema


def type_schema(hint: Any, *, where: str = "") -> dict[str, Any]:
    """The JSON schema of one type hint."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is typing.Annotated:
        schema = type_schema(args[0], where=where)
        notes = [a for a in args[1:] if isinstance(a, str)]
        if notes:
            schema["description"] = " ".join(notes)
        return schema
    if hint is Any or hint is inspect.Parameter.empty or hint is object:
        return {}
    if origin in (typing.Union, types.UnionType):
        options = [a for a in args if a is not type(None)]
        if len(options) == 1:
            return type_schema(options[0], where=where)
        return {"anyOf": [type_schema(a, where=where) for a in options]}
    if origin is typing.Literal:
        values = list(args)
        schema = {"enum": values}
        kinds = {_json_type(v) for v in values}
        if len(kinds) == 1:
            schema["type"] = kinds.pop()
        return schema
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        values = [m.value for m in hint]
        schema = {"enum": values}
        kinds = {_json_type(v) for v in values}
        if len(kinds) == 1:
            schema["type"] = kinds.pop()
        return schema
    simple = {str: "string", int: "integer", float: "number", bool: "boolean", type(None): "null"}
    if hint in simple:
        return {"type": simple[hint]}
    if hint in (list, tuple, set, frozenset) or origin in (list, tuple, set, frozenset, Sequence,
                                                           typing.get_origin(Sequence[int])):
        item_args = [a for a in args if a is not Ellipsis]
        schema = {"type": "array"}
        if item_args:
            schema["items"] = type_schema(item_args[0], where=where)
        return schema
    if hint is dict or origin in (dict, Mapping) or hint is Mapping:
        schema = {"type": "object"}
        if len(args) == 2 and args[1] is not Any:
            schema["additionalProperties"] = type_schema(args[1], where=where)
        return schema
    if typing.is_typeddict(hint):
        inner = typing.get_type_hints(hint)
        return {"type": "object", "properties": {k: type_schema(v, where=where) for k, v in inner.items()},
                "required": sorted(getattr(hint, "__required_keys__", inner))}
    raise AgentError(f"tool parameter {where} has type {hint!r}, which has no JSON schema here; use str, int, "
                     "float, bool, list, dict, Literal, an Enum or a TypedDict")


def parse_docstring(doc: str) -> tuple[str, dict[str, str]]:
    """(description, {parameter: description}) of a Google-style docstring."""
    lines = doc.expandtabs().splitlines()
    summary_lines: list[str] = []
    args: dict[str, str] = {}
    section = "summary"
    current: str | None = None
    arg_indent: int | None = None
    for line in lines:
        if _ARGS_HEADER.match(line):
            section, current, arg_indent = "args", None, None
            continue
        if _OTHER_HEADER.match(line):
            section, current = "other", None
            continue
        if section == "summary":
            summary_lines.append(line)
        elif section == "args":
            if not line.strip():
                current = None
                continue
            match = _ARG_LINE.match(line)
            indent = len(line) - len(line.lstrip())
            if match and (arg_indent is None or indent <= arg_indent):
                arg_indent = indent
                current = match.group(2)
                args[current] = match.group(4).strip()
            elif current is not None:
                args[current] = f"{args[current]} {line.strip()}".strip()
    paragraphs = "\n".join(summary_lines).strip().split("\n\n")
    summary = " ".join(paragraphs[0].split()) if paragraphs and paragraphs[0] else ""
    return summary, args


# ---------------------------------------------------------------------------------------------- checking


def _check_object(schema: dict[str, Any], value: dict[str, Any], where: str) -> list[str]:
    problems = []
    properties = schema.get("properties", {})
    for name in schema.get("required", []):
        if name not in value:
            problems.append(f"missing required argument '{where}{name}'")
    if schema.get("additionalProperties") is False:
        for name in value:
            if name not in properties:
                known = ", ".join(properties) or "none"
                problems.append(f"unknown argument '{where}{name}' (arguments: {known})")
    for name, item in value.items():
        if name in properties:
            problems.extend(_check_value(properties[name], item, f"{where}{name}"))
    return problems


def _check_value(schema: dict[str, Any], value: Any, where: str) -> list[str]:
    if "anyOf" in schema:
        if any(not _check_value(option, value, where) for option in schema["anyOf"]):
            return []
        return [f"argument '{where}' does not match any allowed type"]
    if "enum" in schema and value not in schema["enum"]:
        return [f"argument '{where}' must be one of {schema['enum']}, got {value!r}"]
    kind = schema.get("type")
    if kind is None:
        return []
    if not _is_json_type(value, kind):
        return [f"argument '{where}' must be {_A.get(kind, kind)}, got {_json_type(value)} {_short(value)}"]
    if kind == "array" and "items" in schema:
        return [p for i, item in enumerate(value) for p in _check_value(schema["items"], item, f"{where}[{i}]")]
    if kind == "object":
        if "properties" in schema:
            return _check_object(schema, value, f"{where}.")
        if isinstance(schema.get("additionalProperties"), dict):
            return [p for k, v in value.items()
                    for p in _check_value(schema["additionalProperties"], v, f"{where}.{k}")]
    return []


_A = {"string": "a string", "integer": "an integer", "number": "a number", "boolean": "true or false",
      "array": "an array", "object": "an object", "null": "null"}


def _is_json_type(value: Any, kind: str) -> bool:
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool) or (isinstance(value, float)
                                                                           and value.is_integer())
    if kind == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return _json_type(value) == kind


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, (list, tuple)):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _convert_enums(fn: Callable[..., Any], arguments: dict[str, Any]) -> dict[str, Any]:
    """Integers sent as 3.0 become 3; Enum parameters get their member instead of the raw value."""
    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # noqa: BLE001 - checked when the schema was made
        hints = {}
    converted = dict(arguments)
    for name, value in arguments.items():
        hint = hints.get(name)
        if hint is int and isinstance(value, float):
            converted[name] = int(value)
        elif isinstance(hint, type) and issubclass(hint, enum.Enum):
            converted[name] = hint(value)
    return converted


def result_text(result: Any) -> str:
    if isinstance(result, str):
        return result
    if isinstance(result, bytes):
        return result.decode(errors="replace")
    return json.dumps(result, ensure_ascii=False, default=str)


def _short(value: Any, limit: int = 60) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= limit else text[:limit] + "..."


def _json_able(value: Any) -> bool:
    try:
        json.dumps(value.value if isinstance(value, enum.Enum) else value)
        return True
    except (TypeError, ValueError):
        return False


def _origin(fn: Callable[..., Any]) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"
