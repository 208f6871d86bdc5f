"""The conversation an agent keeps: what is sent back to the endpoint, and what context management drops.

Thinking in tool use (DeepSeek-V3.2 report, section on thinking context management): an assistant message's
`reasoning_content` is sent back while the model is still working on the same user message (across its
tool calls), and dropped once a newer user message exists; tool calls and their results are always kept.

Context strategies, applied when the conversation passes 80 % of the context window:
``discard-75`` drops the oldest 75 % of the tool-call groups (an assistant message that called tools, and the
results of those calls), ``discard-all`` drops them all, ``summary`` (in the loop) asks the model for a
summary of the work so far and restarts from the system prompt, the first user message and that summary.
"""

from __future__ import annotations

import json
import math
from typing import Any

CONTEXT_TRIGGER = 0.8  # fraction of the context window at which a strategy applies
WIRE_KEYS = ("role", "content", "name", "tool_calls", "tool_call_id", "reasoning_content")


def last_user_index(messages: list[dict[str, Any]]) -> int:
    for i in range(len(messages) - 1, -1, -1):
        if messages[i].get("role") == "user":
            return i
    return -1


def drop_stale_reasoning(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The messages with `reasoning_content` removed from assistant messages older than the last user
    message (new dicts where something changed; the input is not modified)."""
    cut = last_user_index(messages)
    out = []
    for i, message in enumerate(messages):
        if i < cut and message.get("role") == "assistant" and "reasoning_content" in message:
            message = {k: v for k, v in message.items() if k != "reasoning_content"}
        out.append(message)
    return out


def wire_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What is sent to the endpoint: stale reasoning dropped, only chat-completion keys, no empty
    reasoning, and `content` present on every message (some servers require it)."""
    out = []
    for message in drop_stale_reasoning(messages):
        sent = {k: message[k] for k in WIRE_KEYS if k in message}
        if not sent.get("reasoning_content"):
            sent.pop("reasoning_content", None)
        if not sent.get("tool_calls"):
            sent.pop("tool_calls", None)
        if sent.get("role") == "tool":
            sent.pop("name", None)  # the tool's name is known from the call; OpenAI's schema has no such key
        if sent.get("content") is None:
            sent["content"] = ""
        out.append(sent)
    return out


def tool_groups(messages: list[dict[str, Any]]) -> list[list[int]]:
    """Indices of each tool-call group, oldest first: an assistant message with `tool_calls` and the
    `tool` messages that answer it."""
    groups: list[list[int]] = []
    open_ids: dict[str, list[int]] = {}
    for i, message in enumerate(messages):
        if message.get("role") == "assistant" and message.get("tool_calls"):
            group = [i]
            groups.append(group)
            for call in message["tool_calls"]:
                open_ids[call.get("id", "")] = group
        elif message.get("role") == "tool":
            group = open_ids.get(message.get("tool_call_id", ""))
            if group is None and groups and groups[-1][-1] == i - 1:
                group = groups[-1]  # an answer with an id we do not know still belongs to the call before it
            if group is not None:
                group.append(i)
    return groups


def discard_tool_history(messages: list[dict[str, Any]], fraction: float) -> tuple[list[dict[str, Any]], int]:
    """Drop the oldest `fraction` of the tool-call groups (at least one when there are any); returns the new
    messages and how many groups were dropped."""
    groups = tool_groups(messages)
    if not groups:
        return list(messages), 0
    count = min(len(groups), max(1, math.ceil(fraction * len(groups))))
    dropped = {i for group in groups[:count] for i in group}
    return [m for i, m in enumerate(messages) if i not in dropped], count


def estimate_tokens(messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None) -> int:
    """A tokenizer-free estimate (about 4 characters a token, a few tokens per message for the template),
    used when the endpoint reports no usage and for messages added since its last report."""
    chars = 0
    for message in messages:
        chars += len(str(message.get("content") or "")) + len(str(message.get("reasoning_content") or ""))
        if message.get("tool_calls"):
            chars += len(json.dumps(message["tool_calls"]))
    if tools:
        chars += len(json.dumps(tools))
    return math.ceil(chars / 4) + 4 * len(messages)
