"""The OpenAI chat-completions protocol as the runner speaks it.

* ``parse_chat_request``: the request body -> ``ChatRequest``, or ``BadRequest`` naming the field
  (``param`` as OpenAI writes it: ``messages[2].content``).
* ``render_prompt``: messages (+ tools, tool_choice, response_format) -> the model's own chat template.
  Templates that know no tools (SmolLM2's does not) get the tool list in the system message and are
  asked to answer with ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` blocks; tool results
  go back as ``<tool_response>`` text. ``tool_choice: "required"`` or a named function makes the
  assistant's reply *start* with the call (a forced prefix) and constrains the rest to JSON.
* ``OutputParser``: the model's text -> ``reasoning_content`` (``<think>...</think>``), ``content`` and
  ``tool_calls``, incrementally (streaming) or at once.
* Response and chunk bodies in OpenAI's shape, and ``error_body``.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from dsa_runner import json_prefix, json_schema

MAX_N = 128
MAX_STOP = 4


@dataclass(frozen=True)
class Limits:
    """What one request may ask for; beyond each, a 400 that names the limit. They bound the memory and
    the time one request can take (a body is held whole, a prompt is rendered and tokenised whole, and
    n x max_tokens is the decode work it may queue)."""

    max_body_bytes: int = 4 * 1024 * 1024
    max_messages: int = 1024
    max_message_chars: int = 256 * 1024  # a message's text; the context window refuses long prompts later
    max_tools: int = 128
    max_n: int = MAX_N
    default_max_tokens: int = 2048  # when the request sets none (and the context window leaves more)
    max_total_tokens: int = 65536  # n x max_tokens


DEFAULT_LIMITS = Limits()
ROLES = ("system", "developer", "user", "assistant", "tool")
_FN_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
CALL_OPEN, CALL_CLOSE = "<tool_call>", "</tool_call>"


class BadRequest(Exception):
    """A request the server refuses (HTTP 400 unless ``status`` says otherwise), with the field at fault."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None, status: int = 400,
                 type: str = "invalid_request_error"):
        super().__init__(message)
        self.message, self.param, self.code, self.status, self.type = message, param, code, status, type


def error_body(message: str, type: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


# ------------------------------------------------------------------------------------------------
# the request


@dataclass
class ChatRequest:
    model: str
    messages: list[dict]  # normalised: role, content (str), tool_calls (list | None), name, tool_call_id
    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int | None = None
    stop: tuple[str, ...] = ()
    seed: int | None = None
    stream: bool = False
    include_usage: bool = False
    tools: list[dict] = field(default_factory=list)  # the "function" objects
    tool_choice: str | dict = "auto"  # "none" | "auto" | "required" | {"name": ...}
    json_object: bool = False
    json_schema: json_schema.Node | None = None  # response_format json_schema, compiled (enforced)
    json_schema_text: str = ""  # the schema as sent, for the system note


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _text_of(content, param: str) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for j, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise BadRequest("only text content parts ({\"type\": \"text\", \"text\": ...}) are supported",
                                 f"{param}[{j}]")
            texts.append(part["text"])
        return "".join(texts)
    raise BadRequest("content must be a string or a list of text parts", param)


def _parse_messages(messages, limits: Limits) -> list[dict]:
    if not isinstance(messages, list) or not messages:
        raise BadRequest("messages must be a non-empty list", "messages")
    if len(messages) > limits.max_messages:
        raise BadRequest(f"too many messages: {len(messages)}; this server's limit is {limits.max_messages}",
                         "messages", "too_many_messages")
    out = []
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise BadRequest("each message must be an object", where)
        role = m.get("role")
        if role not in ROLES:
            raise BadRequest(f"role must be one of {', '.join(ROLES)}; got {role!r}", f"{where}.role")
        if "content" not in m and not (role == "assistant" and m.get("tool_calls")):
            raise BadRequest("content is required", f"{where}.content")
        msg = {"role": role, "content": _text_of(m.get("content"), f"{where}.content")}
        if len(msg["content"]) > limits.max_message_chars:
            raise BadRequest(f"message too long: {len(msg['content'])} characters; this server's limit is "
                             f"{limits.max_message_chars} per message", f"{where}.content", "message_too_long")
        calls = m.get("tool_calls")
        if calls is not None:
            if role != "assistant" or not isinstance(calls, list):
                raise BadRequest("tool_calls must be a list, on assistant messages only", f"{where}.tool_calls")
            parsed = []
            for j, call in enumerate(calls):
                fn = call.get("function") if isinstance(call, dict) else None
                if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
                    raise BadRequest("a tool call needs function.name", f"{where}.tool_calls[{j}].function")
                args = fn.get("arguments", "{}")
                if isinstance(args, str):
                    try:
                        args = json.loads(args) if args.strip() else {}
                    except json.JSONDecodeError:
                        pass  # kept as text: the model sees what it wrote
                parsed.append({"id": call.get("id"), "name": fn["name"], "arguments": args})
            msg["tool_calls"] = parsed
        for key in ("name", "tool_call_id"):
            if isinstance(m.get(key), str):
                msg[key] = m[key]
        out.append(msg)
    return out


def _parse_tools(tools, limits: Limits) -> list[dict]:
    if tools is None:
        return []
    if not isinstance(tools, list):
        raise BadRequest("tools must be a list", "tools")
    if len(tools) > limits.max_tools:
        raise BadRequest(f"too many tools: {len(tools)}; this server's limit is {limits.max_tools}", "tools",
                         "too_many_tools")
    out = []
    for i, tool in enumerate(tools):
        where = f"tools[{i}]"
        if not isinstance(tool, dict) or tool.get("type", "function") != "function":
            raise BadRequest("only tools of type \"function\" are supported", f"{where}.type")
        fn = tool.get("function")
        if not isinstance(fn, dict):
            raise BadRequest("function is required", f"{where}.function")
        name = fn.get("name")
        if not isinstance(name, str) or not _FN_NAME.match(name):
            raise BadRequest("function.name must be 1-64 letters, digits, '_' or '-'", f"{where}.function.name")
        params = fn.get("parameters", {"type": "object", "properties": {}})
        if not isinstance(params, dict):
            raise BadRequest("function.parameters must be a JSON schema object", f"{where}.function.parameters")
        entry = {"name": name, "parameters": params}
        if isinstance(fn.get("description"), str):
            entry["description"] = fn["description"]
        out.append(entry)
    return out


def parse_chat_request(body: Any, limits: Limits = DEFAULT_LIMITS) -> ChatRequest:
    """Validates a /v1/chat/completions body against ``limits``. Unknown fields are ignored; fields we
    cannot honour (logprobs, penalties, unsupported JSON schemas) are refused rather than silently dropped.
    ``max_tokens`` stays None when the request sets none (the server then applies the default cap)."""
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequest("model is required", "model")
    req = ChatRequest(model=model, messages=_parse_messages(body.get("messages"), limits))

    n = body.get("n", 1)
    if n is not None:
        if not _is_int(n) or not 1 <= n <= limits.max_n:
            raise BadRequest(f"n must be an integer from 1 to {limits.max_n} (this server's limit)", "n")
        req.n = n
    t = body.get("temperature")
    if t is not None:
        if not _is_number(t) or not 0 <= t <= 2:
            raise BadRequest("temperature must be a number from 0 to 2", "temperature")
        req.temperature = float(t)
    p = body.get("top_p")
    if p is not None:
        if not _is_number(p) or not 0 <= p <= 1:
            raise BadRequest("top_p must be a number from 0 to 1", "top_p")
        req.top_p = float(p)
    for key in ("max_completion_tokens", "max_tokens"):
        value = body.get(key)
        if value is not None:
            if not _is_int(value) or value < 1:
                raise BadRequest(f"{key} must be a positive integer", key)
            req.max_tokens = value
            break
    budget = req.n * (req.max_tokens or limits.default_max_tokens)
    if budget > limits.max_total_tokens:
        shown = (f"max_tokens {req.max_tokens}" if req.max_tokens
                 else f"the default max_tokens {limits.default_max_tokens}")
        raise BadRequest(f"n x max_tokens is {budget} (n {req.n}, {shown}); this server's limit is "
                         f"{limits.max_total_tokens} tokens per request", "max_tokens" if req.max_tokens else "n",
                         "too_many_tokens")
    stop = body.get("stop")
    if stop is not None:
        stops = [stop] if isinstance(stop, str) else stop
        if (not isinstance(stops, list) or len(stops) > MAX_STOP
                or not all(isinstance(s, str) and s for s in stops)):
            raise BadRequest(f"stop must be a non-empty string or a list of at most {MAX_STOP} of them", "stop")
        req.stop = tuple(stops)
    seed = body.get("seed")
    if seed is not None:
        if not _is_int(seed):
            raise BadRequest("seed must be an integer", "seed")
        req.seed = seed % (2 ** 63)
    stream = body.get("stream", False)
    if stream is not None:
        if not isinstance(stream, bool):
            raise BadRequest("stream must be a boolean", "stream")
        req.stream = stream
    opts = body.get("stream_options")
    if opts is not None:
        if not isinstance(opts, dict):
            raise BadRequest("stream_options must be an object", "stream_options")
        req.include_usage = bool(opts.get("include_usage", False))

    req.tools = _parse_tools(body.get("tools"), limits)
    choice = body.get("tool_choice")
    names = [t["name"] for t in req.tools]
    if choice is None:
        req.tool_choice = "auto" if req.tools else "none"
    elif choice in ("none", "auto", "required"):
        if choice != "none" and not req.tools:
            raise BadRequest(f"tool_choice {choice!r} needs tools", "tool_choice")
        req.tool_choice = choice
    elif isinstance(choice, dict) and isinstance(choice.get("function"), dict):
        name = choice["function"].get("name")
        if name not in names:
            raise BadRequest(f"tool_choice names function {name!r}, which is not among tools", "tool_choice")
        req.tool_choice = {"name": name}
    else:
        raise BadRequest("tool_choice must be \"none\", \"auto\", \"required\" or "
                         "{\"type\": \"function\", \"function\": {\"name\": ...}}", "tool_choice")

    fmt = body.get("response_format")
    if fmt is not None:
        kind = fmt.get("type") if isinstance(fmt, dict) else None
        if kind not in ("text", "json_object", "json_schema"):
            raise BadRequest("response_format.type must be text, json_object or json_schema", "response_format")
        req.json_object = kind in ("json_object", "json_schema")
        if kind == "json_schema":
            spec = fmt.get("json_schema")
            if not isinstance(spec, dict) or not isinstance(spec.get("schema"), dict):
                raise BadRequest("response_format.json_schema.schema must be a JSON schema object",
                                 "response_format.json_schema.schema")
            try:
                req.json_schema = json_schema.compile_schema(spec["schema"],
                                                             "response_format.json_schema.schema")
            except json_schema.UnsupportedSchema as exc:
                raise BadRequest(f"this server cannot enforce this JSON schema: {exc}",
                                 "response_format.json_schema.schema", "unsupported_schema") from exc
            req.json_schema_text = json.dumps(spec["schema"], ensure_ascii=False)
    if body.get("logprobs") or body.get("top_logprobs"):
        raise BadRequest("logprobs are not supported by this server", "logprobs")
    for key in ("frequency_penalty", "presence_penalty"):
        value = body.get(key)
        if value not in (None, 0, 0.0):
            raise BadRequest(f"{key} is not supported by this server (only 0)", key)
    if body.get("logit_bias"):
        raise BadRequest("logit_bias is not supported by this server", "logit_bias")
    return req


# ------------------------------------------------------------------------------------------------
# the prompt


TOOLS_SYSTEM = """You can call functions to help with the request. Their descriptions, as JSON, are listed between <tools> and </tools>:
<tools>
{tools}
</tools>
To call a function, write a JSON object with its "name" and its "arguments" between <tool_call> and </tool_call>, one call per block, like this:
<tool_call>
{{"name": "function_name", "arguments": {{"argument": "value"}}}}
</tool_call>"""

JSON_SYSTEM = "Answer with one JSON object and nothing else."
JSON_SCHEMA_SYSTEM = "Answer with one JSON object that follows this JSON schema, and nothing else:\n{schema}"


@dataclass
class Prompt:
    text: str  # the rendered template, ending where the assistant's reply starts (forced prefix included)
    prefix: str  # forced start of the reply (part of the model's output as the client sees it)
    json_state: tuple | None  # when the reply must be JSON: the json_prefix state after the prefix
    thinking_open: bool  # the template opened <think> for the reply


def _template_source(tokenizer) -> str:
    tmpl = getattr(tokenizer, "chat_template", None)
    if isinstance(tmpl, dict):
        tmpl = tmpl.get("default") or next(iter(tmpl.values()), "")
    return tmpl or ""


def _call_text(name: str, arguments) -> str:
    return f"{CALL_OPEN}\n{json.dumps({'name': name, 'arguments': arguments}, ensure_ascii=False)}\n{CALL_CLOSE}"


def template_messages(req: ChatRequest, native_tools: bool) -> list[dict]:
    """Messages as the template receives them: developer -> system, tool calls and results as text when
    the template has no tool support, plus the system notes for tools and JSON."""
    msgs = []
    for m in req.messages:
        role = "system" if m["role"] == "developer" else m["role"]
        out = {"role": role, "content": m["content"]}
        if m.get("tool_calls"):
            if native_tools:
                out["tool_calls"] = [{"type": "function", "id": c.get("id"),
                                      "function": {"name": c["name"], "arguments": c["arguments"]}}
                                     for c in m["tool_calls"]]
            else:
                calls = "\n".join(_call_text(c["name"], c["arguments"]) for c in m["tool_calls"])
                out["content"] = (m["content"] + "\n" + calls) if m["content"] else calls
        if role == "tool" and not native_tools:
            out["content"] = f"<tool_response>\n{m['content']}\n</tool_response>"
        if role == "tool" and native_tools and m.get("tool_call_id"):
            out["tool_call_id"] = m["tool_call_id"]
        msgs.append(out)
    notes = []
    use_tools = req.tools and req.tool_choice != "none"
    if use_tools and not native_tools:
        notes.append(TOOLS_SYSTEM.format(tools="\n".join(
            json.dumps({"type": "function", "function": t}, ensure_ascii=False) for t in req.tools)))
    if use_tools and req.tool_choice == "required":
        notes.append("Call at least one of these functions.")
    if req.json_schema is not None:
        notes.append(JSON_SCHEMA_SYSTEM.format(schema=req.json_schema_text))
    elif req.json_object:
        notes.append(JSON_SYSTEM)
    if notes:
        note = "\n\n".join(notes)
        if msgs and msgs[0]["role"] == "system":
            msgs[0] = {**msgs[0], "content": (msgs[0]["content"] + "\n\n" + note).strip()}
        else:
            msgs.insert(0, {"role": "system", "content": note})
    return msgs


def render_prompt(tokenizer, req: ChatRequest) -> Prompt:
    """The prompt text in the model's own chat template (from its tokenizer, i.e. the GGUF)."""
    source = _template_source(tokenizer)
    if not source:
        raise BadRequest("the model has no chat template", status=500, type="server_error")
    native_tools = "tools" in source
    msgs = template_messages(req, native_tools)
    kwargs = {}
    use_tools = req.tools and req.tool_choice != "none"
    if use_tools and native_tools:
        kwargs["tools"] = [{"type": "function", "function": t} for t in req.tools]
    try:
        text = tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True, **kwargs)
    except Exception as exc:  # a template that refuses a role (strict alternation, no "tool" role)
        for m in msgs:
            if m["role"] == "tool":
                m["role"] = "user"
        try:
            text = tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True, **kwargs)
        except Exception:
            raise BadRequest(f"the model's chat template refused these messages: {exc}", "messages") from exc
    thinking_open = text.rstrip().endswith(THINK_OPEN)
    prefix, state = "", None
    if use_tools and isinstance(req.tool_choice, dict):  # this function: only its arguments are free
        prefix = CALL_OPEN + '\n{"name": ' + json.dumps(req.tool_choice["name"]) + ', "arguments": '
        state = json_prefix.arguments_state()
    elif use_tools and req.tool_choice == "required":  # one of the functions, chosen by the model
        prefix = CALL_OPEN + '\n{"name": "'
        state = json_prefix.tool_call_state([t["name"] for t in req.tools])
    elif req.json_schema is not None:
        state = json_schema.initial_state(req.json_schema)
    elif req.json_object:
        state = json_prefix.INITIAL
    return Prompt(text + prefix, prefix, state, thinking_open)


# ------------------------------------------------------------------------------------------------
# the output


def _held_back(buffer: str, marker: str) -> int:
    """Length of the longest suffix of buffer that is a proper prefix of marker (it may become the marker)."""
    for k in range(min(len(marker) - 1, len(buffer)), 0, -1):
        if buffer.endswith(marker[:k]):
            return k
    return 0


@dataclass
class ToolCall:
    id: str
    name: str
    arguments: str  # JSON text, as OpenAI sends it

    def body(self, index: int | None = None) -> dict:
        out = {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}
        if index is not None:
            out["index"] = index
        return out


def parse_tool_call(body: str) -> ToolCall | None:
    """``{"name": ..., "arguments": {...}}`` (or "parameters"), tolerating text after the object."""
    text = body.strip()
    start = text.find("{")
    if start < 0:
        return None
    try:
        obj, _ = json.JSONDecoder().raw_decode(text[start:])
    except json.JSONDecodeError:
        return None
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str) or not obj["name"]:
        return None
    args = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except json.JSONDecodeError:
            return None
    if not isinstance(args, dict):
        return None
    return ToolCall("call_" + secrets.token_hex(12), obj["name"], json.dumps(args, ensure_ascii=False))


class OutputParser:
    """Splits the model's text into reasoning, content and tool calls as it arrives.

    ``feed(text)`` returns ``[(field, text)]`` with field ``reasoning_content`` or ``content``: what is
    certain so far (text that may still turn into a marker is held back). ``finish()`` returns the rest
    and the parsed tool calls. A ``<tool_call>`` block that does not parse goes back into content.
    """

    def __init__(self, *, thinking_open: bool = False, tools: bool = False):
        self.mode = "reasoning" if thinking_open else "start"
        self.tools = tools
        self.buffer = ""
        self.calls: list[ToolCall] = []
        self.unparsed: list[str] = []

    def feed(self, text: str) -> list[tuple[str, str]]:
        self.buffer += text
        out: list[tuple[str, str]] = []
        while True:
            if self.mode == "start":
                head = self.buffer.lstrip()
                if head.startswith(THINK_OPEN):
                    self.buffer = head[len(THINK_OPEN):]
                    self.mode = "reasoning"
                elif THINK_OPEN.startswith(head):  # empty, or may still become <think>
                    return out
                else:
                    self.mode = "content"
            elif self.mode == "reasoning":
                i = self.buffer.find(THINK_CLOSE)
                if i >= 0:
                    self._emit(out, "reasoning_content", self.buffer[:i])
                    self.buffer = self.buffer[i + len(THINK_CLOSE):].lstrip("\n")
                    self.mode = "content"
                else:
                    keep = _held_back(self.buffer, THINK_CLOSE)
                    self._emit(out, "reasoning_content", self.buffer[:len(self.buffer) - keep])
                    self.buffer = self.buffer[len(self.buffer) - keep:]
                    return out
            elif self.mode == "content":
                i = self.buffer.find(CALL_OPEN) if self.tools else -1
                if i >= 0:
                    self._emit(out, "content", self.buffer[:i])
                    self.buffer = self.buffer[i + len(CALL_OPEN):]
                    self.mode = "call"
                else:
                    keep = _held_back(self.buffer, CALL_OPEN) if self.tools else 0
                    self._emit(out, "content", self.buffer[:len(self.buffer) - keep])
                    self.buffer = self.buffer[len(self.buffer) - keep:]
                    return out
            else:  # inside <tool_call>
                i = self.buffer.find(CALL_CLOSE)
                if i < 0:
                    return out
                self._close_call(self.buffer[:i], out)
                self.buffer = self.buffer[i + len(CALL_CLOSE):]
                self.mode = "content"

    def finish(self) -> tuple[list[tuple[str, str]], list[ToolCall]]:
        out: list[tuple[str, str]] = []
        if self.mode == "call":
            self._close_call(self.buffer, out, closed=False)
        elif self.mode == "reasoning":
            self._emit(out, "reasoning_content", self.buffer)
        else:
            self._emit(out, "content", self.buffer)
        self.buffer = ""
        return out, self.calls

    def _close_call(self, body: str, out: list, closed: bool = True) -> None:
        call = parse_tool_call(body)
        if call is not None:
            self.calls.append(call)
        else:
            self._emit(out, "content", CALL_OPEN + body + (CALL_CLOSE if closed else ""))

    @staticmethod
    def _emit(out: list, field_name: str, text: str) -> None:
        if text:
            if out and out[-1][0] == field_name:
                out[-1] = (field_name, out[-1][1] + text)
            else:
                out.append((field_name, text))


def parse_output(text: str, *, thinking_open: bool = False, tools: bool = False) -> dict:
    """The whole output at once -> {"content", "reasoning_content", "tool_calls"}."""
    parser = OutputParser(thinking_open=thinking_open, tools=tools)
    parts = parser.feed(text)
    rest, calls = parser.finish()
    content = "".join(t for f, t in parts + rest if f == "content")
    reasoning = "".join(t for f, t in parts + rest if f == "reasoning_content")
    if calls:
        content = content.strip()
    return {"content": content or (None if calls else ""), "reasoning_content": reasoning or None,
            "tool_calls": calls}


# ------------------------------------------------------------------------------------------------
# response bodies


def completion_id() -> str:
    return "chatcmpl-" + secrets.token_hex(12)


def message_body(parsed: dict) -> dict:
    msg: dict = {"role": "assistant", "content": parsed["content"]}
    if parsed["reasoning_content"]:
        msg["reasoning_content"] = parsed["reasoning_content"]
    if parsed["tool_calls"]:
        msg["tool_calls"] = [c.body() for c in parsed["tool_calls"]]
    return msg


def usage_body(prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0) -> dict:
    """OpenAI's usage object; ``cached_tokens``: prompt tokens whose KV the prefix cache supplied."""
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": cached_tokens}}


def completion_body(cid: str, model: str, choices: list[dict], usage: dict, created: int | None = None) -> dict:
    return {"id": cid, "object": "chat.completion", "created": created or int(time.time()), "model": model,
            "system_fingerprint": None, "choices": choices, "usage": usage}


def chunk_body(cid: str, model: str, created: int, index: int, delta: dict,
               finish_reason: str | None = None) -> dict:
    return {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
            "system_fingerprint": None,
            "choices": [{"index": index, "delta": delta, "finish_reason": finish_reason, "logprobs": None}]}
