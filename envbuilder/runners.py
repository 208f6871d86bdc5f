"""Test runners: which tests a validation runs, the command that runs them, and reading their report.

`TestRunner` is the interface each language implements (pytest now; go test, jest, cargo later). A runner
always reports through JUnit XML, so one parser (`verifiers.junit`) and one grader serve every language.
"""

from __future__ import annotations

import shlex
from abc import ABC, abstractmethod
from collections.abc import Iterable
from pathlib import PurePosixPath

from envbuilder.errors import UnsupportedProject
from envbuilder.sources.patches import file_diffs
from verifiers.grading import JUNIT_MALFORMED, JUNIT_MISSING, OK, TESTS_CRASHED
from verifiers.junit import JUnitError, TestOutcome, parse_junit

REPORT_PATH = "/io/junit.xml"


class TestRunner(ABC):
    name: str
    language: str
    # exit codes after which a run's report is read, with what each means; any other means the runner crashed
    # and ends the validation
    OK_EXIT_CODES: dict[int, str] = {}

    @property
    def ok_exit_codes(self) -> frozenset[int]:
        return frozenset(self.OK_EXIT_CODES)

    @abstractmethod
    def select_tests(self, files: Iterable[str], test_patch: str, patch: str, scope: str) -> list[str]:
        """Targets to run: the tests the test patch touches plus the existing tests of the modules the gold patch
        touches (`scope = "touched"`), or [] for the whole suite (`scope = "all"`, or nothing found)."""

    @abstractmethod
    def command(self, base_command: str, targets: list[str], report_path: str = REPORT_PATH) -> str:
        """The shell command of one run, writing its JUnit report to `report_path`."""

    @abstractmethod
    def read_report(self, exit_code: int | None, report: str | None,
                    targets: list[str]) -> tuple[str, str, dict[str, TestOutcome]]:
        """(status, detail, outcomes) of one run from its exit code and report."""


class PytestRunner(TestRunner):
    name = "pytest"
    language = "python"
    OK_EXIT_CODES = {0: "all passed", 1: "some tests failed", 5: "no tests collected"}
    EXIT_MEANINGS = {2: "interrupted", 3: "internal error", 4: "usage error"}

    def select_tests(self, files: Iterable[str], test_patch: str, patch: str, scope: str) -> list[str]:
        if scope == "all":
            return []
        present = set(files)
        targets: list[str] = []
        for piece in file_diffs(test_patch):
            deleted = "\n+++ /dev/null" in piece.text
            if deleted:
                present.discard(piece.path)
            else:
                present.add(piece.path)
                if _is_test_module(piece.path):
                    targets.append(piece.path)
        stems = {PurePosixPath(p.path).stem for p in file_diffs(patch) if p.path.endswith(".py")}
        stems.discard("__init__")
        for path in sorted(present):
            name = PurePosixPath(path).name
            if _is_test_module(path) and any(name in (f"test_{s}.py", f"{s}_test.py") for s in stems):
                targets.append(path)
        return list(dict.fromkeys(targets))

    def command(self, base_command: str, targets: list[str], report_path: str = REPORT_PATH) -> str:
        return " ".join([base_command, f"--junitxml={report_path}", *(shlex.quote(t) for t in targets)])

    def read_report(self, exit_code: int | None, report: str | None,
                    targets: list[str]) -> tuple[str, str, dict[str, TestOutcome]]:
        if exit_code not in self.OK_EXIT_CODES:
            meaning = self.EXIT_MEANINGS.get(exit_code or 0) or (f"killed by signal {exit_code - 128}"
                                                                 if exit_code and exit_code > 128 else "crashed")
            return TESTS_CRASHED, f"pytest exited with {exit_code} ({meaning})", {}
        try:
            outcomes = parse_junit(report, known_files=targets)
        except JUnitError as exc:
            status = JUNIT_MISSING if report is None or not report.strip() else JUNIT_MALFORMED
            return status, str(exc), {}
        return OK, self.OK_EXIT_CODES[exit_code], outcomes


def _is_test_module(path: str) -> bool:
    name = PurePosixPath(path).name
    return name.endswith(".py") and (name.startswith("test_") or name.endswith("_test.py"))


RUNNERS: dict[str, TestRunner] = {"pytest": PytestRunner()}


def runner_for(name: str) -> TestRunner:
    if name not in RUNNERS:
        raise UnsupportedProject(f"no test runner named {name!r} (known: {', '.join(RUNNERS)})")
    return RUNNERS[name]
import envbuilder.runners_go  # noqa: E402,F401 - registers the Go runner (`gotest`) in RUNNERS
import envbuilder.runners_js  # noqa: E402,F401 - registers the JavaScript runner (`mocha`) in RUNNERS
import envbuilder.runners_rust  # noqa: E402,F401 - registers the Rust runner (`cargo`) in RUNNERS
import envbuilder.runners_cpp  # noqa: E402,F401 - registers the C/C++ runner (`ctest`) in RUNNERS
import envbuilder.runners_java  # noqa: E402,F401 - registers the Java runner (`maven`) in RUNNERS
import envbuilder.runners_php  # noqa: E402,F401 - registers the PHP runner (`phpunit`) in RUNNERS
