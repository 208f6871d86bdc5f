"""C/C++: the heuristic recipe and the CTest runner: CMake configures and builds the project, `ctest
--output-junit` (CMake >= 3.21; Debian bookworm's is 3.25) writes the JUnit report, read with junitparser.

The toolchain image holds cmake, g++, make, ninja and the Debian libraries a project finds with
`find_package` (`-dev` packages: `libfmt-dev` in the default set). Each run configures and builds afresh in
its scratch /tmp (a run sees the checkout with its patches; nothing built by another run), then runs every
CTest test: CTest names do not map to files, so a run never narrows to the touched tests.

The build keeps going past a target that does not compile (`ninja -k 0`): a test whose executable was not
built is reported by CTest as "notrun", "Unable to find executable", which would read as skipped; here it is an
error, so a test the test patch adds against a function the gold patch brings counts as failing before the fix.
Only the skips a project asks for (SKIP_RETURN_CODE, SKIP_REGULAR_EXPRESSION, DISABLED) stay skipped. A
project CMake cannot configure crashes the run (exit 90, the configure log's end in the run's output).

Test ids are CTest's test names (`add_test(NAME ...)`), the names `ctest -R` matches.
"""

from __future__ import annotations

from collections.abc import Iterable

from junitparser import Error, JUnitXml, Skipped, TestSuite

from envbuilder.recipes import Recipe, RecipeContext, dependency_files
from envbuilder.repos import SourceTree
from envbuilder.runners import REPORT_PATH, RUNNERS, TestRunner
from verifiers.grading import JUNIT_MALFORMED, JUNIT_MISSING, OK, TESTS_CRASHED
from verifiers.junit import _SEVERITY, JUnitError, TestOutcome, _outcome, _seconds

BUILD_DIR = "/tmp/cmake-build"
CONFIGURE_FAILED = 90
CMAKE_BUILD_COMMAND = (f"{{ cmake -S /testbed -B {BUILD_DIR} -G Ninja -DCMAKE_BUILD_TYPE=Debug "
                       f"> /tmp/cmake-configure.log 2>&1 || {{ tail -n 40 /tmp/cmake-configure.log; "
                       f"exit {CONFIGURE_FAILED}; }}; }} && {{ cmake --build {BUILD_DIR} -- -k 0 || true; }}")
_DELIBERATE_SKIPS = ("SKIP_RETURN_CODE", "SKIP_REGULAR_EXPRESSION", "Disabled")


class CTestRunner(TestRunner):
    name = "ctest"
    language = "cpp"
    # ctest: 0 every test passed (or none exists), 8 some failed or were not run
    OK_EXIT_CODES = {0: "all passed", 8: "some tests failed"}

    def select_tests(self, files: Iterable[str], test_patch: str, patch: str, scope: str) -> list[str]:
        return []

    def command(self, base_command: str, targets: list[str], report_path: str = REPORT_PATH) -> str:
        return f"{base_command} && ctest --test-dir {BUILD_DIR} --output-junit {report_path}"

    def read_report(self, exit_code: int | None, report: str | None,
                    targets: list[str]) -> tuple[str, str, dict[str, TestOutcome]]:
        if exit_code not in self.OK_EXIT_CODES:
            why = "cmake could not configure the project" if exit_code == CONFIGURE_FAILED else "crashed"
            return TESTS_CRASHED, f"the CMake build and CTest run exited with {exit_code} ({why})", {}
        if report is None or not report.strip():
            return JUNIT_MISSING, "ctest wrote no JUnit report", {}
        try:
            outcomes = parse_ctest_junit(report)
        except JUnitError as exc:
            return JUNIT_MALFORMED, str(exc), {}
        return OK, self.OK_EXIT_CODES[exit_code], outcomes


def parse_ctest_junit(xml: str) -> dict[str, TestOutcome]:
    """CTest's JUnit report, keyed by test name; a test CTest did not run for a reason the project did not ask
    for (its executable was not built, a required file or fixture failed) is an error, not a skip."""
    try:
        report = JUnitXml.fromstring(xml.encode())
    except Exception as exc:  # noqa: BLE001 - any parser error means a malformed report
        raise JUnitError(f"malformed JUnit XML: {exc}") from None
    outcomes: dict[str, TestOutcome] = {}
    for suite in [report] if isinstance(report, TestSuite) else list(report):
        for case in suite:
            results = list(case.result)
            status = case._elem.get("status")
            if status == "notrun" and not any(isinstance(r, Skipped) and (r.message or "").startswith(
                    _DELIBERATE_SKIPS) for r in results):
                why = next((r.message for r in results if r.message), None) or "not run"
                results = [Error(f"not run: {why}")]
            outcome, message = _outcome(results)
            key = case.name or ""
            previous = outcomes.get(key)
            if previous is None or _SEVERITY[outcome] > _SEVERITY[previous.outcome]:
                outcomes[key] = TestOutcome(key, outcome, _seconds(case), message)
    return outcomes


def cpp_recipe(tree: SourceTree, context: RecipeContext) -> Recipe:
    """CMake, g++ and ninja from the toolchain image; the project's libraries from Debian's -dev packages."""
    from tasksynth.docker.toolchains import TOOLCHAIN_ENV

    return Recipe(env_steps=["cmake --version", "g++ --version"], test_runner="ctest",
                  test_command=CMAKE_BUILD_COMMAND, env=dict(TOOLCHAIN_ENV["cpp"]), language="cpp",
                  dependency_files=dependency_files(tree),
                  notes=["CMakeLists.txt found: C/C++, built with CMake and ninja, tests by `ctest --output-junit`",
                         "libraries from Debian's -dev packages in the toolchain image"])


RUNNERS.setdefault(CTestRunner.name, CTestRunner())
