"""The agent loop every synthesis role uses: messages in, tool calls executed, results appended, until the
model answers without a tool call, a budget is spent, or the endpoint fails for good.

    agent = Agent("question_builder", config, tools=[search], recorder=StoreRecorder(store))
    result = await agent.run("Write a question about ...")      # or agent.run_sync(...)
    result.final_answer, result.stop_reason, result.usage, result.cost_usd

Setup problems (a missing prompt file, an unknown tool, an unset API key variable) raise `AgentError`; what
happens during a run does not raise: the result's `stop_reason` says why it stopped (`answer`,
`turn_budget`, `token_budget`, `time_budget`, `cost_budget`, `context_full`, `error`) and `error` says what
went wrong. A cancelled run records its trajectory as `cancelled`, then the cancellation goes on.
Thinking retention and the context strategies follow the DeepSeek-V3.2 report (see `agent.history`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import copy
import json
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from agent.accounting import BufferedRecorder, CallRecord, Recorder, TrajectoryRecord, call_cost
from agent.endpoint import Attempt, Completion, Endpoint, EndpointFailed
from agent.history import (CONTEXT_TRIGGER, discard_tool_history, drop_stale_reasoning, estimate_tokens,
                           last_user_index, wire_messages)
from agent.prompts import load_prompt
from agent.text_calls import parse_text_calls
from agent.tools import Tool, resolve_tools
from tasksynth.config import Config, RoleConfig
from tasksynth.flow_context import current_flow_run_id


class StopReason:
    ANSWER = "answer"
    TURNS = "turn_budget"
    TOKENS = "token_budget"
    WALL = "time_budget"
    COST = "cost_budget"
    CONTEXT = "context_full"
    ERROR = "error"
    CANCELLED = "cancelled"  # the run was cancelled (its task was); recorded, then the cancellation goes on


SUMMARY_REQUEST = (
    "Your context is nearly full. Summarise the work so far for yourself: what the task is, what you have "
    "tried, every fact you found that matters (with the exact values, names and sources), what is still open "
    "and what you planned next. Write only the summary; call no tool.")
SUMMARY_HEADER = "Summary of your work on this task so far (earlier messages were removed to save space):"
SUMMARY_FOOTER = "Continue the task from here."
TEXT_TOOLS_HEADER = (
    "You can call tools. To call one, write\n"
    '<tool_call>{"name": "<tool name>", "arguments": {<the arguments as a JSON object>}}</tool_call>\n'
    "and stop; the result comes back in the next message. When you have the final answer, write it without "
    "any tool call.\n\nTools:")


@dataclass
class Usage:
    calls: int = 0  # HTTP attempts, failed ones included
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass
class AgentResult:
    """The end of one run. `messages` is the conversation as kept (ready to be continued with another user
    message); `transcript` is everything that happened, dropped context included."""

    messages: list[dict[str, Any]]
    final_answer: str | None
    stop_reason: str
    usage: Usage
    cost_usd: float
    turns: int
    trajectory_id: str
    error: str | None = None
    finish_reason: str | None = None  # of the last completion: "length" means the answer was cut
    tool_calls: int = 0
    context_events: list[dict[str, Any]] = field(default_factory=list)
    transcript: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.stop_reason == StopReason.ANSWER


class Agent:
    """A role set up from config: its system prompt, tools, endpoint, sampling and budgets.

    `tools`: callables or `Tool`s; None takes the registered tools the role's `tools` setting names.
    `recorder`: where call and trajectory records go (default: kept in `agent.recorder`, a
    `BufferedRecorder`). `system_prompt` overrides the role's prompt file; `prompt_vars` fill its
    `${name}` placeholders. `flow_run_id`: defaults to the Prefect flow run this runs in, if any."""

    def __init__(self, role: str, config: Config, *, tools: Sequence[Callable[..., Any] | Tool] | None = None,
                 recorder: Recorder | None = None, system_prompt: str | None = None,
                 prompt_vars: dict[str, Any] | None = None, flow_run_id: str | None = None,
                 settings: RoleConfig | None = None) -> None:
        self.role = role
        self.config = config
        self.settings = settings or config.role(role)
        self.tools = resolve_tools(tools, self.settings.tools)
        self.recorder: Recorder = recorder if recorder is not None else BufferedRecorder()
        if system_prompt is None:
            system_prompt = load_prompt(role, self.settings.prompt, home=config.home_path, variables=prompt_vars)
        if self.tools and self.settings.tool_format == "text":
            system_prompt = "\n\n".join(p for p in (system_prompt, text_tools_section(self.tools)) if p)
        self.system_prompt = system_prompt
        self.flow_run_id = flow_run_id

    async def run(self, task: str | Sequence[dict[str, Any]], *, tool_choice: str | dict[str, Any] | None = None,
                  opening: Opening | None = None) -> AgentResult:
        """Run until an answer, a budget or a failure. `task`: a user message, or a whole conversation (a
        system message is added at its start when it has none and the role has a prompt).

        `tool_choice` applies to the first call only ("required", or {"type": "function", "function":
        {"name": ...}}, to make the agent start with a tool call); later calls leave it to the model.
        `opening`: the first assistant message, already sampled (`sample_openings`): the run starts from it."""
        run = _Run(self, _initial_messages(task, self.system_prompt), first_tool_choice=tool_choice, opening=opening)
        return await run.go()

    def run_sync(self, task: str | Sequence[dict[str, Any]], *, tool_choice: str | dict[str, Any] | None = None,
                 opening: Opening | None = None) -> AgentResult:
        """`run` for synchronous code (a Prefect task, a script); works inside a running event loop too."""
        return _sync(self.run(task, tool_choice=tool_choice, opening=opening))

    async def sample_openings(self, task: str | Sequence[dict[str, Any]], n: int) -> list[Opening]:
        """The first turn of `n` runs of the same task in one request (`n` samples share one prefill on the
        bundled runner, as pass@k sampling wants). Each opening starts its own run (`run(task, opening=...)`).
        The request is recorded once, under the role; an endpoint that returns fewer choices gives fewer
        openings (the remaining runs sample their first turn themselves). [] when the request failed."""
        run = _Run(self, _initial_messages(task, self.system_prompt))
        endpoint = Endpoint(self.settings, self.role)
        request = run.request()
        if n > 1:
            request["n"] = n
        try:
            completion = await endpoint.chat(request, deadline=run.deadline, on_attempt=run.account)
        except EndpointFailed:
            return []
        finally:
            await endpoint.close()
        return [Opening(message, finish_reason) for message, finish_reason in completion.choices[:n]]

    def sample_openings_sync(self, task: str | Sequence[dict[str, Any]], n: int) -> list[Opening]:
        return _sync(self.sample_openings(task, n))


@dataclass
class Opening:
    """A first assistant turn sampled ahead (`Agent.sample_openings`); its cost was recorded there."""

    message: dict[str, Any]
    finish_reason: str | None


def _sync(coroutine: Any) -> Any:
    """Run a coroutine from synchronous code, also when an event loop is already running in this thread."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


def text_tools_section(tools: Sequence[Tool]) -> str:
    lines = [TEXT_TOOLS_HEADER]
    for t in tools:
        lines.append(f"- {t.name}: {t.description}\n  arguments (JSON schema): {json.dumps(t.parameters)}")
    return "\n".join(lines)


def _initial_messages(task: str | Sequence[dict[str, Any]], system_prompt: str | None) -> list[dict[str, Any]]:
    messages = [{"role": "user", "content": task}] if isinstance(task, str) else copy.deepcopy(list(task))
    if system_prompt and not (messages and messages[0].get("role") == "system"):
        messages.insert(0, {"role": "system", "content": system_prompt})
    return messages


class _Run:
    """One trajectory: the state of a single `Agent.run`."""

    def __init__(self, agent: Agent, messages: list[dict[str, Any]], *,
                 first_tool_choice: str | dict[str, Any] | None = None, opening: Opening | None = None) -> None:
        self.agent = agent
        self.first_tool_choice = first_tool_choice
        self.opening = opening
        self.s = agent.settings
        self.tools = {t.name: t for t in agent.tools}
        self.tool_specs = [t.spec() for t in agent.tools]
        self.history = drop_stale_reasoning(messages)
        self.transcript: list[dict[str, Any]] = copy.deepcopy(messages)
        self.trajectory_id = uuid.uuid4().hex
        self.flow_run_id = agent.flow_run_id or current_flow_run_id()
        self.usage = Usage()
        self.cost = 0.0
        self.turns = 0
        self.tool_calls = 0
        self.events: list[dict[str, Any]] = []
        self.started = time.monotonic()
        self.deadline = self.started + self.s.max_wall_s
        self.known_tokens: int | None = None  # the endpoint's count for history[:known_len]
        self.known_len = 0
        self.finish_reason: str | None = None

    # ------------------------------------------------------------------------------------------ the loop

    async def go(self) -> AgentResult:
        endpoint = Endpoint(self.s, self.agent.role)
        final_answer = None
        error = None
        try:
            while True:
                stop = self.budget_spent()
                if stop:
                    break
                stop = await self.manage_context(endpoint)
                if stop:
                    break
                if self.opening is not None and self.turns == 0:
                    completion = Completion(self.opening.message, self.opening.finish_reason, 0, 0,
                                            usage_estimated=True)
                else:
                    completion = await endpoint.chat(self.request(), deadline=self.deadline,
                                                     on_attempt=self.account)
                self.turns += 1
                self.finish_reason = completion.finish_reason
                message, calls = self.assistant_message(completion.message)
                self.append(message)
                if not completion.usage_estimated:
                    self.known_tokens = completion.prompt_tokens + completion.completion_tokens
                    self.known_len = len(self.history)
                if not calls:
                    final_answer = message.get("content") or ""
                    stop = StopReason.ANSWER
                    break
                for call_id, name, arguments, problem in calls:
                    content = await self.run_tool(name, arguments, problem)
                    self.append({"role": "tool", "tool_call_id": call_id, "name": name, "content": content})
        except EndpointFailed as exc:
            stop, error = (StopReason.WALL if exc.out_of_time else StopReason.ERROR), str(exc)
        except BaseException as exc:  # cancelled, or a bug: keep the trajectory for accounting, then raise
            stop = StopReason.CANCELLED if isinstance(exc, asyncio.CancelledError) else StopReason.ERROR
            self.finish(None, stop, f"{type(exc).__name__}: {exc}")
            raise
        finally:
            await endpoint.close()
        if stop == StopReason.CONTEXT:
            error = "the conversation does not fit in the context window even after context management"
        return self.finish(final_answer, stop, error)

    def finish(self, final_answer: str | None, stop: str, error: str | None) -> AgentResult:
        result = AgentResult(messages=self.history, final_answer=final_answer, stop_reason=stop,
                             usage=self.usage, cost_usd=self.cost, turns=self.turns,
                             trajectory_id=self.trajectory_id, error=error, finish_reason=self.finish_reason,
                             tool_calls=self.tool_calls, context_events=self.events, transcript=self.transcript)
        self.agent.recorder.record_trajectory(self.trajectory_record(result))
        return result

    def budget_spent(self) -> str | None:
        if self.turns >= self.s.max_turns:
            return StopReason.TURNS
        if self.usage.total_tokens >= self.s.max_total_tokens:
            return StopReason.TOKENS
        if self.s.max_cost_usd and self.cost >= self.s.max_cost_usd:
            return StopReason.COST
        if time.monotonic() >= self.deadline:
            return StopReason.WALL
        return None

    def request(self, messages: list[dict[str, Any]] | None = None, *, with_tools: bool = True) -> dict[str, Any]:
        wire = wire_messages(self.history if messages is None else messages)
        if self.s.tool_format == "text":
            wire = [_as_text_call_message(m) for m in wire]
        request: dict[str, Any] = {"model": self.s.model, "messages": wire, "temperature": self.s.temperature,
                                   "top_p": self.s.top_p, "max_tokens": self.s.max_tokens}
        if with_tools and self.tool_specs and self.s.tool_format == "native":
            request["tools"] = self.tool_specs
            if self.turns == 0 and self.first_tool_choice is not None:
                request["tool_choice"] = self.first_tool_choice
        if self.s.extra_body:
            request["extra_body"] = dict(self.s.extra_body)
        return request

    def append(self, message: dict[str, Any]) -> None:
        self.history.append(message)
        self.transcript.append(copy.deepcopy(message))

    # ------------------------------------------------------------------------------------------ tool calls

    def assistant_message(self, raw: dict[str, Any]) -> tuple[dict[str, Any], list[tuple]]:
        """The assistant message to keep, and its calls as (id, name, arguments, problem)."""
        message = dict(raw)
        calls: list[tuple] = []
        if message.get("tool_calls"):
            kept = []
            for call in message["tool_calls"]:
                name = call["function"]["name"]
                raw_args = call["function"].get("arguments") or "{}"
                arguments, problem = _read_arguments(raw_args)
                if problem:
                    # sent back as "{}" so that a server which parses the history does not choke on it
                    call = {**call, "function": {"name": name, "arguments": "{}"}}
                    problem = f"{problem}. You wrote: {_clip(raw_args, 300)}"
                kept.append(call)
                calls.append((call["id"], name, arguments, problem))
            message["tool_calls"] = kept
        elif self.tools:
            rest, text_calls = parse_text_calls(message.get("content"))
            if text_calls:
                message["content"] = rest
                message["tool_calls"] = []
                for n, text_call in enumerate(text_calls):
                    call_id = f"call_{self.turns}_{n}"
                    name = text_call.name or "invalid_tool_call"
                    arguments = text_call.arguments or {}
                    message["tool_calls"].append({"id": call_id, "type": "function",
                                                  "function": {"name": name, "arguments": json.dumps(arguments)}})
                    problem = f"{text_call.error}. You wrote: {_clip(text_call.raw, 300)}" if text_call.error else None
                    calls.append((call_id, name, arguments, problem))
        return message, calls

    async def run_tool(self, name: str, arguments: dict[str, Any] | None, problem: str | None) -> str:
        self.tool_calls += 1
        if problem:
            return f"Error: your tool call could not be read: {problem}"
        tool = self.tools.get(name)
        if tool is None:
            known = ", ".join(self.tools) or "none"
            return f"Error: there is no tool named {name!r}. The tools are: {known}."
        problems = tool.check(arguments)
        if problems:
            return f"Error: wrong arguments for {name}: {'; '.join(problems)}."
        try:
            text = await tool.invoke(arguments or {})
        except Exception as exc:  # noqa: BLE001 - a failing tool is reported to the model, not raised
            return f"Error: {name} failed: {type(exc).__name__}: {_clip(str(exc), 500)}"
        limit = self.s.max_tool_result_chars
        if len(text) > limit:
            text = f"{text[:limit]}\n[... cut: the result had {len(text)} characters, only the first {limit} are shown]"
        return text

    # ------------------------------------------------------------------------------------------ context

    def context_size(self) -> int:
        if self.known_tokens is not None and self.known_len <= len(self.history):
            return self.known_tokens + estimate_tokens(self.history[self.known_len:])
        return estimate_tokens(wire_messages(self.history), self.tool_specs)

    async def manage_context(self, endpoint: Endpoint) -> str | None:
        window = self.s.context_window
        before = self.context_size()
        if before <= CONTEXT_TRIGGER * window:
            return None
        strategy = self.s.context_strategy
        event: dict[str, Any] = {"strategy": strategy, "turn": self.turns, "tokens_before": before,
                                 "at_transcript_message": len(self.transcript)}
        if strategy == "summary":
            summary = await self.summarise(endpoint)
            if summary:
                head = self.history[:_task_end(self.history) + 1]
                self.history = head + [{"role": "user", "content": f"{SUMMARY_HEADER}\n\n{summary}\n\n"
                                                                   f"{SUMMARY_FOOTER}", "summary": True}]
                self.transcript.append(copy.deepcopy(self.history[-1]))
                event["summary_chars"] = len(summary)
            else:
                self.history, dropped = discard_tool_history(self.history, 1.0)
                event.update(strategy="discard-all", fallback_from="summary", dropped_groups=dropped)
        else:
            fraction = 0.75 if strategy == "discard-75" else 1.0
            self.history, event["dropped_groups"] = discard_tool_history(self.history, fraction)
        self.known_tokens, self.known_len = None, 0
        event["tokens_after"] = after = self.context_size()
        self.events.append(event)
        if after >= window:
            return StopReason.CONTEXT
        return None

    async def summarise(self, endpoint: Endpoint) -> str:
        """Ask the model for a summary of the trajectory (no tools offered); '' when it gives none."""
        messages = self.history + [{"role": "user", "content": SUMMARY_REQUEST}]
        request = self.request(messages, with_tools=False)
        self.transcript.append({"role": "user", "content": SUMMARY_REQUEST, "summary_request": True})
        completion = await endpoint.chat(request, deadline=self.deadline, on_attempt=self.account)
        reply = dict(completion.message)
        reply["summary_reply"] = True
        self.transcript.append(reply)
        text = (completion.message.get("content") or "").strip()
        return parse_text_calls(text)[0].strip() if text else ""

    # ------------------------------------------------------------------------------------------ accounting

    def account(self, attempt: Attempt) -> None:
        prompt, completion = attempt.prompt_tokens, attempt.completion_tokens  # estimates if none reported
        cost = call_cost(self.agent.config.prices, self.s.model, prompt, completion)
        self.usage.calls += 1
        self.usage.prompt_tokens += prompt or 0
        self.usage.completion_tokens += completion or 0
        self.cost += cost
        self.agent.recorder.record_call(CallRecord(
            call_id=uuid.uuid4().hex, role=self.agent.role, endpoint=self.s.base_url, model=self.s.model,
            prompt_tokens=prompt, completion_tokens=completion, latency_s=round(attempt.latency_s, 6),
            cost_usd=cost, status="error" if attempt.error else "ok", error=attempt.error,
            flow_run_id=self.flow_run_id, trajectory_id=self.trajectory_id))

    def trajectory_record(self, result: AgentResult) -> TrajectoryRecord:
        transcript = {
            "trajectory_id": self.trajectory_id, "role": self.agent.role, "model": self.s.model,
            "endpoint": self.s.base_url, "tools": list(self.tools), "stop_reason": result.stop_reason,
            "error": result.error, "final_answer": result.final_answer, "turns": result.turns,
            "tool_calls": result.tool_calls, "finish_reason": result.finish_reason,
            "usage": {"calls": self.usage.calls, "prompt_tokens": self.usage.prompt_tokens,
                      "completion_tokens": self.usage.completion_tokens},
            "cost_usd": self.cost, "wall_s": round(time.monotonic() - self.started, 3),
            "context_events": self.events, "messages": self.transcript, "final_messages": self.history,
        }
        return TrajectoryRecord(trajectory_id=self.trajectory_id, role=self.agent.role,
                                transcript=json.dumps(transcript, ensure_ascii=False, default=str),
                                turns=self.turns, stop_reason=result.stop_reason, flow_run_id=self.flow_run_id)


def _read_arguments(raw: Any) -> tuple[dict[str, Any] | None, str | None]:
    if isinstance(raw, dict):
        return raw, None
    try:
        value = json.loads(raw)
    except (TypeError, ValueError) as exc:
        return None, f"the arguments are not valid JSON ({exc})"
    if not isinstance(value, dict):
        return None, "the arguments must be a JSON object"
    return value, None


def _task_end(history: list[dict[str, Any]]) -> int:
    """Index of the user message that states the current task (a previous summary does not count)."""
    for i in range(len(history) - 1, -1, -1):
        if history[i].get("role") == "user" and not history[i].get("summary"):
            return i
    return last_user_index(history)


def _as_text_call_message(message: dict[str, Any]) -> dict[str, Any]:
    """For endpoints that take tools as text: an assistant's calls go back as the text the model wrote."""
    if message.get("role") != "assistant" or not message.get("tool_calls"):
        return message
    written = [f'<tool_call>{{"name": {json.dumps(c["function"]["name"])}, '
               f'"arguments": {c["function"]["arguments"] or "{}"}}}</tool_call>' for c in message["tool_calls"]]
    content = "\n".join(p for p in [message.get("content") or ""] + written if p)
    return {k: v for k, v in message.items() if k != "tool_calls"} | {"content": content}


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit] + "..."
