"""Validating one built instance: run the tests R times with the test patch only (`before`) and R times with
the test patch and the gold patch (`after`), then grade (`verifiers.grading`).

All 2R runs share one container (`envbuilder.containers.run_validation`), each from a fresh copy of the
checkout, in a random order, with nothing visible to the tests that tells the phase. Runs come back in the
order they ran; `attempt` numbers a run among its own phase's runs. Runs stop early when one cannot be graded
(a patch that does not apply, a timeout, the OOM killer, a crash): repeating it would only spend the time
again. Like the build, this runs in a Prefect task and returns plain data; the flow process stores it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from envbuilder.containers import PhasePlan, PhaseRun, run_validation
from envbuilder.runners import REPORT_PATH, runner_for
from tasksynth.config import Config
from tasksynth.hashing import content_hash
from verifiers.grading import Grade, RunOutcome, agreement, grade, rejected

BEFORE, AFTER = "before", "after"
TEST_PATCH, GOLD_PATCH = "test.patch", "gold.patch"
PHASES = (PhasePlan(BEFORE, (TEST_PATCH,)), PhasePlan(AFTER, (TEST_PATCH, GOLD_PATCH)))


@dataclass
class ValidationOutcome:
    validation_id: str
    instance_id: str
    grade: Grade
    runs: list[PhaseRun] = field(default_factory=list)
    seconds: float = 0.0
    repeat: int = 0
    agreement: str | None = None


def validation_id(instance_id: str, image: str | None, repeat: int, round_: str) -> str:
    return content_hash("validation", instance_id, image, repeat, round_)


def validate_instance(config: Config, candidate: dict[str, Any], instance: dict[str, Any], *, repeat: int,
                      round_: str) -> ValidationOutcome:
    vid = validation_id(candidate["instance_id"], instance.get("image"), repeat, round_)
    started = time.monotonic()
    if instance["status"] != "built":
        result = rejected(instance["reason"] or "install_failed", instance.get("detail") or "the build failed")
        return _outcome(vid, candidate, result, [], started, repeat)
    runner = runner_for(instance["test_runner"])
    targets = list(instance.get("test_targets") or [])
    runs = run_validation(config, instance["image"], phases=PHASES, repeat=repeat,
                          patches={TEST_PATCH: candidate["test_patch"], GOLD_PATCH: candidate["patch"]},
                          command=instance["test_command"], ok_exit_codes=sorted(runner.ok_exit_codes),
                          read_report=lambda code, report: runner.read_report(code, report, targets),
                          report_path=REPORT_PATH, max_log_bytes=config.store.max_log_bytes).runs
    before = [RunOutcome(r.status, {t: o.outcome for t, o in r.tests.items()}, r.detail) for r in runs
              if r.phase == BEFORE]
    after = [RunOutcome(r.status, {t: o.outcome for t, o in r.tests.items()}, r.detail) for r in runs
             if r.phase == AFTER]
    return _outcome(vid, candidate, grade(before, after), runs, started, repeat)


def _outcome(vid: str, candidate: dict[str, Any], result: Grade, runs: list[PhaseRun], started: float,
             repeat: int) -> ValidationOutcome:
    imported_f2p, imported_p2p = candidate.get("imported_fail_to_pass"), candidate.get("imported_pass_to_pass")
    agreed = agreement(result.fail_to_pass, result.pass_to_pass, imported_f2p, imported_p2p, valid=result.valid)
    return ValidationOutcome(vid, candidate["instance_id"], result, runs, time.monotonic() - started, repeat, agreed)
