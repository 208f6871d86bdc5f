"""The JavaScript test runner: mocha with its JUnit reporter (`mocha-junit-reporter`), read with junitparser.

Test ids are the reporter's full titles (`<describe titles> <it title>`), the names `mocha --grep` matches.
Targets are the test files the test patch touches (test/**, *.test.js, *.spec.js); none: mocha's default
(./test). mocha exits with the number of failed tests (capped), so any exit below 128 is read; whether the
run crashed shows in the report being missing or empty.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterable

from envbuilder.runners import REPORT_PATH, RUNNERS, TestRunner
from envbuilder.runners_go import parse_junit_cases
from envbuilder.sources.patches import file_diffs
from verifiers.grading import JUNIT_MALFORMED, JUNIT_MISSING, OK, TESTS_CRASHED
from verifiers.junit import JUnitError, TestOutcome

MOCHA_COMMAND = "node /opt/node_modules/mocha/bin/mocha.js --reporter mocha-junit-reporter"
_TEST_FILE = re.compile(r"(^|/)(tests?/.*\.[cm]?js|[^/]+\.(test|spec)\.[cm]?js)$")


class MochaRunner(TestRunner):
    name = "mocha"
    language = "javascript"
    ok_exit_codes = frozenset(range(128))

    def select_tests(self, files: Iterable[str], test_patch: str, patch: str, scope: str) -> list[str]:
        if scope == "all":
            return []
        return list(dict.fromkeys(p.path for p in file_diffs(test_patch)
                                  if _TEST_FILE.search(p.path) and "\n+++ /dev/null" not in p.text))

    def command(self, base_command: str, targets: list[str], report_path: str = REPORT_PATH) -> str:
        return " ".join([base_command, "--reporter-options", shlex.quote(f"mochaFile={report_path}"),
                         *(shlex.quote(t) for t in targets)])

    def read_report(self, exit_code: int | None, report: str | None,
                    targets: list[str]) -> tuple[str, str, dict[str, TestOutcome]]:
        if exit_code is None or exit_code not in self.ok_exit_codes:
            return TESTS_CRASHED, f"mocha exited with {exit_code}", {}
        if report is None or not report.strip():
            return JUNIT_MISSING, "mocha wrote no JUnit report (it crashed before its reporter ran)", {}
        try:
            outcomes = parse_junit_cases(report, lambda classname, name: name)
        except JUnitError as exc:
            return JUNIT_MALFORMED, str(exc), {}
        return OK, f"{exit_code} failed" if exit_code else "all passed", outcomes


RUNNERS.setdefault(MochaRunner.name, MochaRunner())
