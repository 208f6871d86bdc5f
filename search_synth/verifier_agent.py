"""The verifier (DeepSeek-V3.2 report, search agent: "a verification agent checks the ground truth and every
candidate"): with search over the same corpus,

1. the truth check: the ground truth follows from the evidence and is the only answer that fits;
2. each candidate is judged against the ground truth: normalised exact match first (no model), no answer
   is wrong by rule, otherwise the grader role judges (`verifiers.answer_match`);
3. every candidate judged wrong gets a second check: could it also be a correct answer given the evidence?
   If so, the question is ambiguous.

    inputs:  a question (search_questions row), a candidate (search_candidates row)
    outputs: search_verdicts(check_name truth | judge | second, outcome, method, model, reason, trajectory_id)

A reply that cannot be read counts against the item (truth `unsupported`, judge `undecided`, second check
`could_be_correct`): a filter that cannot tell must not let an item through.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from agent import CallRecord, TrajectoryRecord
from search_synth.replies import first_json_object, strip_thinking
from search_synth.roles import GRADER, VERIFIER, role_settings, run_role, settings_key
from tasksynth.config import Config
from tasksynth.hashing import content_hash
from verifiers.answer_match import match_answer, read_verdict

VERIFY_SCHEMA = 1


@dataclass
class VerdictOutcome:
    """One or more verdict rows of a check, and the records of the agents it ran."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    calls: list[CallRecord] = field(default_factory=list)
    trajectories: list[TrajectoryRecord] = field(default_factory=list)

    def add(self, question_id: str, candidate_id: str | None, check: str, outcome: str, method: str,
            model: str | None = None, reason: str = "", trajectory_id: str | None = None) -> None:
        self.rows.append({"verdict_id": content_hash(question_id, candidate_id, check),
                          "question_id": question_id, "candidate_id": candidate_id, "check_name": check,
                          "outcome": outcome, "method": method, "model": model, "reason": reason[:1000],
                          "trajectory_id": trajectory_id})


def truth_key(config: Config, question_id: str) -> str:
    return content_hash(VERIFY_SCHEMA, "truth", question_id,
                        settings_key(config, VERIFIER, role_settings(config, VERIFIER)))


def judge_key(config: Config, candidate_id: str) -> str:
    return content_hash(VERIFY_SCHEMA, "judge", candidate_id,
                        settings_key(config, VERIFIER, role_settings(config, VERIFIER)),
                        settings_key(config, GRADER, role_settings(config, GRADER)))


def check_truth(config: Config, tools: list, question: dict[str, Any]) -> VerdictOutcome:
    out = VerdictOutcome()
    run = run_role(config, VERIFIER, truth_message(question), tools=tools)
    out.calls, out.trajectories = run.calls, run.trajectories
    supported, reason = _read_truth(run.result.final_answer)
    out.add(question["question_id"], None, "truth", "supported" if supported else "unsupported", "judge",
            run.model, reason, run.result.trajectory_id)
    return out


def judge_candidate(config: Config, tools: list, question: dict[str, Any], candidate: dict[str, Any]) -> VerdictOutcome:
    """The judge of one candidate and, when it is judged wrong, the second check."""
    out = VerdictOutcome()
    qid, cid = question["question_id"], candidate["candidate_id"]
    judge_runs = []

    def judge(prompt: str) -> str:
        run = run_role(config, GRADER, prompt)
        judge_runs.append(run)
        return run.result.final_answer or ""

    match = match_answer(question["question"], candidate.get("answer"), question["answer"], judge=judge)
    for run in judge_runs:
        out.calls += run.calls
        out.trajectories += run.trajectories
    judge_run = judge_runs[-1] if judge_runs else None
    outcome = {True: "correct", False: "wrong", None: "undecided"}[match.correct]
    out.add(qid, cid, "judge", outcome, "rule" if match.method == "empty" else match.method,
            judge_run.model if judge_run else None, match.detail,
            judge_run.result.trajectory_id if judge_run else None)
    if match.correct is False and match.method != "empty":
        run = run_role(config, VERIFIER, second_check_message(question, candidate["answer"]), tools=tools)
        out.calls += run.calls
        out.trajectories += run.trajectories
        could, reason = _read_could_be_correct(run.result.final_answer)
        out.add(qid, cid, "second", "could_be_correct" if could else "excluded", "judge", run.model, reason,
                run.result.trajectory_id)
    return out


def truth_message(question: dict[str, Any]) -> str:
    return (f"Question: {question['question']}\nProposed answer: {question['answer']}\n"
            f"Evidence (document id and quote):\n{_evidence_text(question)}\n\n"
            "Check the facts with the search tools. Does the answer follow from the evidence, and is it the "
            'only answer that fits? Reply with JSON: {"verdict": "supported" | "unsupported", "reason": "..."}')


def second_check_message(question: dict[str, Any], answer: str) -> str:
    return (f"Question: {question['question']}\nReference answer: {question['answer']}\n"
            f"Evidence:\n{_evidence_text(question)}\n\nAnother answer was given: {answer}\n"
            "It differs from the reference. Could it ALSO be a correct answer to the question, given the "
            "evidence and what you find with the search tools? Reply with JSON: "
            '{"verdict": "yes" | "no", "reason": "..."}')


def _evidence_text(question: dict[str, Any]) -> str:
    evidence = question.get("evidence") or []
    if isinstance(evidence, str):
        evidence = json.loads(evidence)
    return "\n".join(f"- [{e.get('doc_id')}] {e.get('quote', '')}" for e in evidence) or "(none)"


def _read_truth(reply: str | None) -> tuple[bool, str]:
    text = strip_thinking(reply)
    data = first_json_object(text)
    if data and str(data.get("verdict", "")).strip().lower() in ("supported", "correct", "yes", "true"):
        return True, str(data.get("reason", ""))
    if data and "verdict" in data:
        return False, str(data.get("reason", "")) or f"verdict {data['verdict']!r}"
    decided, reason = read_verdict(text)
    if decided is None:
        return False, f"the verifier's reply could not be read: {text[:200]!r}"
    return decided, reason


def _read_could_be_correct(reply: str | None) -> tuple[bool, str]:
    text = strip_thinking(reply)
    decided, reason = read_verdict(text)
    if decided is None:
        return True, f"the verifier's reply could not be read: {text[:200]!r}"
    return decided, reason
