"""Constrained decoding to a JSON schema: the automaton behind ``response_format: json_schema``.

``compile_schema`` turns a schema into nodes, or raises ``UnsupportedSchema`` naming the first keyword it
cannot enforce (the server answers 400: a schema is honoured or refused, never accepted and ignored).
The subset enforced:

* ``type``: object, array, string, number, integer, boolean, null, or a list of them;
* objects: ``properties`` (only those keys are written, each at most once, in any order), ``required``
  (the object cannot close before they are all there), ``additionalProperties: false`` (the default
  here: no other keys are written, which every schema of this subset allows);
* arrays: ``items``; ``enum`` and ``const`` of any JSON values; ``{}`` or no ``type``: any JSON value;
* annotations are ignored: ``title``, ``description``, ``default``, ``examples``, ``$schema``,
  ``$comment``, and ``strict`` beside the schema.

Refused: ``$ref``/``$defs``, ``anyOf``/``oneOf``/``allOf``/``not``, string ``pattern``/``format``/
lengths, numeric bounds, ``minItems``/``maxItems``, ``additionalProperties`` other than false,
``patternProperties`` and the like; the root must be an object.

A state is an immutable tuple ``(SCHEMA, frames, pos, ws)``, stepped one character at a time like
``json_prefix``'s (which lexes the strings, numbers and literals inside): ``frames`` are the open
objects and arrays, innermost last; ``pos`` says what comes next. ``json_prefix.advance`` and
``is_done`` hand schema states here, so the engine does not tell the two apart.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from dsa_runner import json_prefix as jp

SCHEMA = jp.SCHEMA
_ANNOTATIONS = {"title", "description", "default", "examples", "$schema", "$comment", "$id"}
_TYPES = ("object", "array", "string", "number", "integer", "boolean", "null")
_STARTS = {"object": "{", "array": "[", "string": '"', "number": "-0123456789", "integer": "-0123456789",
           "boolean": "tf", "null": "n"}
_DONE = ("done",)


class UnsupportedSchema(ValueError):
    """A schema (or a part of it) this server cannot enforce; the message names the keyword and where."""


@dataclass(eq=False)
class Node:
    kind: str  # one of _TYPES, "enum", "union", "any"
    properties: dict[str, "Node"] = field(default_factory=dict)
    required: frozenset = frozenset()
    items: "Node | None" = None
    options: tuple = ()  # enum: the JSON texts; union: the nodes


def compile_schema(schema, where: str = "schema") -> Node:
    """The root node of ``schema`` (an object schema), or UnsupportedSchema."""
    root = _compile(schema, where)
    if root.kind != "object":
        raise UnsupportedSchema(f"{where}: the root must be an object schema (\"type\": \"object\")")
    return root


def _compile(schema, where: str) -> Node:
    if schema is True or schema == {}:
        return Node("any")
    if not isinstance(schema, dict):
        raise UnsupportedSchema(f"{where}: a schema must be an object")
    known = _ANNOTATIONS | {"type", "properties", "required", "additionalProperties", "items", "enum", "const"}
    for key in schema:
        if key not in known:
            raise UnsupportedSchema(f"{where}: {key!r} is not supported (supported: type, properties, required, "
                                    "additionalProperties: false, items, enum, const)")
    if "const" in schema or "enum" in schema:
        values = [schema["const"]] if "const" in schema else schema["enum"]
        if not isinstance(values, list) or not values:
            raise UnsupportedSchema(f"{where}.enum: must be a non-empty list")
        return Node("enum", options=tuple(json.dumps(v, ensure_ascii=False, separators=(", ", ": "))
                                          for v in values))
    kind = schema.get("type")
    if kind is None:
        if any(k in schema for k in ("properties", "required", "additionalProperties")):
            kind = "object"
        elif "items" in schema:
            kind = "array"
        else:
            return Node("any")
    if isinstance(kind, list):
        if not kind or not all(k in _TYPES for k in kind):
            raise UnsupportedSchema(f"{where}.type: expected types among {', '.join(_TYPES)}")
        if "number" in kind and "integer" in kind:
            kind = [k for k in kind if k != "integer"]
        if len(kind) > 1:
            return Node("union", options=tuple(_compile({**schema, "type": k}, where) for k in kind))
        kind = kind[0]
    if kind not in _TYPES:
        raise UnsupportedSchema(f"{where}.type: {kind!r} is not a JSON schema type")
    extra = [k for k in ("properties", "required", "additionalProperties") if k in schema and kind != "object"]
    extra += ["items"] if "items" in schema and kind != "array" else []
    if extra:
        raise UnsupportedSchema(f"{where}: {extra[0]!r} does not apply to type {kind!r}")
    if kind == "object":
        return _compile_object(schema, where)
    if kind == "array":
        return Node("array", items=_compile(schema.get("items", {}), f"{where}.items"))
    return Node(kind)


def _compile_object(schema: dict, where: str) -> Node:
    if schema.get("additionalProperties", False) is not False:
        raise UnsupportedSchema(f"{where}.additionalProperties: only false is supported (no keys beyond properties)")
    props = schema.get("properties", {})
    if not isinstance(props, dict):
        raise UnsupportedSchema(f"{where}.properties: must be an object")
    for name in props:
        if json.dumps(name, ensure_ascii=False)[1:-1] != name:
            raise UnsupportedSchema(f"{where}.properties: the name {name!r} needs escapes, which is not supported")
    required = schema.get("required", [])
    if not isinstance(required, list) or not all(isinstance(r, str) for r in required):
        raise UnsupportedSchema(f"{where}.required: must be a list of property names")
    missing = [r for r in required if r not in props]
    if missing:
        raise UnsupportedSchema(f"{where}.required: {missing[0]!r} is not among properties")
    nodes = {name: _compile(sub, f"{where}.properties.{name}") for name, sub in props.items()}
    return Node("object", properties=nodes, required=frozenset(required))


# ------------------------------------------------------------------------------------------------
# the automaton


def initial_state(root: Node) -> tuple:
    return (SCHEMA, (), ("value", root), 0)


def is_done(state: tuple) -> bool:
    return state[2] == _DONE


def advance(state: tuple, text: str) -> tuple | None:
    """The state after ``text``, or None when the output would stop being a prefix of a matching value."""
    _, frames, pos, ws = state
    for ch in text:
        stepped = _step(frames, pos, ws, ch)
        if stepped is None:
            return None
        frames, pos, ws = stepped
    return (SCHEMA, frames, pos, ws)


def _after(frames: tuple) -> tuple:
    """Where a completed value leaves us: after an object's value, after an array's item, or done."""
    if not frames:
        return _DONE
    return ("obj", "after") if frames[-1][0] == "obj" else ("arr", "after")


def _remaining(frame) -> list[str]:
    _, node, seen, _ = frame
    return [name for name in node.properties if name not in seen]


def _can_close(frame) -> bool:
    _, node, seen, _ = frame
    return node.required <= seen


def _space(frames, pos, ws):
    return (frames, pos, ws + 1) if ws < jp._MAX_WS_RUN else None


def _start_value(frames: tuple, node: Node, ch: str):
    kind = node.kind
    if kind == "union":
        for option in node.options:
            started = _start_value(frames, option, ch)
            if started is not None:
                return started
        return None
    if kind == "enum":
        rest = tuple(o[1:] for o in node.options if o[0] == ch)
        return (frames, ("enum", rest), 0) if rest else None
    if kind == "object":
        return (frames + (("obj", node, frozenset(), None),), ("obj", "first"), 0) if ch == "{" else None
    if kind == "array":
        return (frames + (("arr", node),), ("arr", "first"), 0) if ch == "[" else None
    if kind != "any" and ch not in _STARTS[kind]:
        return None
    inner = jp._value_start("[", ch)  # lexed as an item of an array json_prefix never closes
    return None if inner is None else (frames, ("scalar", node, inner), 0)


def _step(frames: tuple, pos: tuple, ws: int, ch: str):
    kind = pos[0]
    if kind == "scalar":
        node, inner = pos[1], pos[2]
        complete = (inner[0] == jp.AFTER and inner[1] == "[") or (
            inner[0] in jp._NUMBER_END and inner[1] == "[" and jp._number_step(inner[0], ch) is None)
        if complete:  # the character belongs to what follows the value
            return _step(frames, _after(frames), 0, ch)
        nxt = jp._step(inner, ch)
        if nxt is None or (node.kind == "integer" and nxt[0] in (jp.N_DOT, jp.N_E)):
            return None
        return frames, ("scalar", node, nxt), 0
    if kind == "enum":
        options = pos[1]
        rest = tuple(o[1:] for o in options if o and o[0] == ch)
        if rest:
            return frames, ("enum", rest), 0
        return _step(frames, _after(frames), 0, ch) if "" in options else None
    if kind == "key":
        frame = frames[-1]
        names = _remaining(frame)
        if ch == '"':
            if pos[1] not in names:
                return None
            _, node, seen, _ = frame
            return frames[:-1] + (("obj", node, seen | {pos[1]}, pos[1]),), ("obj", "colon"), 0
        typed = pos[1] + ch
        return (frames, ("key", typed), 0) if any(n.startswith(typed) for n in names) else None
    if ch in jp._WS and kind in ("value", "obj", "arr"):
        return _space(frames, pos, ws)
    if kind == "value":
        return _start_value(frames, pos[1], ch)
    if kind == "obj":
        frame, phase = frames[-1], pos[1]
        if phase == "colon":
            return (frames, ("value", frame[1].properties[frame[3]]), 0) if ch == ":" else None
        if ch == '"' and phase in ("first", "key") and _remaining(frame):
            return frames, ("key", ""), 0
        if ch == "}" and phase in ("first", "after") and _can_close(frame):
            return frames[:-1], _after(frames[:-1]), 0
        if ch == "," and phase == "after" and _remaining(frame):
            return frames, ("obj", "key"), 0
        return None
    if kind == "arr":
        items, phase = frames[-1][1].items, pos[1]
        if ch == "]" and phase in ("first", "after"):
            return frames[:-1], _after(frames[:-1]), 0
        if phase == "first":
            return _start_value(frames, items, ch)
        if ch == "," and phase == "after":
            return frames, ("value", items), 0
        return None
    return None  # done: nothing may follow
