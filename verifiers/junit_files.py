"""JUnit XML as the JVM and PHP tools write it -> per-test outcomes, read with junitparser.

Maven Surefire writes one file per test class (`target/surefire-reports/TEST-<class>.xml`, one per module),
Gradle the same under `build/test-results/test/`; PHPUnit writes one file (`--log-junit`) of nested suites.
A run's files are joined into one report in the container: each file is preceded by a marker line naming it
(`FILE_MARKER`), and split back here, so an error names the file it is in.

The reader is strict: an element these tools do not write (in a <testsuite>, a <testcase> or a result), a
case without a name, a file whose root is not <testsuite>/<testsuites>, is refused with what was found,
instead of being guessed at. A test id is `test_id(case)`: `<class>#<method>` for the JVM (the form
`mvn -Dtest=` and `gradle --tests` take), `<class>::<method>` for PHPUnit (its `--filter` form).
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable
from xml.etree import ElementTree

from junitparser import JUnitXml, TestCase, TestSuite

from verifiers.junit import _SEVERITY, JUnitError, TestOutcome, _outcome, _seconds

FILE_MARKER = "<!-- tasksynth junit file: "
_MARKER_LINE = re.compile(r"^<!-- tasksynth junit file: (.*) -->$", re.M)
# What Surefire (2.x/3.x, with its rerun elements), Gradle and PHPUnit write; anything else is not understood.
_SUITE_CHILDREN = {"testsuite", "testcase", "properties", "system-out", "system-err"}
_CASE_CHILDREN = {"failure", "error", "skipped", "system-out", "system-err", "rerunFailure", "rerunError",
                  "flakyFailure", "flakyError", "properties"}
_RESULT_CHILDREN = {"stackTrace", "system-out", "system-err"}


class JUnitFilesError(JUnitError):
    """Report files that are not JUnit XML as these tools write it."""


def collect_reports_command(patterns: list[str], report_path: str) -> str:
    """Shell that joins every file under the working folder matching one of the `find -path` patterns into
    `report_path`, each after its marker line (nothing found: an empty report)."""
    matches = " -o ".join(f"-path {shlex.quote(p)}" for p in patterns)
    return (f"find . \\( {matches} \\) -type f | sort | while read -r f; do "
            f"printf '%s\\n' \"{FILE_MARKER}$f -->\"; cat \"$f\"; printf '\\n'; done > {shlex.quote(report_path)}")


def split_report_files(report: str) -> list[tuple[str, str]]:
    """(file name, XML) of each file joined by `collect_reports_command`; a report without markers is one
    file named `report`."""
    marks = list(_MARKER_LINE.finditer(report))
    if not marks:
        return [("report", report)]
    return [(mark.group(1), report[mark.end():marks[i + 1].start() if i + 1 < len(marks) else len(report)])
            for i, mark in enumerate(marks)]


def parse_junit_files(report: str, test_id: Callable[[TestCase], str]) -> dict[str, TestOutcome]:
    """Every test case of every file of the report, keyed by `test_id(case)`; the worst outcome wins when an id
    repeats (a rerun). Raises JUnitFilesError on anything not understood."""
    outcomes: dict[str, TestOutcome] = {}
    for name, xml in split_report_files(report):
        if not xml.strip():
            raise JUnitFilesError(f"{name}: an empty report file")
        data = xml.strip().encode()
        try:
            root = ElementTree.fromstring(data)
        except ElementTree.ParseError as exc:
            raise JUnitFilesError(f"{name}: malformed XML: {exc}") from None
        if root.tag not in ("testsuite", "testsuites"):
            raise JUnitFilesError(f"{name}: the root element is <{root.tag}>, not <testsuite> or <testsuites>")
        _check_shape(name, root)
        try:
            document = JUnitXml.fromstring(data)
        except Exception as exc:  # noqa: BLE001 - any parser error means a malformed file
            raise JUnitFilesError(f"{name}: malformed JUnit XML: {str(exc).splitlines()[0] if str(exc) else exc!r}")\
                from None
        suites = [document] if isinstance(document, TestSuite) else list(document)
        for suite in suites:
            for case in suite:
                outcome, message = _outcome(case.result)
                key = test_id(case)
                previous = outcomes.get(key)
                if previous is None or _SEVERITY[outcome] > _SEVERITY[previous.outcome]:
                    outcomes[key] = TestOutcome(key, outcome, _seconds(case), message)
    return outcomes


def _check_shape(name: str, root) -> None:
    for suite in [root] if root.tag == "testsuite" else list(root):
        if suite.tag != "testsuite":
            raise JUnitFilesError(f"{name}: <{suite.tag}> in <testsuites> is not understood (expected <testsuite>)")
        for child in suite:
            if child.tag not in _SUITE_CHILDREN:
                raise JUnitFilesError(f"{name}: <{child.tag}> in <testsuite> is not understood")
            if child.tag == "testsuite":
                _check_shape(name, child)
            elif child.tag == "testcase":
                if not child.get("name"):
                    raise JUnitFilesError(f"{name}: a <testcase> without a name")
                for result in child:
                    if result.tag not in _CASE_CHILDREN:
                        raise JUnitFilesError(f"{name}: <{result.tag}> in <testcase {child.get('name')!r}> is "
                                              "not understood")
                    unknown = [r.tag for r in result if r.tag not in _RESULT_CHILDREN]
                    if unknown:
                        raise JUnitFilesError(f"{name}: <{unknown[0]}> in <{result.tag}> is not understood")


def jvm_test_id(case: TestCase) -> str:
    """`<fully qualified class>#<method>`, as Surefire and Gradle name a case."""
    return f"{case.classname or ''}#{case.name or ''}"


def phpunit_test_id(case: TestCase) -> str:
    """`<class>::<method>` (PHPUnit's `class` attribute keeps the namespace's backslashes)."""
    return f"{case._elem.get('class') or (case.classname or '').replace('.', chr(92))}::{case.name or ''}"
