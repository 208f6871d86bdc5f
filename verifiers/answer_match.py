"""Is a short answer the reference answer? Normalised exact match first, a judge only when that fails.

Normalisation follows SQuAD's answer normalisation (lower case, no punctuation, no articles, single
spaces), plus Unicode folding (accents dropped) and number words read as numbers, so "The Eiffel Tower."
and "eiffel tower", or "1,200" and "1200", match without a model. A reference may list aliases
("Jacques Cousteau | Jacques-Yves Cousteau"); any one matching counts.

The judge is any callable from a prompt to the judge's reply text, so a trainer plugs in whatever model it
has and this module needs no agent and no network. The reply is read tolerantly: a JSON object with a
`grade`, or the first of "correct" / "incorrect" / "yes" / "no" in the text; anything else is `unreadable`.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Callable, Iterable
from dataclasses import dataclass

Judge = Callable[[str], str]

ALIAS_SEPARATOR = "|"
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = re.compile(r"[^\w\s]")
_SPACE = re.compile(r"\s+")
_NUMBER = re.compile(r"(?<=\d),(?=\d{3}\b)")
_ANSWER_LABEL = re.compile(r"^(final answer|answer)\s*[:\-]\s*", re.IGNORECASE)
_JSON_OBJECT = re.compile(r"\{.*\}", re.DOTALL)
_VERDICT_WORD = re.compile(r"\b(incorrect|correct|wrong|yes|no)\b", re.IGNORECASE)
_NUMBER_WORDS = {"zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
                 "seven": "7", "eight": "8", "nine": "9", "ten": "10", "eleven": "11", "twelve": "12"}

JUDGE_PROMPT = """You grade an answer to a question against the reference answer. Judge meaning, not wording: \
another spelling, unit or format of the same thing is correct; a different thing, a hedge between options, or \
no answer is incorrect.

Question: {question}
Reference answer: {reference}
Answer to grade: {answer}

Reply with a JSON object and nothing else: {{"grade": "correct" | "incorrect", "reason": "<one sentence>"}}"""


@dataclass(frozen=True)
class MatchResult:
    """`correct`: True/False, or None when no judge could decide; `method`: exact | empty | judge | no_judge |
    unreadable."""

    correct: bool | None
    method: str
    detail: str = ""


def normalize_answer(text: str | None) -> str:
    """The comparable form of a short answer."""
    if not text:
        return ""
    text = _ANSWER_LABEL.sub("", text.strip())
    text = unicodedata.normalize("NFKD", text)
    text = "".join(c for c in text if not unicodedata.combining(c)).lower()
    text = _NUMBER.sub("", text)
    text = _PUNCT.sub(" ", text)
    text = _ARTICLES.sub(" ", text)
    words = [_NUMBER_WORDS.get(w, w) for w in _SPACE.split(text) if w]
    return " ".join(words)


def aliases(reference: str | Iterable[str]) -> list[str]:
    """The accepted forms of a reference: a list, or one string with `|` between aliases."""
    items = [reference] if isinstance(reference, str) else list(reference)
    return [a.strip() for item in items for a in str(item).split(ALIAS_SEPARATOR) if a.strip()]


def exact_match(answer: str | None, reference: str | Iterable[str]) -> bool:
    normalized = normalize_answer(answer)
    return bool(normalized) and any(normalized == normalize_answer(a) for a in aliases(reference))


def match_answer(question: str, answer: str | None, reference: str | Iterable[str], *,
                 judge: Judge | None = None) -> MatchResult:
    """Exact match, then (only if it fails and the answer is not empty) the judge."""
    if not normalize_answer(answer):
        return MatchResult(False, "empty", "no answer was given")
    if exact_match(answer, reference):
        return MatchResult(True, "exact")
    if judge is None:
        return MatchResult(None, "no_judge", "no exact match and no judge to ask")
    reply = judge(JUDGE_PROMPT.format(question=question, reference=" | ".join(aliases(reference)),
                                      answer=answer.strip()))
    verdict, reason = read_verdict(reply)
    if verdict is None:
        return MatchResult(None, "unreadable", f"the judge's reply could not be read: {reply[:200]!r}")
    return MatchResult(verdict, "judge", reason)


def read_verdict(reply: str | None) -> tuple[bool | None, str]:
    """(True for correct / yes, False for incorrect / no, None when unreadable; the reason if one was given)."""
    if not reply:
        return None, ""
    value = json_object_in(reply)
    if value is not None:
        for key in ("grade", "verdict", "answer", "correct", "holds"):
            if key in value:
                decided = _word_verdict(str(value[key]))
                if decided is not None:
                    return decided, str(value.get("reason", ""))[:500]
    word = _VERDICT_WORD.search(reply)
    if word:
        return _word_verdict(word.group(1)), reply.strip()[:500]
    return None, ""


def json_object_in(reply: str) -> dict | None:
    """The JSON object a judge's reply holds (from its first "{" to its last "}"), or None."""
    match = _JSON_OBJECT.search(reply)
    if not match:
        return None
    try:
        value = json.loads(match.group(0))
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _word_verdict(word: str) -> bool | None:
    word = word.strip().lower()
    if word in ("correct", "yes", "true", "supported"):
        return True
    if word in ("incorrect", "wrong", "no", "false", "unsupported"):
        return False
    return None
