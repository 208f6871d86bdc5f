"""The JavaScript/TypeScript test runners: mocha, jest and vitest, each with its JUnit reporter, read with
junitparser.

- mocha: `mocha-junit-reporter`; jest: `jest-junit` (told by its environment variables where to write and how to
  name a test); vitest: its built-in `--reporter=junit`. A reporter the project does not depend on itself is
  added, pinned, by the trusted fetcher at /opt/js-reporters (`envbuilder.js_package_managers`), never into the
  repository.
- Test ids are the same for all three: a test's full title, its describe titles and its own joined by spaces
  (`half odd halves odds`), the names `mocha --grep` and `jest -t` match (vitest's ` > ` joins become spaces).
- Which runner: the one `package.json`'s `test` script calls, else the first of vitest, jest, mocha among its
  dependencies. TypeScript (tsconfig.json or .ts tests): vitest runs it natively; jest only through what the
  repository has (its own jest config, babel, or ts-jest, whose preset is named when no config does).
- Targets are the test files the test patch touches, as each runner finds test files by default (mocha:
  test/** and *.test.js; jest: __tests__/** and *.test|spec.*; vitest: *.test|spec.*); none: the whole suite.
- Exit codes: mocha exits with the number of failures (capped), jest and vitest with 1 when a test failed; a
  run that crashed shows in its report being missing, empty, or not one this reader understands (which it says,
  rather than guessing).
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from junitparser import JUnitXml, TestSuite

from envbuilder.errors import UnsupportedProject
from envbuilder.js_package_managers import NODE_MODULES_MOUNT, REPORTERS_MOUNT
from envbuilder.repos import SourceTree
from envbuilder.runners import REPORT_PATH, RUNNERS, TestRunner
from envbuilder.runners_go import parse_junit_cases
from envbuilder.sources.patches import file_diffs
from verifiers.grading import JUNIT_MALFORMED, JUNIT_MISSING, OK, TESTS_CRASHED
from verifiers.junit import JUnitError, TestOutcome

MOCHA_COMMAND = f"node {NODE_MODULES_MOUNT}/mocha/bin/mocha.js --reporter mocha-junit-reporter"
JEST_BINARY = f"node {NODE_MODULES_MOUNT}/jest/bin/jest.js --ci --cacheDirectory=/tmp/jest-cache"
# --no-cache: vitest keeps its results cache in node_modules, which is read-only in a validation
VITEST_COMMAND = f"node {NODE_MODULES_MOUNT}/vitest/vitest.mjs run --no-cache --reporter=default --reporter=junit"
_MOCHA_TEST_FILE = re.compile(r"(^|/)(tests?/.*\.[cm]?js|[^/]+\.(test|spec)\.[cm]?js)$")
_JEST_TEST_FILE = re.compile(r"(^|/)(__tests__/.*|[^/]+\.(test|spec))\.[cm]?[jt]sx?$")
_VITEST_TEST_FILE = re.compile(r"(^|/)[^/]+\.(test|spec)\.[cm]?[jt]sx?$")
_JEST_CONFIGS = ("jest.config.js", "jest.config.ts", "jest.config.mjs", "jest.config.cjs", "jest.config.json")
_BABEL_CONFIGS = ("babel.config.js", "babel.config.json", "babel.config.cjs", "babel.config.mjs", ".babelrc",
                  ".babelrc.js", ".babelrc.json")


class _JavaScriptRunner(TestRunner):
    language = "javascript"
    test_file: re.Pattern[str]

    def select_tests(self, files: Iterable[str], test_patch: str, patch: str, scope: str) -> list[str]:
        if scope == "all":
            return []
        return list(dict.fromkeys(p.path for p in file_diffs(test_patch)
                                  if self.test_file.search(p.path) and "\n+++ /dev/null" not in p.text))

    def read_report(self, exit_code: int | None, report: str | None,
                    targets: list[str]) -> tuple[str, str, dict[str, TestOutcome]]:
        if exit_code is None or exit_code not in self.ok_exit_codes:
            return TESTS_CRASHED, f"{self.name} exited with {exit_code}", {}
        if report is None or not report.strip():
            return JUNIT_MISSING, f"{self.name} wrote no JUnit report (it crashed before its reporter ran)", {}
        try:
            outcomes = read_js_junit(self.name, report, self.test_id)
        except JUnitError as exc:
            return JUNIT_MALFORMED, str(exc), {}
        return OK, self.summary(exit_code), outcomes

    def summary(self, exit_code: int) -> str:
        return "some tests failed" if exit_code else "all passed"

    @staticmethod
    def test_id(classname: str, name: str) -> str:
        return name.strip()


class MochaRunner(_JavaScriptRunner):
    name = "mocha"
    ok_exit_codes = frozenset(range(128))
    test_file = _MOCHA_TEST_FILE

    def command(self, base_command: str, targets: list[str], report_path: str = REPORT_PATH) -> str:
        return " ".join([base_command, "--reporter-options", shlex.quote(f"mochaFile={report_path}"),
                         *(shlex.quote(t) for t in targets)])

    def summary(self, exit_code: int) -> str:
        return f"{exit_code} failed" if exit_code else "all passed"


class JestRunner(_JavaScriptRunner):
    """jest with jest-junit; its options come from the environment, which wins over a `jest-junit` key the
    project's package.json may have, so the report lands where we read it and names tests as mocha's do."""
    name = "jest"
    ok_exit_codes = frozenset({0, 1})
    test_file = _JEST_TEST_FILE

    def command(self, base_command: str, targets: list[str], report_path: str = REPORT_PATH) -> str:
        options = {"JEST_JUNIT_OUTPUT_FILE": report_path, "JEST_JUNIT_TITLE": "{classname} {title}",
                   "JEST_JUNIT_CLASSNAME": "{classname} {title}", "JEST_JUNIT_ANCESTOR_SEPARATOR": " "}
        return " ".join([*(f"{k}={shlex.quote(v)}" for k, v in options.items()), base_command,
                         *(["--runTestsByPath", *(shlex.quote(t) for t in targets)] if targets else [])])


class VitestRunner(_JavaScriptRunner):
    name = "vitest"
    ok_exit_codes = frozenset({0, 1})
    test_file = _VITEST_TEST_FILE

    def command(self, base_command: str, targets: list[str], report_path: str = REPORT_PATH) -> str:
        return " ".join([base_command, shlex.quote(f"--outputFile.junit={report_path}"),
                         *(shlex.quote(t) for t in targets)])

    @staticmethod
    def test_id(classname: str, name: str) -> str:
        # vitest names a test `describe > inner > title` and puts its file in classname
        return " ".join(part.strip() for part in name.split(" > "))


def read_js_junit(runner: str, report: str, test_id: Callable[[str, str], str]) -> dict[str, TestOutcome]:
    """The outcomes of a JavaScript runner's JUnit report; JUnitError, naming the runner, when the report is not
    one this reader understands (not JUnit, a test without a name, fewer tests listed than the suites count)."""
    try:
        root = JUnitXml.fromstring(report.encode())
    except Exception as exc:  # noqa: BLE001 - any parser error means a report we do not understand
        raise JUnitError(f"{runner}'s report is not JUnit XML this reader understands: "
                         f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    suites = [root] if isinstance(root, TestSuite) else list(root)
    declared = listed = 0
    for suite in suites:
        if not isinstance(suite, TestSuite):
            raise JUnitError(f"{runner}'s report holds a <{suite._tag}> where a <testsuite> belongs: "
                             "not a report this reader understands")
        declared += int(suite.tests or 0)
        for case in suite:
            listed += 1
            if not (case.name or "").strip():
                raise JUnitError(f"{runner}'s report has a <testcase> without a name in suite {suite.name!r}: "
                                 "not a report this reader understands")
    if declared > listed:
        raise JUnitError(f"{runner}'s report counts {declared} tests but lists {listed}: not a report this reader "
                         "understands")
    return parse_junit_cases(report, test_id)


# ---------------------------------------------------------------------------------------------- choosing a runner

@dataclass
class JavaScriptTests:
    """How a project's tests run: the runner, its command, the reporters the fetcher must add, and why."""
    runner: str
    command: str
    reporters: list[str] = field(default_factory=list)  # reporter packages the project lacks
    notes: list[str] = field(default_factory=list)


def javascript_tests(tree: SourceTree) -> JavaScriptTests:
    """The runner and command for a project (see the module docstring); UnsupportedProject when none fits."""
    try:
        package = json.loads(tree.read("package.json") or "{}")
    except ValueError as exc:
        raise UnsupportedProject(f"package.json is not valid JSON: {exc}") from None
    dependencies = {**(package.get("dependencies") or {}), **(package.get("devDependencies") or {})}
    script = str((package.get("scripts") or {}).get("test") or "")
    runner = next((name for name in ("vitest", "jest", "mocha") if re.search(rf"\b{name}\b", script)), None)
    why = f"the test script runs {runner}"
    if runner is None or runner not in dependencies:
        runner = next((name for name in ("vitest", "jest", "mocha") if name in dependencies), None)
        why = f"{runner} is a dependency"
    if runner is None:
        raise UnsupportedProject("no JavaScript test runner this project depends on is known (known: vitest, "
                                 "jest, mocha)")
    typescript = "tsconfig.json" in tree.files or any(
        re.search(r"\.(test|spec)\.[cm]?tsx?$", path) for path in tree.files)
    notes = [f"{runner}: {why}"]
    if runner == "vitest":
        if typescript:
            notes.append("TypeScript: vitest runs it natively")
        return JavaScriptTests("vitest", VITEST_COMMAND, notes=notes)
    if runner == "mocha":
        own = "mocha-junit-reporter" in dependencies
        reporter = "mocha-junit-reporter" if own else f"{REPORTERS_MOUNT}/node_modules/mocha-junit-reporter"
        notes.append("mocha-junit-reporter from the lock file" if own else
                     "mocha-junit-reporter is not a dependency: added, pinned, at /opt/js-reporters")
        return JavaScriptTests("mocha", MOCHA_COMMAND.replace("mocha-junit-reporter", reporter),
                               reporters=[] if own else ["mocha-junit-reporter"], notes=notes)
    own = "jest-junit" in dependencies
    command = JEST_BINARY + " --reporters=default --reporters=" + (
        "jest-junit" if own else f"{REPORTERS_MOUNT}/node_modules/jest-junit")
    notes.append("jest-junit from the lock file" if own else
                 "jest-junit is not a dependency: added, pinned, at /opt/js-reporters")
    if typescript:
        configured = "jest" in package or any(name in tree.files for name in _JEST_CONFIGS)
        babel = "@babel/preset-typescript" in dependencies and (
            "babel" in package or any(name in tree.files for name in _BABEL_CONFIGS))
        if not configured and not babel:
            if "ts-jest" not in dependencies:
                raise UnsupportedProject("TypeScript tests under jest need ts-jest, or babel with "
                                         "@babel/preset-typescript, among the repository's own dependencies")
            command += " --preset=ts-jest"
            notes.append("TypeScript: jest with the repository's ts-jest (--preset=ts-jest, no jest config)")
        else:
            notes.append("TypeScript: jest with the repository's own " + ("jest config" if configured else "babel"))
    return JavaScriptTests("jest", command, reporters=[] if own else ["jest-junit"], notes=notes)


for _runner in (MochaRunner(), JestRunner(), VitestRunner()):
    RUNNERS.setdefault(_runner.name, _runner)
