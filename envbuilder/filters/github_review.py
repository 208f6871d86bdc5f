"""The optional LLM review of GitHub issue->PR pairs (DeepSeek-V3.2 report, agentic task synthesis: mined
pairs are screened before environments are built for them).

Inputs: the problem statement (issue text), the gold patch and the test patch of a `ReviewRequest`.
Outputs: a `Review` -- `score` (0..1, None when the model's answer cannot be read), `rationale`, `accept`.

The model is reached through the agent loop (`agent.Agent`, role `github.review_role`, default
`github_reviewer`, endpoint from `agents.<role>`), behind one small function `complete(system, user) -> str`
that tests and other callers can replace. The system prompt is `github_review.md` next to this file, unless
the role names its own prompt file. An answer that cannot be parsed does not raise: the pair is kept
with score None and the rationale says so (the review is advisory when it cannot be read).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

from envbuilder.sources.github.miner import Review, Reviewer, ReviewRequest
from tasksynth.config import Config

PROMPT_FILE = Path(__file__).with_name("github_review.md")
MAX_PATCH_CHARS = 12_000  # what the reviewer sees of each patch; the rest is elided
Complete = Callable[[str, str], str]


def review_message(request: ReviewRequest) -> str:
    return (f"Repository: {request.repo} (pull request #{request.pr_number})\n\n"
            f"## Issue (task statement)\n{request.problem_statement.strip()}\n\n"
            f"## Gold patch\n```diff\n{_clip(request.patch)}```\n\n"
            f"## Test patch\n```diff\n{_clip(request.test_patch)}```\n")


def parse_review(text: str | None, min_score: float) -> Review:
    """The model's answer as a Review; tolerant of prose around the JSON and of a bare score."""
    text = text or ""
    data = None
    for match in re.finditer(r"\{.*?\}", text, re.DOTALL):
        try:
            data = json.loads(match.group(0))
            break
        except ValueError:
            continue
    if isinstance(data, dict) and isinstance(data.get("score"), (int, float)):
        score = max(0.0, min(1.0, float(data["score"])))
        verdicts = [data.get(k) for k in ("statement", "patch", "tests")]
        rationale = str(data.get("rationale") or "").strip()
        accept = score >= min_score and not any(v is False for v in verdicts)
        return Review(score, rationale or "(no rationale)", accept)
    bare = re.search(r"score\W+([01](?:\.\d+)?)", text, re.IGNORECASE)
    if bare:
        score = float(bare.group(1))
        return Review(score, text.strip()[:500], score >= min_score)
    return Review(None, f"the review could not be read: {text.strip()[:200]!r}", True)


def agent_complete(config: Config, *, store=None) -> Complete:
    """`complete(system, user)` through the agent loop, recording calls in the store when one is given."""
    from agent.loop import Agent
    from agent.prompts import find_prompt

    role = config.github.review_role
    settings = config.role(role)

    def complete(system: str, user: str) -> str:
        recorder = None
        if store is not None:
            from agent.accounting import StoreRecorder

            recorder = StoreRecorder(store)
        agent = Agent(role, config, tools=[], recorder=recorder, system_prompt=system, settings=settings)
        result = agent.run_sync(user)
        if result.final_answer is None:
            raise RuntimeError(f"review agent stopped: {result.stop_reason}: {result.error}")
        return result.final_answer

    prompt = find_prompt(role, settings.prompt, home=config.home_path)
    complete.prompt_file = prompt or PROMPT_FILE  # type: ignore[attr-defined]
    return complete


def make_reviewer(config: Config, *, store=None, complete: Complete | None = None) -> Reviewer:
    """The reviewer the miner calls for every pair that passed the heuristic filters."""
    complete = complete or agent_complete(config, store=store)
    prompt_file = getattr(complete, "prompt_file", PROMPT_FILE)
    system = Path(prompt_file).read_text()
    min_score = config.github.min_review_score

    def review(request: ReviewRequest) -> Review:
        try:
            answer = complete(system, review_message(request))
        except Exception as exc:  # noqa: BLE001 - an unreachable reviewer must not lose the pair
            return Review(None, f"the review failed: {type(exc).__name__}: {str(exc)[:200]}", True)
        return parse_review(answer, min_score)

    return review


def _clip(patch: str) -> str:
    if len(patch) <= MAX_PATCH_CHARS:
        return patch if patch.endswith("\n") else patch + "\n"
    return patch[:MAX_PATCH_CHARS] + f"\n... ({len(patch) - MAX_PATCH_CHARS} more characters)\n"
