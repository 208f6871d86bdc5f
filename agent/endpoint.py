"""Calls to an OpenAI-compatible chat endpoint: timeouts, retries with backoff and jitter, and a limit on
how many calls are in flight to one endpoint at once.

The limit is per base URL and per process, across threads and event loops: agents running in several
Prefect worker threads (each with its own event loop) share it. Roles that use the same endpoint share its
limit, and the smallest `concurrency` configured for it wins.
"""

from __future__ import annotations

import asyncio
import collections
import random
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from agent.errors import AgentError
from agent.history import estimate_tokens
from tasksynth.config import RoleConfig, secret

if TYPE_CHECKING:
    import openai

RETRY_STATUSES = {408, 409, 425, 429, 500, 502, 503, 504, 520, 521, 522, 524, 529}
MAX_BACKOFF_S = 60.0
NO_KEY = "not-needed"  # what the client sends when the role names no key variable


def _openai():
    """The openai package, imported on first use: importing it costs about half a second, and most commands
    (a mine, a report, an export) never call a model."""
    import openai
    return openai


class EndpointLimiter:
    """An async semaphore that works across threads and event loops (one per endpoint and process)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = max(1, capacity)
        self.in_flight = 0
        self.peak = 0
        self._waiters: collections.deque[tuple[asyncio.AbstractEventLoop, asyncio.Future]] = collections.deque()
        self._lock = threading.Lock()

    async def acquire(self) -> None:
        loop = asyncio.get_running_loop()
        with self._lock:
            if self.in_flight < self.capacity and not self._waiters:
                self._take()
                return
            waiter = (loop, loop.create_future())
            self._waiters.append(waiter)
        try:
            await waiter[1]
        except BaseException:
            with self._lock:
                queued = waiter in self._waiters
                if queued:
                    self._waiters.remove(waiter)
            if not queued and waiter[1].done() and not waiter[1].cancelled():
                self.release()  # the slot was handed over just as we gave up: pass it on
            raise  # (when the hand-over is still scheduled, _grant sees the cancelled future and passes it on)

    def release(self) -> None:
        with self._lock:
            while self._waiters:
                loop, future = self._waiters.popleft()
                if loop.is_closed():
                    continue
                loop.call_soon_threadsafe(self._grant, future)  # the slot goes straight to the waiter
                return
            self.in_flight -= 1

    def _grant(self, future: asyncio.Future) -> None:
        if future.done():
            self.release()
        else:
            future.set_result(None)

    def _take(self) -> None:
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)

    async def __aenter__(self) -> EndpointLimiter:
        await self.acquire()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.release()


_LIMITERS: dict[str, EndpointLimiter] = {}
_LIMITERS_LOCK = threading.Lock()


def limiter_for(base_url: str, capacity: int) -> EndpointLimiter:
    """The process-wide limiter of an endpoint; the smallest capacity asked for wins."""
    key = base_url.rstrip("/")
    with _LIMITERS_LOCK:
        limiter = _LIMITERS.get(key)
        if limiter is None:
            limiter = _LIMITERS[key] = EndpointLimiter(capacity)
        elif capacity < limiter.capacity:
            limiter.capacity = max(1, capacity)
        return limiter


_TLS: list[ssl.SSLContext] = []
_TLS_LOCK = threading.Lock()


def _tls_context() -> ssl.SSLContext:
    """One TLS context for every client: building one reads the CA bundle, about 20 ms, which hundreds of
    agents starting at once would otherwise pay each (SSL_CERT_FILE / SSL_CERT_DIR are honoured)."""
    with _TLS_LOCK:
        if not _TLS:
            _TLS.append(ssl.create_default_context())
        return _TLS[0]


@dataclass
class Completion:
    """One successful chat completion, reduced to what the loop needs."""

    message: dict[str, Any]  # role, content, and tool_calls / reasoning_content when present
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    usage_estimated: bool = False  # the endpoint reported no usage; the counts are estimates
    # every choice of a request made with `n` > 1: (message, finish_reason), the first being `message`
    choices: list[tuple[dict[str, Any], str | None]] = field(default_factory=list)


@dataclass
class Attempt:
    """What one HTTP attempt cost and how it ended, for accounting."""

    latency_s: float
    prompt_tokens: int | None
    completion_tokens: int | None
    error: str | None


class EndpointFailed(Exception):
    """Internal: the call failed for good (not retryable, retries spent, or out of time)."""

    def __init__(self, message: str, *, out_of_time: bool = False) -> None:
        super().__init__(message)
        self.out_of_time = out_of_time


class Endpoint:
    """One role's endpoint: an `AsyncOpenAI` client (its own retries off) under our retry loop."""

    def __init__(self, role: RoleConfig, role_name: str = "") -> None:
        self.role = role
        self.base_url = role.base_url
        api_key = NO_KEY
        if role.api_key_env:
            api_key = secret(role.api_key_env)
            if not api_key:
                raise AgentError(f"agents.{role_name or '?'}.api_key_env names ${role.api_key_env}, "
                                 "which is not set")
        openai = _openai()
        self.client = openai.AsyncOpenAI(base_url=role.base_url, api_key=api_key, max_retries=0,
                                         timeout=role.timeout_s,
                                         http_client=openai.DefaultAsyncHttpxClient(verify=_tls_context()))
        self.limiter = limiter_for(role.base_url, role.concurrency)
        self.reply_type = openai.types.chat.ChatCompletion

    async def close(self) -> None:
        await self.client.close()

    async def chat(self, request: dict[str, Any], *, deadline: float,
                   on_attempt: Callable[[Attempt], None]) -> Completion:
        """One chat completion with retries; `deadline` (time.monotonic) bounds attempts and waits."""
        attempt = 0
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise EndpointFailed("out of wall time before the endpoint answered", out_of_time=True)
            started = time.monotonic()
            calling = False
            try:
                async with self.limiter:
                    started = time.monotonic()  # latency counts the call, not the wait for a free slot
                    remaining = deadline - started
                    if remaining <= 0:
                        raise EndpointFailed("out of wall time while waiting for a free slot", out_of_time=True)
                    calling = True
                    # The request is plain JSON already: posting it as it is skips the SDK's typed transform
                    # of every message and tool (about 1 ms a call, paid by each turn of thousands of attempts).
                    response = await self.client.post("/chat/completions", body=request, cast_to=self.reply_type,
                                                      options={"timeout": min(self.role.timeout_s, remaining)})
                completion = _completion(response)
                if completion.usage_estimated:
                    completion.prompt_tokens = estimate_tokens(request["messages"], request.get("tools"))
                    completion.completion_tokens = estimate_tokens([completion.message])
            except EndpointFailed:
                raise
            except asyncio.CancelledError:
                if calling:  # a request was in flight: it may have cost something
                    on_attempt(Attempt(time.monotonic() - started, None, None, "cancelled"))
                raise
            except Exception as exc:  # noqa: BLE001 - every failure is classified below
                error = describe_error(exc)
                on_attempt(Attempt(time.monotonic() - started, None, None, error))
                clipped = remaining < self.role.timeout_s and isinstance(exc, _openai().APITimeoutError)
                out_of_time = clipped or time.monotonic() >= deadline
                if not retryable(exc) or attempt >= self.role.max_retries or out_of_time:
                    tried = f" after {attempt + 1} attempts" if attempt else ""
                    raise EndpointFailed(f"{error}{tried}", out_of_time=out_of_time) from None
                delay = backoff_delay(attempt, self.role.backoff_s, retry_after(exc))
                if time.monotonic() + delay >= deadline:
                    raise EndpointFailed(f"{error}; out of wall time for another attempt", out_of_time=True) from None
                await asyncio.sleep(delay)
                attempt += 1
                continue
            on_attempt(Attempt(time.monotonic() - started, completion.prompt_tokens,
                               completion.completion_tokens, None))
            return completion


class EmptyCompletion(Exception):
    """Internal: the endpoint answered 200 with no choice in it."""


def _completion(response: Any) -> Completion:
    choices = getattr(response, "choices", None)
    if not choices:
        raise EmptyCompletion("the endpoint answered with no choices")
    messages = [(_message(choice.message), choice.finish_reason) for choice in choices]
    message, finish_reason = messages[0]
    usage = getattr(response, "usage", None)
    prompt = getattr(usage, "prompt_tokens", None) if usage else None
    completion = getattr(usage, "completion_tokens", None) if usage else None
    if prompt is None or completion is None:
        return Completion(message, finish_reason, 0, 0, usage_estimated=True, choices=messages)
    return Completion(message, finish_reason, prompt, completion, choices=messages)


def _message(msg: Any) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": msg.content}
    extra = getattr(msg, "model_extra", None) or {}
    reasoning = extra.get("reasoning_content") or extra.get("reasoning")
    if reasoning:
        message["reasoning_content"] = reasoning
    if msg.tool_calls:
        message["tool_calls"] = [
            {"id": call.id, "type": "function",
             "function": {"name": call.function.name, "arguments": call.function.arguments or ""}}
            for call in msg.tool_calls if getattr(call, "function", None) is not None]
    return message


def retryable(exc: BaseException) -> bool:
    openai = _openai()
    if isinstance(exc, (openai.APITimeoutError, openai.APIConnectionError, EmptyCompletion)):
        return True
    if isinstance(exc, openai.APIStatusError):
        return exc.status_code in RETRY_STATUSES
    return False


def retry_after(exc: BaseException) -> float | None:
    """Seconds the server asked us to wait (Retry-After), if it said so."""
    response = getattr(exc, "response", None)
    value = response.headers.get("retry-after") if response is not None else None
    try:
        return min(MAX_BACKOFF_S, max(0.0, float(value))) if value else None
    except ValueError:
        return None


def backoff_delay(attempt: int, base_s: float, server_asked: float | None = None) -> float:
    """Exponential backoff with jitter: uniform in [d/2, d] for d = base * 2^attempt (capped), and never
    shorter than what the server asked for."""
    ceiling = min(MAX_BACKOFF_S, base_s * (2 ** attempt))
    delay = random.uniform(ceiling / 2, ceiling)
    return max(delay, server_asked or 0.0)


def describe_error(exc: BaseException) -> str:
    """One line about a failed call, without request headers (where a key would be)."""
    openai = _openai()
    if isinstance(exc, openai.APITimeoutError):
        return "timeout: the endpoint did not answer in time"
    if isinstance(exc, openai.APIConnectionError):
        return f"connection error: {exc.__cause__ or exc}".splitlines()[0][:300]
    if isinstance(exc, openai.APIStatusError):
        detail = _error_detail(exc)
        return f"HTTP {exc.status_code}: {detail}"[:300]
    return f"{type(exc).__name__}: {exc}".splitlines()[0][:300]


def _error_detail(exc: openai.APIStatusError) -> str:
    body = exc.body
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("message"):
            return str(inner["message"])
        if isinstance(inner, str):
            return inner
    return str(exc.message or "").splitlines()[0] if exc.message else "error"
