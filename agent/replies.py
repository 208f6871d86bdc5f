"""Reading structured parts out of what a model wrote, tolerantly: None when nothing usable is there.

Small models wrap JSON in prose or code fences, leave trailing commas or think aloud first; every role that
expects a JSON object or a code block reads it through these, and turns None into a stored reason.
"""

from __future__ import annotations

import json
import re
from typing import Any

_THINKING = re.compile(r"<think>.*?(?:</think>|$)", re.DOTALL)
_FENCE = re.compile(r"```([\w+-]*)[^\n]*\n(.*?)(?:```|$)", re.DOTALL)
_TRAILING_COMMA = re.compile(r",\s*([}\]])")


def strip_thinking(text: str | None) -> str:
    """The reply without a leading <think>...</think> section."""
    return _THINKING.sub("", text or "").strip()


def first_json_object(text: str | None) -> dict[str, Any] | None:
    """The first JSON object in the reply, fenced or bare; trailing commas forgiven."""
    text = strip_thinking(text)
    for candidate in [body for _, body in _FENCE.findall(text)] + [text]:
        start = candidate.find("{")
        while start != -1:
            for chunk in (candidate[start:], _TRAILING_COMMA.sub(r"\1", candidate[start:])):
                try:
                    value, _ = json.JSONDecoder().raw_decode(chunk)
                except ValueError:
                    continue
                if isinstance(value, dict):
                    return value
            start = candidate.find("{", start + 1)
    return None


def code_block(text: str | None, language: str = "python") -> str | None:
    """The first fenced block in the given language (or an unlabelled one); a reply that is bare code (no
    fence, starts with `def`, `import` or `from`) counts too."""
    text = strip_thinking(text)
    blocks = _FENCE.findall(text)
    for label, body in blocks:
        if label.lower() in (language, language[:2]) and body.strip():
            return body.strip() + "\n"
    for label, body in blocks:
        if not label and body.strip():
            return body.strip() + "\n"
    if re.match(r"^(def |import |from |async def )", text):
        return text + "\n"
    return None
