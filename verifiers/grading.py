"""Grading a code task: test outcomes of the runs of two phases -> FAIL_TO_PASS, PASS_TO_FAIL, PASS_TO_PASS,
flaky tests, a verdict and its reason. A pure function of its inputs (no I/O), as in SWE-bench's
`harness/grading.py`, so it is tested alone and replayed from stored runs.

Phases: `before` ran with the test patch only, `after` with the test patch and the gold patch; each ran R
times. A test whose outcome changes between the repeats of a phase is flaky and left out of every list. A
test missing from a phase's report (its module failed to import, say) counts as failing there, as SWE-bench
counts it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from verifiers.junit import ERROR, FAILED, PASSED

VALID, REJECTED = "valid", "rejected"
# Run statuses (test_runs.status); `ok` means a JUnit report was read.
OK = "ok"
PATCH_DOES_NOT_APPLY = "patch_does_not_apply"
TIMEOUT = "timeout"
OOM = "oom"
TESTS_CRASHED = "tests_crashed"
JUNIT_MISSING = "junit_missing"
JUNIT_MALFORMED = "junit_malformed"
# Rejection reasons (code_tasks.reason), in the order they are looked for.
NO_FAIL_TO_PASS = "no_fail_to_pass"
PASS_TO_FAIL = "pass_to_fail"
FLAKY = "flaky"
INSTALL_FAILED = "install_failed"
RUN_STATUS_REASONS = {PATCH_DOES_NOT_APPLY: PATCH_DOES_NOT_APPLY, OOM: OOM, TIMEOUT: TIMEOUT,
                      TESTS_CRASHED: TESTS_CRASHED, JUNIT_MISSING: TESTS_CRASHED, JUNIT_MALFORMED: TESTS_CRASHED}
MISSING = "missing"
FAILING = {FAILED, ERROR, MISSING}


@dataclass(frozen=True)
class RunOutcome:
    """One run of one phase: its status and, when `ok`, the outcome of every test it reported."""

    status: str
    tests: Mapping[str, str] = field(default_factory=dict)  # test id -> passed | failed | error | skipped
    detail: str = ""


@dataclass(frozen=True)
class Grade:
    verdict: str
    reason: str | None
    detail: str
    fail_to_pass: tuple[str, ...] = ()
    pass_to_fail: tuple[str, ...] = ()
    pass_to_pass: tuple[str, ...] = ()
    flaky: tuple[str, ...] = ()

    @property
    def valid(self) -> bool:
        return self.verdict == VALID

    def as_dict(self) -> dict[str, Any]:
        return {"verdict": self.verdict, "reason": self.reason, "detail": self.detail,
                "fail_to_pass": list(self.fail_to_pass), "pass_to_fail": list(self.pass_to_fail),
                "pass_to_pass": list(self.pass_to_pass), "flaky": list(self.flaky)}


def rejected(reason: str, detail: str) -> Grade:
    return Grade(REJECTED, reason, detail)


def grade(before: Sequence[RunOutcome], after: Sequence[RunOutcome]) -> Grade:
    """The verdict of one validation: `valid` when F2P > 0 and P2F = 0 among tests that are not flaky."""
    failure = _first_failed_run(before, after)
    if failure:
        return failure
    if not before or not after:
        return rejected(TESTS_CRASHED, "a phase has no runs")
    stable_before, flaky_before = _stable(before)
    stable_after, flaky_after = _stable(after)
    flaky = flaky_before | flaky_after
    tests = (set(stable_before) | set(stable_after)) - flaky
    f2p, p2f, p2p = [], [], []
    for test in tests:
        was, now = stable_before.get(test, MISSING), stable_after.get(test, MISSING)
        if was in FAILING and now == PASSED:
            f2p.append(test)
        elif was == PASSED and now in FAILING:
            p2f.append(test)
        elif was == PASSED and now == PASSED:
            p2p.append(test)
    lists = dict(fail_to_pass=tuple(sorted(f2p)), pass_to_fail=tuple(sorted(p2f)), pass_to_pass=tuple(sorted(p2p)),
                 flaky=tuple(sorted(flaky)))
    if p2f:
        return Grade(REJECTED, PASS_TO_FAIL, f"the gold patch breaks {len(p2f)} test(s) that passed before: "
                                             f"{_few(p2f)}", **lists)
    if not f2p:
        if flaky:
            return Grade(REJECTED, FLAKY, f"no stable test goes from failing to passing; flaky: {_few(flaky)}",
                         **lists)
        return Grade(REJECTED, NO_FAIL_TO_PASS, "no test fails before the gold patch and passes after it "
                                                f"({len(tests)} test(s) ran)", **lists)
    detail = f"{len(f2p)} fail-to-pass, {len(p2p)} pass-to-pass"
    if flaky:
        detail += f", {len(flaky)} flaky left out"
    return Grade(VALID, None, detail, **lists)


def _first_failed_run(before: Sequence[RunOutcome], after: Sequence[RunOutcome]) -> Grade | None:
    runs = [("before", i, r) for i, r in enumerate(before)] + [("after", i, r) for i, r in enumerate(after)]
    for status in (PATCH_DOES_NOT_APPLY, OOM, TIMEOUT, TESTS_CRASHED, JUNIT_MISSING, JUNIT_MALFORMED):
        for phase, attempt, run in runs:
            if run.status == status:
                what = run.detail or status.replace("_", " ")
                return rejected(RUN_STATUS_REASONS[status], f"{phase} phase, run {attempt + 1}: {what}")
    for phase, attempt, run in runs:
        if run.status != OK:
            return rejected(TESTS_CRASHED, f"{phase} phase, run {attempt + 1}: {run.status} {run.detail}".strip())
    return None


def _stable(runs: Sequence[RunOutcome]) -> tuple[dict[str, str], set[str]]:
    """The outcome of each test that had the same outcome in every run, and the set of tests that did not."""
    names = set().union(*(run.tests for run in runs))
    stable, flaky = {}, set()
    for name in names:
        seen = {run.tests.get(name, MISSING) for run in runs}
        if len(seen) == 1:
            stable[name] = seen.pop()
        else:
            flaky.add(name)
    return stable, flaky


def agreement(fail_to_pass: Iterable[str], pass_to_pass: Iterable[str], imported_fail_to_pass: Iterable[str] | None,
              imported_pass_to_pass: Iterable[str] | None, *, valid: bool = True) -> str | None:
    """How our lists compare with imported ones (SWE-bench's FAIL_TO_PASS / PASS_TO_PASS): `exact` when both are
    equal, `subset` when for each list one side contains the other and the fail-to-pass lists share a test,
    `disagree` otherwise; None when nothing was imported."""
    if imported_fail_to_pass is None and imported_pass_to_pass is None:
        return None
    ours_f, ours_p = set(fail_to_pass), set(pass_to_pass)
    theirs_f, theirs_p = set(imported_fail_to_pass or ()), set(imported_pass_to_pass or ())
    if not valid:
        return "disagree" if theirs_f else "exact"
    if ours_f == theirs_f and ours_p == theirs_p:
        return "exact"
    nested = lambda a, b: a <= b or b <= a  # noqa: E731
    if nested(ours_f, theirs_f) and nested(ours_p, theirs_p) and (ours_f & theirs_f or not theirs_f):
        return "subset"
    return "disagree"


def _few(tests: Iterable[str], limit: int = 3) -> str:
    items = sorted(tests)
    text = ", ".join(items[:limit])
    return text + (f" and {len(items) - limit} more" if len(items) > limit else "")
