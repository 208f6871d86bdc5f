"""Reading what a model wrote, tolerantly: a bad reply becomes a reason, never an exception.

Small models wrap JSON in prose or code fences, leave trailing commas, cut the object short, or write
`Answer: X` around a short answer. As distilabel's `format_output` does, these readers return None (or a
reason) when nothing usable is there."""

from __future__ import annotations

import re

from agent.replies import first_json_object, strip_thinking

_ANSWER_LINE = re.compile(r"^\s*(?:\*\*)?(?:final answer|answer)(?:\*\*)?\s*[:\-]\s*(.+)$", re.IGNORECASE | re.MULTILINE)
ABSTENTIONS = ("i don't know", "i do not know", "unknown", "cannot be determined", "not enough information",
               "no answer", "i'm not sure", "i am not sure")
MAX_ANSWER_CHARS = 200


def short_answer(text: str | None) -> str | None:
    """The short answer in an answer agent's final message; None when there is none or it abstains."""
    text = strip_thinking(text)
    if not text:
        return None
    labelled = _ANSWER_LINE.findall(text)
    if labelled:
        answer = labelled[-1]
    else:
        obj = first_json_object(text)
        if obj and isinstance(obj.get("answer"), (str, int, float)):
            answer = str(obj["answer"])
        else:
            lines = [line.strip() for line in text.splitlines() if line.strip()]
            answer = lines[-1] if lines else ""
    answer = answer.strip().strip("*_`\"' ").rstrip(".").strip("*_`\"' ")
    if not answer or any(a in answer.lower() for a in ABSTENTIONS):
        return None
    return answer[:MAX_ANSWER_CHARS]
