"""Keep or discard a question from its whole trail: a pure function of the stored rows, no model.

Kept: the ground truth is verified and every candidate is verifiably wrong (judged wrong and excluded by
the second check). Discard reasons, in the order they are looked for:

- `truth_unverified`: the verifier did not find the answer to follow from the evidence;
- `answered_without_search`: an answerer without search got it right (memorised, or a shortcut);
- `answered_by_candidate`: an answerer with search got it right (too easy);
- `unjudged`: a candidate's judgement could not be read (a filter that cannot tell lets nothing through);
- `ambiguous`: a wrong candidate could also be correct given the evidence.

Every kept item records which models ran each filter; it is `weak_filter` when none of the models that
answered or judged it is strong (search_synth.roles.is_strong), so a weak default model cannot make junk
look hard.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from search_synth.roles import is_strong
from tasksynth.config import Config


@dataclass
class Decision:
    kept: bool
    reason: str | None
    detail: str = ""
    filter_models: dict[str, list[str]] = field(default_factory=dict)
    weak_filter: bool = False


def decide(config: Config, question: dict[str, Any], candidates: list[dict[str, Any]],
           verdicts: list[dict[str, Any]]) -> Decision:
    truth = [v for v in verdicts if v["check_name"] == "truth"]
    judged = {v["candidate_id"]: v for v in verdicts if v["check_name"] == "judge"}
    second = {v["candidate_id"]: v for v in verdicts if v["check_name"] == "second"}
    models = filter_models(question, candidates, verdicts)
    everyone = {m for key in ("answer", "judge", "verify") for m in models[key]}
    decision = Decision(False, None, filter_models=models,
                        weak_filter=not any(is_strong(config, m) for m in everyone))
    if not truth or truth[0]["outcome"] != "supported":
        decision.reason = "truth_unverified"
        decision.detail = truth[0]["reason"] if truth else "no truth check was made"
        return decision
    correct = [c for c in candidates if judged.get(c["candidate_id"], {}).get("outcome") == "correct"]
    if any(not c["with_search"] for c in correct):
        who = next(c for c in correct if not c["with_search"])
        decision.reason, decision.detail = "answered_without_search", f"{who['answerer']} ({who['model']}) answered {who['answer']!r}"
        return decision
    if correct:
        decision.reason, decision.detail = "answered_by_candidate", f"{correct[0]['answerer']} answered {correct[0]['answer']!r}"
        return decision
    undecided = [c for c in candidates if judged.get(c["candidate_id"], {}).get("outcome") != "wrong"]
    if undecided:
        decision.reason, decision.detail = "unjudged", f"no readable judgement of {undecided[0]['answerer']}'s answer"
        return decision
    ambiguous = [c for c in candidates if second.get(c["candidate_id"], {}).get("outcome") == "could_be_correct"]
    if ambiguous:
        decision.reason = "ambiguous"
        decision.detail = f"{ambiguous[0]['answer']!r} could also be correct: {second[ambiguous[0]['candidate_id']]['reason']}"
        return decision
    decision.kept = True
    return decision


def filter_models(question: dict[str, Any], candidates: list[dict[str, Any]],
                  verdicts: list[dict[str, Any]]) -> dict[str, list[str]]:
    """Which models ran each filter: the answerers, the judges and the verifier (rules need no model)."""
    return {"question": sorted({question.get("model") or ""} - {""}),
            "answer": sorted({c["model"] for c in candidates}),
            "judge": sorted({v["model"] for v in verdicts if v["check_name"] == "judge" and v.get("model")}),
            "verify": sorted({v["model"] for v in verdicts if v["check_name"] in ("truth", "second")
                              and v.get("model")})}
