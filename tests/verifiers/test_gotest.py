"""`go test -json` -> JUnit: every test's outcome under `<package>::<test>`, crashes and build failures as errors,
and output the converter does not understand refused instead of guessed. The events are written as Go 1.19's
test2json writes them (Debian bookworm's golang-go)."""

from __future__ import annotations

import json

import pytest
from junitparser import JUnitXml

from envbuilder.runners import runner_for
from verifiers.gotest import GoTestOutputError, go_test_json_to_junit
from verifiers.grading import JUNIT_MALFORMED, OK, TESTS_CRASHED

PKG = "example.com/calc"


def events(*items: tuple) -> str:
    lines = []
    for action, test, extra in items:
        event = {"Time": "2026-12-01T03:00:00Z", "Action": action, "Package": PKG, **extra}
        if test:
            event["Test"] = test
        lines.append(json.dumps(event))
    return "\n".join(lines) + "\n"


RUN = events(("run", "TestAdd", {}), ("output", "TestAdd", {"Output": "=== RUN   TestAdd\n"}),
             ("output", "TestAdd", {"Output": "--- PASS: TestAdd (0.00s)\n"}), ("pass", "TestAdd", {"Elapsed": 0.01}),
             ("run", "TestDiv", {}), ("run", "TestDiv/by_zero", {}),
             ("output", "TestDiv/by_zero", {"Output": "    calc_test.go:12: got 1, want 0 <&>\n"}),
             ("fail", "TestDiv/by_zero", {"Elapsed": 0}), ("fail", "TestDiv", {"Elapsed": 0}),
             ("run", "TestSlow", {}), ("output", "TestSlow", {"Output": "    calc_test.go:20: needs a network\n"}),
             ("skip", "TestSlow", {"Elapsed": 0}), ("output", None, {"Output": "FAIL\n"}),
             ("fail", None, {"Elapsed": 0.02}))


def test_each_test_and_subtest_becomes_a_junit_case_read_back_by_the_runner():
    xml = go_test_json_to_junit(RUN)
    suites = list(JUnitXml.fromstring(xml.encode()))
    assert [s.name for s in suites] == [PKG]

    status, _, outcomes = runner_for("gotest").read_report(1, RUN, ["."])

    assert status == OK
    assert {t: o.outcome for t, o in outcomes.items()} == {
        f"{PKG}::TestAdd": "passed", f"{PKG}::TestDiv": "failed", f"{PKG}::TestDiv/by_zero": "failed",
        f"{PKG}::TestSlow": "skipped"}
    assert outcomes[f"{PKG}::TestDiv/by_zero"].message == "calc_test.go:12: got 1, want 0 <&>"
    assert outcomes[f"{PKG}::TestAdd"].seconds == pytest.approx(0.01)


def test_a_test_that_never_ends_and_a_package_that_does_not_build_are_errors():
    panicked = events(("run", "TestBoom", {}), ("output", "TestBoom", {"Output": "panic: boom\n"}),
                      ("fail", None, {"Elapsed": 0.1}))
    broken = (json.dumps({"Action": "output", "Package": "example.com/broken",
                          "Output": "calc.go:3:1: syntax error\n"}) + "\n" +
              json.dumps({"Action": "fail", "Package": "example.com/broken", "Elapsed": 0}) + "\n")

    _, _, outcomes = runner_for("gotest").read_report(1, panicked + broken, [])

    assert outcomes[f"{PKG}::TestBoom"].outcome == "error"
    assert outcomes[f"{PKG}::TestBoom"].message == "did not finish"
    assert outcomes["example.com/broken::[package]"].outcome == "error"
    assert "syntax error" in outcomes["example.com/broken::[package]"].message


@pytest.mark.parametrize("stream, says", [
    ("ok  \texample.com/calc\t0.01s\n", "is not a JSON event"),
    ('{"Action": "explode", "Package": "p"}\n', "unknown action 'explode'"),
    ('{"Action": "pass"}\n', "without a package"),
])
def test_output_it_does_not_understand_is_refused(stream, says):
    with pytest.raises(GoTestOutputError, match=says):
        go_test_json_to_junit(stream)
    status, detail, outcomes = runner_for("gotest").read_report(0, stream, [])
    assert (status, outcomes) == (JUNIT_MALFORMED, {}) and says in detail


def test_the_runner_targets_touched_packages_and_treats_other_exit_codes_as_a_crash():
    runner = runner_for("gotest")
    test_patch = "diff --git a/calc/calc_test.go b/calc/calc_test.go\n--- a/calc/calc_test.go\n+++ b/calc/calc_test.go\n@@ -1 +1 @@\n-a\n+b\n"
    patch = "diff --git a/main.go b/main.go\n--- a/main.go\n+++ b/main.go\n@@ -1 +1 @@\n-a\n+b\n"
    targets = runner.select_tests(["main.go", "calc/calc_test.go"], test_patch, patch, "touched")
    assert targets == ["./calc", "."]
    assert runner.command("go test -count=1", targets, "/io/junit.xml") == \
        "go test -count=1 -json ./calc . > /io/junit.xml"
    assert runner.command("go test", [], "/io/r") == "go test -json ./... > /io/r"
    assert runner.read_report(2, RUN, targets)[0] == TESTS_CRASHED
