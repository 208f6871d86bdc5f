"""The Java test runner: Maven (Debian's 3.8) offline, its Surefire reports read with junitparser.

Dependencies and plugins come from Debian's offline Maven repository /usr/share/maven-repo (the jars of the
`lib*-java` packages: JUnit 4/5, commons-lang3, Surefire, the compiler and resources plugins), which is Maven's
local repository in offline mode (`-o`); no Maven Central is reachable. A project whose dependencies or plugin
versions Debian does not have fails its build with Maven naming the missing artifact (`install_failed`, or the
agent); the trusted fetcher (`envbuilder.maven_fetch`) serves real repositories where one is configured.

Test ids are `<fully qualified class>#<method>`, the form `mvn -Dtest=` takes. Targets are the test classes
whose files the test patch touches (`src/test/java/...`), given to Surefire as `-Dtest=`; none: every test.
Maven exits 1 both when a test fails and when the build fails before the tests: the reports decide. A test patch
that calls what the fix adds (common in Java) does not compile before the fix: Maven's `testCompile` fails and no
test runs. That run reports one error case, `[build]#testCompile`, so the target tests count as missing, that is
failing, before the fix, as a Rust crate or a C++ test executable that does not build does. Any other run that
wrote no report (a dependency missing offline, the main sources not compiling) is `junit_missing` with Maven's
last lines in the log.

Gradle builds are detected and refused (`UnsupportedBuildSystem`): their build scripts are code that must run to
resolve anything, Debian's Gradle (4.4) predates the JDK it would run on, and no Gradle distribution is
reachable. Their report files (`build/test-results/test/TEST-*.xml`) are read by the same reader.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterable

from envbuilder.errors import UnsupportedBuildSystem
from envbuilder.maven_fetch import DEBIAN_MAVEN_REPO
from envbuilder.recipes import Recipe, RecipeContext, dependency_files
from envbuilder.repos import SourceTree
from envbuilder.runners import REPORT_PATH, RUNNERS, TestRunner
from envbuilder.sources.patches import file_diffs
from verifiers.grading import JUNIT_MALFORMED, JUNIT_MISSING, OK, TESTS_CRASHED
from verifiers.junit import JUnitError, TestOutcome
from verifiers.junit_files import FILE_MARKER, collect_reports_command, jvm_test_id, parse_junit_files

MAVEN_COMMAND = (f"mvn -o -q -B -Dmaven.repo.local={DEBIAN_MAVEN_REPO} -Dsurefire.useFile=false test")
SUREFIRE_REPORTS = ["*/target/surefire-reports/TEST-*.xml"]
# Maven's output goes through this file (in the run's scratch /tmp) so the run can tell a test-compile failure
MAVEN_OUTPUT = "/tmp/maven-output.log"
# What a failed test compilation reports: an error case that no real test class can be named
TEST_COMPILE_FAILED = (f"{FILE_MARKER}[build] -->\n<testsuite name=\"[build]\" tests=\"1\" errors=\"1\">"
                       "<testcase classname=\"[build]\" name=\"testCompile\"><error message=\"the test sources do "
                       "not compile\"/></testcase></testsuite>")
_TEST_SOURCE = re.compile(r"(?:^|/)src/test/java/(.+)\.java$")


class MavenRunner(TestRunner):
    name = "maven"
    language = "java"
    OK_EXIT_CODES = {0: "all passed", 1: "some tests failed or the build failed"}

    def select_tests(self, files: Iterable[str], test_patch: str, patch: str, scope: str) -> list[str]:
        if scope == "all":
            return []
        classes = []
        for piece in file_diffs(test_patch):
            match = _TEST_SOURCE.search(piece.path)
            if match and "\n+++ /dev/null" not in piece.text:
                classes.append(match.group(1).replace("/", "."))
        return list(dict.fromkeys(classes))

    def command(self, base_command: str, targets: list[str], report_path: str = REPORT_PATH) -> str:
        # A subshell: the caller may follow with its own commands, and the reports are gathered whatever Maven's
        # exit code; the run's exit code stays Maven's.
        # a module without the selected classes is not a failure (Surefire 2.x and 3.x name the switch differently)
        selected = (f" -Dtest={shlex.quote(','.join(targets))} -DfailIfNoTests=false "
                    "-Dsurefire.failIfNoSpecifiedTests=false" if targets else "")
        report = shlex.quote(report_path)
        return (f"({base_command}{selected} > {MAVEN_OUTPUT} 2>&1; code=$?; cat {MAVEN_OUTPUT}; "
                f"{collect_reports_command(SUREFIRE_REPORTS, report_path)}; "
                f"if [ ! -s {report} ] && grep -q ':testCompile' {MAVEN_OUTPUT}; then "
                f"printf '%s\\n' {shlex.quote(TEST_COMPILE_FAILED)} > {report}; fi; exit $code)")

    def read_report(self, exit_code: int | None, report: str | None,
                    targets: list[str]) -> tuple[str, str, dict[str, TestOutcome]]:
        if exit_code not in self.OK_EXIT_CODES:
            return TESTS_CRASHED, f"mvn exited with {exit_code}", {}
        if report is None or not report.strip():
            return JUNIT_MISSING, (f"mvn exited with {exit_code} and wrote no Surefire report: the build failed "
                                   "before the tests ran (a compile error, an artifact missing offline)"), {}
        try:
            outcomes = parse_junit_files(report, jvm_test_id)
        except JUnitError as exc:
            return JUNIT_MALFORMED, str(exc), {}
        return OK, self.OK_EXIT_CODES[exit_code], outcomes


def java_recipe(tree: SourceTree, context: RecipeContext) -> Recipe:
    """Maven offline over Debian's repository; a Gradle build is refused (see the module docstring)."""
    files = set(tree.files)
    if "pom.xml" not in files:
        gradle = sorted(files & {"build.gradle", "build.gradle.kts", "settings.gradle", "settings.gradle.kts"})
        raise UnsupportedBuildSystem(
            f"a Gradle build ({', '.join(gradle) or 'no pom.xml'}): resolving its dependencies runs its build "
            "scripts, no Gradle distribution is reachable and Debian's Gradle 4.4 does not run on JDK 17; only "
            "Maven projects (pom.xml) are built")
    return Recipe(env_steps=["mvn -v"], test_runner=MavenRunner.name, test_command=MAVEN_COMMAND, language="java",
                  dependency_files=dependency_files(tree),
                  notes=["pom.xml found: Java, Maven offline (`mvn -o`), Surefire's JUnit reports",
                         f"dependencies and plugins from Debian's Maven repository {DEBIAN_MAVEN_REPO}"])


RUNNERS.setdefault(MavenRunner.name, MavenRunner())
