"""Which texts can still grow into one JSON object: the automaton behind ``response_format: json_object``
(and the lexer of ``json_schema``'s, whose states it hands over).

Constrained decoding: at each step the engine keeps only tokens whose text extends the output to a valid
*prefix* of a JSON object (RFC 8259 grammar, top level an object), and finishes the choice as soon as the
object is closed. The output therefore always parses, unless ``max_tokens`` cuts it short
(``finish_reason: "length"``, as with OpenAI).

A state is an immutable tuple ``(mode, stack, aux)`` so that trying a candidate token costs no copy:
``advance(state, text)`` returns the new state or None when ``text`` cannot follow.
"""

from __future__ import annotations

# modes
START, OBJ_FIRST, OBJ_KEY, KEY_STR, VAL_STR, ESC, UNI, COLON, VALUE, ARR_FIRST, AFTER, LIT, DONE = range(13)
OBJ_VALUE, ENUM, FORCE = range(13, 16)  # an object value; one of fixed strings; fixed text
SCHEMA = 30  # a json_schema state: (SCHEMA, frames, pos, ws), stepped by dsa_runner.json_schema
N_MINUS, N_ZERO, N_INT, N_DOT, N_FRAC, N_E, N_ESIGN, N_EXP = range(20, 28)

_WS = " \t\n\r"
_MAX_WS_RUN = 4  # a model stuck on newlines would otherwise never close the object
_DIGITS = "0123456789"
_ESCAPES = '"\\/bfnrtu'
_HEX = "0123456789abcdefABCDEF"
_NUMBER_END = {N_ZERO, N_INT, N_FRAC, N_EXP}

State = tuple  # (mode, stack: str of "{" / "[", aux)

INITIAL: State = (START, "", 0)


def tool_call_state(names: list[str]) -> State:
    """The state inside ``{"name": "`` of a tool call: the name must be one of ``names``, then comes
    ``, "arguments": `` and an object; the call object may then close."""
    then = (FORCE, "{", (', "arguments": ', (OBJ_VALUE, "{", 0)))
    return (ENUM, "{", (tuple(name + '"' for name in names), then))


def arguments_state() -> State:
    """The state after ``{"name": "X", "arguments": ``: an object must follow, then the call closes."""
    return (OBJ_VALUE, "{", 0)


def is_done(state: State) -> bool:
    if state[0] == SCHEMA:
        from dsa_runner import json_schema

        return json_schema.is_done(state)
    return state[0] == DONE


def _close(stack: str) -> State:
    stack = stack[:-1]
    return (DONE, "", 0) if not stack else (AFTER, stack, 0)


def _whitespace(mode: int, stack: str, aux: int, ch: str) -> State | None:
    # aux counts the current run of whitespace in modes that allow it
    return (mode, stack, aux + 1) if aux < _MAX_WS_RUN else None


def _value_start(stack: str, ch: str) -> State | None:
    if ch == "{":
        return (OBJ_FIRST, stack + "{", 0)
    if ch == "[":
        return (ARR_FIRST, stack + "[", 0)
    if ch == '"':
        return (VAL_STR, stack, 0)
    if ch == "-":
        return (N_MINUS, stack, 0)
    if ch == "0":
        return (N_ZERO, stack, 0)
    if ch in _DIGITS:
        return (N_INT, stack, 0)
    for word in ("true", "false", "null"):
        if ch == word[0]:
            return (LIT, stack, word[1:])
    return None


def _step(state: State, ch: str) -> State | None:
    mode, stack, aux = state
    if mode in (VAL_STR, KEY_STR):
        if ch == '"':
            return (COLON, stack, 0) if mode == KEY_STR else (AFTER, stack, 0)
        if ch == "\\":
            return (ESC, stack, mode)
        if ord(ch) < 0x20:
            return None
        return state
    if mode == ESC:
        if ch not in _ESCAPES:
            return None
        return (UNI, stack, (aux, 4)) if ch == "u" else (aux, stack, 0)
    if mode == UNI:
        back, left = aux
        if ch not in _HEX:
            return None
        return (back, stack, 0) if left == 1 else (UNI, stack, (back, left - 1))
    if mode >= N_MINUS:
        nxt = _number_step(mode, ch)
        if nxt is not None:
            return (nxt, stack, 0)
        if mode not in _NUMBER_END:
            return None
        return _step((AFTER, stack, 0), ch)
    if mode == ENUM:
        options, then = aux
        rest = tuple(o[1:] for o in options if o[0] == ch)
        if not rest:
            return None
        return then if "" in rest else (ENUM, stack, (rest, then))
    if mode == FORCE:
        text, then = aux
        if ch != text[0]:
            return None
        return then if len(text) == 1 else (FORCE, stack, (text[1:], then))
    if mode == LIT:
        if ch != aux[0]:
            return None
        return (AFTER, stack, 0) if len(aux) == 1 else (LIT, stack, aux[1:])
    if ch in _WS and mode in (START, OBJ_FIRST, OBJ_KEY, COLON, VALUE, ARR_FIRST, AFTER, OBJ_VALUE):
        return _whitespace(mode, stack, aux, ch)
    if mode == START:
        return (OBJ_FIRST, "{", 0) if ch == "{" else None
    if mode == OBJ_VALUE:
        return (OBJ_FIRST, stack + "{", 0) if ch == "{" else None
    if mode == OBJ_FIRST:
        if ch == "}":
            return _close(stack)
        return (KEY_STR, stack, 0) if ch == '"' else None
    if mode == OBJ_KEY:
        return (KEY_STR, stack, 0) if ch == '"' else None
    if mode == COLON:
        return (VALUE, stack, 0) if ch == ":" else None
    if mode == VALUE:
        return _value_start(stack, ch)
    if mode == ARR_FIRST:
        if ch == "]":
            return _close(stack)
        return _value_start(stack, ch)
    if mode == AFTER:
        top = stack[-1]
        if ch == ",":
            return (OBJ_KEY, stack, 0) if top == "{" else (VALUE, stack, 0)
        if (ch == "}" and top == "{") or (ch == "]" and top == "["):
            return _close(stack)
        return None
    return None  # DONE accepts nothing


def _number_step(mode: int, ch: str) -> int | None:
    digit = ch in _DIGITS
    if mode == N_MINUS:
        return N_ZERO if ch == "0" else (N_INT if digit else None)
    if mode in (N_ZERO, N_INT):
        if ch == ".":
            return N_DOT
        if ch in "eE":
            return N_E
        return N_INT if (digit and mode == N_INT) else None
    if mode in (N_DOT, N_FRAC):
        if digit:
            return N_FRAC
        return N_E if (ch in "eE" and mode == N_FRAC) else None
    if mode == N_E:
        return N_ESIGN if ch in "+-" else (N_EXP if digit else None)
    if mode in (N_ESIGN, N_EXP):
        return N_EXP if digit else None
    return None


def advance(state: State, text: str) -> State | None:
    """The state after ``text``, or None when the output would stop being a JSON-object prefix."""
    if state[0] == SCHEMA:
        from dsa_runner import json_schema

        return json_schema.advance(state, text)
    for ch in text:
        state = _step(state, ch)
        if state is None:
            return None
    return state
