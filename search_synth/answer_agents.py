"""Answer agents (DeepSeek-V3.2 report, search agent: several answer agents try every question): N
configurations (`search.answerers`: role, model, temperature, with or without search, turn budget), each run
once per question; the flow runs them concurrently within each endpoint's configured concurrency.

    inputs:  a question (search_questions row with status ok), an answerer configuration, the search tools
    outputs: search_candidates(answerer, model, temperature, with_search, answer, stop_reason, trajectory_id)

The short answer is read from the final message (`Answer: X`, a JSON `answer`, or the last line); an
abstention ("I don't know") or no final message is stored as no answer, which is wrong by rule.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from agent import CallRecord, TrajectoryRecord
from search_synth.replies import short_answer
from search_synth.roles import SearchSynthError, role_settings, run_role, settings_key
from tasksynth.config import AnswererConfig, Config, RoleConfig
from tasksynth.hashing import content_hash

ANSWER_SCHEMA = 1


@dataclass
class CandidateOutcome:
    candidate_id: str
    question_id: str
    answerer: str
    model: str
    temperature: float
    with_search: bool
    answer: str | None
    stop_reason: str
    trajectory_id: str | None
    calls: list[CallRecord] = field(default_factory=list)
    trajectories: list[TrajectoryRecord] = field(default_factory=list)

    def row(self, run_id: str | None) -> dict[str, Any]:
        return {"candidate_id": self.candidate_id, "question_id": self.question_id, "answerer": self.answerer,
                "model": self.model, "temperature": self.temperature, "with_search": self.with_search,
                "answer": self.answer, "stop_reason": self.stop_reason, "trajectory_id": self.trajectory_id,
                "run_id": run_id}


def answerer_settings(config: Config, answerer: AnswererConfig) -> RoleConfig:
    return role_settings(config, answerer.role, model=answerer.model or None,
                         temperature=answerer.temperature if answerer.temperature >= 0 else None,
                         max_turns=answerer.max_turns or None)


def check_answerers(answerers: list[AnswererConfig]) -> None:
    names = [a.name for a in answerers]
    if not answerers:
        raise SearchSynthError("search.answerers is empty: configure at least one answer agent")
    if len(set(names)) != len(names):
        raise SearchSynthError(f"search.answerers has repeated names: {names}")


def candidate_key(config: Config, question_id: str, answerer: AnswererConfig) -> str:
    settings = answerer_settings(config, answerer)
    return content_hash(ANSWER_SCHEMA, question_id, answerer.name, answerer.search,
                        settings_key(config, answerer.role, settings))


def answer_question(config: Config, tools: list, question: dict[str, Any], answerer: AnswererConfig) -> CandidateOutcome:
    """One answer agent's attempt at one question."""
    settings = answerer_settings(config, answerer)
    run = run_role(config, answerer.role, answering_message(question["question"], answerer.search),
                   tools=tools if answerer.search else [], settings=settings)
    answer = short_answer(run.result.final_answer) if run.result.final_answer is not None else None
    return CandidateOutcome(candidate_id=candidate_key(config, question["question_id"], answerer),
                            question_id=question["question_id"], answerer=answerer.name, model=run.model,
                            temperature=settings.temperature, with_search=answerer.search, answer=answer,
                            stop_reason=run.result.stop_reason, trajectory_id=run.result.trajectory_id,
                            calls=run.calls, trajectories=run.trajectories)


def answering_message(question: str, with_search: bool) -> str:
    how = ("Use the search tools as much as you need." if with_search
           else "You have no tools: answer from what you know.")
    return f"{question}\n\n{how} End with one line: Answer: <short answer>"
