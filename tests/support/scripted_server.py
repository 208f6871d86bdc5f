"""A scripted OpenAI-compatible chat server for tests: real HTTP on 127.0.0.1, answers from a script.

    with ScriptedServer([reply(tool_calls=[tool_call("search", {"query": "x"})], usage=(120, 15)),
                         error(429, retry_after=0),
                         reply("Paris", reasoning="...", delay_s=0.2)]) as server:
        role = RoleConfig(base_url=server.base_url, model="scripted")
        ...
        server.requests[0].body["messages"]   # what the client sent

The script is a list of steps answered in order (whatever the model asked for), a dict of lists keyed by
the request's `model` (several roles against one server), or a function from the request body to a step.
When the script runs out the server answers HTTP 500 "script exhausted", so a loop that calls more than
the test expected fails visibly. It lives in the tests, never in the product's code path.
"""

from __future__ import annotations

import itertools
import json
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Step = dict[str, Any]


def tool_call(name: str, arguments: dict[str, Any] | str, id: str | None = None) -> dict[str, Any]:
    """A native tool call (arguments as a dict, or a raw string to send malformed JSON)."""
    return {"id": id, "type": "function",
            "function": {"name": name, "arguments": arguments if isinstance(arguments, str)
                         else json.dumps(arguments)}}


def reply(content: str | None = None, *, tool_calls: list[dict[str, Any]] | None = None,
          reasoning: str | None = None, usage: tuple[int, int] | None = (10, 5), finish_reason: str | None = None,
          delay_s: float = 0.0) -> Step:
    """A chat completion; `usage=None` leaves usage out of the response; `delay_s` answers slowly."""
    return {"kind": "reply", "content": content, "tool_calls": tool_calls, "reasoning": reasoning,
            "usage": usage, "finish_reason": finish_reason, "delay_s": delay_s}


def several(*steps: Step) -> Step:
    """One completion with several choices (the answer to a request with `n`): the first step's usage and
    delay count; each step gives one choice."""
    return {**steps[0], "more_choices": list(steps[1:])}


def _choice(step: Step, number: int, index: int) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": step.get("content")}
    if step.get("reasoning") is not None:
        message["reasoning_content"] = step["reasoning"]
    calls = step.get("tool_calls")
    if calls:
        message["tool_calls"] = [{**c, "id": c.get("id") or f"call_{number}_{index}_{i}"}
                                 for i, c in enumerate(calls)]
    finish = step.get("finish_reason") or ("tool_calls" if calls else "stop")
    return {"index": index, "message": message, "finish_reason": finish}


def error(status: int, message: str = "scripted error", *, retry_after: float | None = None,
          delay_s: float = 0.0) -> Step:
    """An HTTP error answer (429, 500, 400, ...), optionally with a Retry-After header."""
    return {"kind": "error", "status": status, "message": message, "retry_after": retry_after, "delay_s": delay_s}


@dataclass
class Received:
    """A request the server received."""

    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    at: float = field(default_factory=time.monotonic)

    @property
    def messages(self) -> list[dict[str, Any]]:
        return self.body.get("messages", [])


class _Server(ThreadingHTTPServer):
    request_queue_size = 512  # hundreds of agents connect at once; the stdlib's 5 would refuse them
    daemon_threads = True


class ScriptedServer:
    def __init__(self, script: list[Step] | dict[str, list[Step]] | Callable[[dict[str, Any]], Step] = ()):
        self._lock = threading.Lock()
        self._script = script if callable(script) or isinstance(script, dict) else list(script)
        if isinstance(self._script, dict):
            self._script = {k: list(v) for k, v in self._script.items()}
        self.requests: list[Received] = []
        self.exhausted = 0
        self.in_flight = 0
        self.peak_concurrency = 0
        self._ids = itertools.count(1)
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------------------------------ lifecycle

    def start(self) -> ScriptedServer:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # no 40 ms Nagle stalls

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
                if self.path.rstrip("/").endswith("/models"):
                    self._send(200, {"object": "list", "data": [{"id": "scripted", "object": "model"}]})
                else:
                    self._send(404, {"error": {"message": "not found"}})

            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    body = json.loads(raw or b"{}")
                except ValueError:
                    self._send(400, {"error": {"message": "body is not JSON"}})
                    return
                if not self.path.rstrip("/").endswith("/chat/completions"):
                    self._send(404, {"error": {"message": f"no route {self.path}"}})
                    return
                server._answer(self, body)

            def _send(self, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None) -> None:
                data = json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(data)))
                    for key, value in (headers or {}).items():
                        self.send_header(key, value)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (a timeout test)

        self._httpd = _Server(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="scripted-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> ScriptedServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        assert self._httpd is not None, "start the server first"
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    def role(self, **settings: Any):
        """A `RoleConfig` pointing at this server, with short timeouts and quick retries for tests."""
        from tasksynth.config import RoleConfig

        base = {"base_url": self.base_url, "model": "scripted-model", "backoff_s": 0.01, "timeout_s": 5.0,
                "max_retries": 3}
        return RoleConfig(**(base | settings))

    # ------------------------------------------------------------------------------------------ script

    def add(self, *steps: Step, model: str | None = None) -> None:
        with self._lock:
            if isinstance(self._script, dict):
                self._script.setdefault(model or "", []).extend(steps)
            else:
                self._script.extend(steps)

    @property
    def remaining(self) -> int:
        with self._lock:
            if isinstance(self._script, dict):
                return sum(len(v) for v in self._script.values())
            return 0 if callable(self._script) else len(self._script)

    def _next_step(self, body: dict[str, Any]) -> Step | None:
        with self._lock:
            if callable(self._script):
                return self._script(body)
            queue = self._script.get(body.get("model"), []) if isinstance(self._script, dict) else self._script
            return queue.pop(0) if queue else None

    def _answer(self, handler: Any, body: dict[str, Any]) -> None:
        headers = {k.lower(): v for k, v in handler.headers.items()}
        with self._lock:
            self.requests.append(Received(handler.path, headers, body))
            self.in_flight += 1
            self.peak_concurrency = max(self.peak_concurrency, self.in_flight)
        try:
            step = self._next_step(body)
            if step is None:
                with self._lock:
                    self.exhausted += 1
                handler._send(500, {"error": {"message": "scripted server: script exhausted"}})
                return
            if step.get("delay_s"):
                time.sleep(step["delay_s"])
            if step["kind"] == "error":
                extra = {"retry-after": str(step["retry_after"])} if step.get("retry_after") is not None else {}
                handler._send(step["status"], {"error": {"message": step["message"], "type": "scripted",
                                                         "code": step["status"]}}, extra)
                return
            handler._send(200, self._completion(step, body))
        finally:
            with self._lock:
                self.in_flight -= 1

    def _completion(self, step: Step, body: dict[str, Any]) -> dict[str, Any]:
        number = next(self._ids)
        choices = [_choice(s, number, i) for i, s in enumerate([step, *step.get("more_choices", [])])]
        payload: dict[str, Any] = {"id": f"chatcmpl-{number}", "object": "chat.completion",
                                   "created": int(time.time()), "model": body.get("model", "scripted"),
                                   "choices": choices}
        if step.get("usage") is not None:
            prompt, completion = step["usage"]
            payload["usage"] = {"prompt_tokens": prompt, "completion_tokens": completion,
                                "total_tokens": prompt + completion}
        return payload
