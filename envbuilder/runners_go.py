"""The Go test runner: `go test -json` over the touched packages, its event stream converted to JUnit
(`verifiers.gotest`, which refuses output it does not understand) and read with junitparser.

Test ids are `<import path>::<TestName>` (subtests `TestA/sub`), the names `go test -run` takes. Targets are
package directories (`./pkg/x`): the packages of the test files the test patch touches and of the Go files
the gold patch touches; none (or scope "all"): `./...`.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable, Iterable
from pathlib import PurePosixPath

from junitparser import JUnitXml, TestSuite

from envbuilder.runners import REPORT_PATH, RUNNERS, TestRunner
from envbuilder.sources.patches import file_diffs
from verifiers.gotest import GoTestOutputError, go_test_json_to_junit
from verifiers.grading import JUNIT_MALFORMED, JUNIT_MISSING, OK, TESTS_CRASHED
from verifiers.junit import _SEVERITY, JUnitError, TestOutcome, _outcome, _seconds

GO_TEST_COMMAND = "go test -count=1"


class GoTestRunner(TestRunner):
    name = "gotest"
    language = "go"
    # go test: 0 all passed, 1 a test failed or a package did not build (its report says which); 2 usage error
    OK_EXIT_CODES = {0: "all passed", 1: "some tests or packages failed"}

    def select_tests(self, files: Iterable[str], test_patch: str, patch: str, scope: str) -> list[str]:
        if scope == "all":
            return []
        touched = [p.path for p in file_diffs(test_patch) if p.path.endswith("_test.go")]
        touched += [p.path for p in file_diffs(patch) if p.path.endswith(".go")]
        return list(dict.fromkeys(_package_dir(path) for path in touched))

    def command(self, base_command: str, targets: list[str], report_path: str = REPORT_PATH) -> str:
        packages = " ".join(shlex.quote(t) for t in targets) or "./..."
        return f"{base_command} -json {packages} > {shlex.quote(report_path)}"

    def read_report(self, exit_code: int | None, report: str | None,
                    targets: list[str]) -> tuple[str, str, dict[str, TestOutcome]]:
        if exit_code not in self.OK_EXIT_CODES:
            return TESTS_CRASHED, f"go test exited with {exit_code}", {}
        if report is None or not report.strip():
            return JUNIT_MISSING, "go test wrote no -json output", {}
        try:
            outcomes = parse_go_junit(go_test_json_to_junit(report))
        except GoTestOutputError as exc:
            return JUNIT_MALFORMED, str(exc), {}
        except JUnitError as exc:
            return JUNIT_MALFORMED, str(exc), {}
        return OK, self.OK_EXIT_CODES[exit_code], outcomes


def parse_go_junit(xml: str) -> dict[str, TestOutcome]:
    """The converted report read back with junitparser, keyed `<package>::<test>`."""
    return parse_junit_cases(xml, lambda classname, name: f"{classname}::{name}")


def parse_junit_cases(xml: str, test_id: Callable[[str, str], str]) -> dict[str, TestOutcome]:
    """Every <testcase> of a JUnit report read with junitparser, keyed by `test_id(classname, name)` (the
    worst outcome wins when one id appears twice)."""
    try:
        report = JUnitXml.fromstring(xml.encode())
    except Exception as exc:  # noqa: BLE001 - any parser error means a malformed report
        raise JUnitError(f"malformed JUnit XML: {exc}") from None
    outcomes: dict[str, TestOutcome] = {}
    for suite in [report] if isinstance(report, TestSuite) else list(report):
        for case in suite:
            outcome, message = _outcome(case.result)
            key = test_id(case.classname or "", case.name or "")
            previous = outcomes.get(key)
            if previous is None or _SEVERITY[outcome] > _SEVERITY[previous.outcome]:
                outcomes[key] = TestOutcome(key, outcome, _seconds(case), message)
    return outcomes


def _package_dir(path: str) -> str:
    parent = str(PurePosixPath(path).parent)
    return "." if parent == "." else f"./{parent}"


RUNNERS.setdefault(GoTestRunner.name, GoTestRunner())
