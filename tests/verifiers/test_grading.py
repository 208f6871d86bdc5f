"""Grading is a pure function: outcomes per run per phase -> F2P / P2F / P2P / flaky, a verdict and a reason."""

import pytest

from verifiers.grading import RunOutcome, agreement, grade

A, B, C = "tests/test_m.py::test_a", "tests/test_m.py::test_b", "tests/test_m.py::test_c"


def runs(*outcomes, status="ok"):
    return [RunOutcome(status, dict(o)) for o in outcomes]


def test_a_fix_is_valid():
    before = runs({A: "failed", B: "passed"}, {A: "failed", B: "passed"})
    after = runs({A: "passed", B: "passed"}, {A: "passed", B: "passed"})
    result = grade(before, after)
    assert result.verdict == "valid" and result.reason is None
    assert result.fail_to_pass == (A,) and result.pass_to_pass == (B,) and result.pass_to_fail == ()


def test_breaking_another_test_is_pass_to_fail():
    before = runs({A: "failed", B: "passed"})
    after = runs({A: "passed", B: "failed"})
    result = grade(before, after)
    assert (result.verdict, result.reason) == ("rejected", "pass_to_fail")
    assert result.fail_to_pass == (A,) and result.pass_to_fail == (B,)
    assert B in result.detail


def test_a_test_that_already_passed_gives_no_fail_to_pass():
    result = grade(runs({A: "passed"}), runs({A: "passed"}))
    assert (result.verdict, result.reason) == ("rejected", "no_fail_to_pass")
    assert result.pass_to_pass == (A,)


def test_a_test_missing_before_counts_as_failing():
    # the test module failed to import before the fix: only the collection error is reported
    before = runs({"tests/test_m.py": "error"})
    after = runs({A: "passed", B: "passed"})
    result = grade(before, after)
    assert result.valid and result.fail_to_pass == (A, B)


def test_an_errored_test_that_passes_after_is_fail_to_pass():
    assert grade(runs({A: "error"}), runs({A: "passed"})).fail_to_pass == (A,)


def test_skipped_tests_count_nowhere():
    result = grade(runs({A: "failed", C: "skipped"}), runs({A: "passed", C: "skipped"}))
    assert result.valid and C not in result.fail_to_pass + result.pass_to_pass


def test_flaky_tests_are_left_out_and_recorded():
    before = runs({A: "failed", C: "passed"}, {A: "failed", C: "failed"})
    after = runs({A: "passed", C: "passed"}, {A: "passed", C: "passed"})
    result = grade(before, after)
    assert result.valid and result.flaky == (C,) and result.pass_to_pass == () and "flaky" in result.detail


def test_only_a_flaky_fail_to_pass_is_rejected_as_flaky():
    before = runs({A: "failed"}, {A: "failed"})
    after = runs({A: "passed"}, {A: "failed"})
    result = grade(before, after)
    assert (result.verdict, result.reason, result.flaky) == ("rejected", "flaky", (A,))


@pytest.mark.parametrize("status, reason", [
    ("patch_does_not_apply", "patch_does_not_apply"), ("timeout", "timeout"), ("oom", "oom"),
    ("tests_crashed", "tests_crashed"), ("junit_missing", "tests_crashed"), ("junit_malformed", "tests_crashed"),
])
def test_a_run_that_cannot_be_graded_rejects_with_its_reason(status, reason):
    before = [RunOutcome("ok", {A: "failed"})]
    after = [RunOutcome(status, {}, "what happened")]
    result = grade(before, after)
    assert (result.verdict, result.reason) == ("rejected", reason)
    assert result.detail == "after phase, run 1: what happened"


def test_a_patch_failure_is_reported_before_other_failures():
    result = grade([RunOutcome("timeout", {})], [RunOutcome("patch_does_not_apply", {}, "gold")])
    assert result.reason == "patch_does_not_apply"


def test_before_failure_needs_no_after_phase():
    result = grade([RunOutcome("patch_does_not_apply", {}, "the test patch does not apply")], [])
    assert result.reason == "patch_does_not_apply" and "before phase" in result.detail


def test_agreement_with_imported_lists():
    assert agreement([A], [B], [A], [B]) == "exact"
    assert agreement([A], [B], [A], [B, C]) == "subset"  # SWE-bench lists every passing test; we ran fewer
    assert agreement([A], [B], [C], [B]) == "disagree"
    assert agreement([], [], [A], [B], valid=False) == "disagree"
    assert agreement([A], [B], None, None) is None


def test_grade_is_deterministic_and_sorted():
    before = runs({C: "failed", A: "failed"})
    after = runs({C: "passed", A: "passed"})
    assert grade(before, after).fail_to_pass == (A, C) == grade(before, after).fail_to_pass
