"""The Maven runner's command, run by a real shell over a stand-in `mvn` (no JVM needed): what a run reports
when the test patch does not compile before the fix, and when the build fails for another reason."""

import os
import subprocess
from pathlib import Path

from envbuilder.runners_java import MAVEN_COMMAND, MavenRunner
from verifiers.grading import JUNIT_MISSING, OK

REPORT = """<testsuite name="com.example.NamesTest" tests="1">
<testcase classname="com.example.NamesTest" name="firstLetter" time="0.01"/></testsuite>
"""


def run_command(tmp_path: Path, mvn_script: str) -> tuple[int, str, str]:
    bin_dir, work = tmp_path / "bin", tmp_path / "testbed"
    bin_dir.mkdir()
    work.mkdir()
    (bin_dir / "mvn").write_text("#!/bin/sh\n" + mvn_script)
    (bin_dir / "mvn").chmod(0o755)
    report = tmp_path / "report.xml"
    runner = MavenRunner()
    command = runner.command(MAVEN_COMMAND, ["com.example.NamesTest"], str(report))
    result = subprocess.run(["sh", "-c", command], cwd=work, capture_output=True, text=True,
                            env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"})
    return result.returncode, result.stdout, report.read_text() if report.exists() else ""


def test_a_test_patch_that_does_not_compile_makes_the_targets_fail_instead_of_junit_missing(tmp_path):
    code, output, report = run_command(tmp_path, (
        "echo '[ERROR] COMPILATION ERROR :'\n"
        "echo '[ERROR] /testbed/src/test/java/com/example/NamesTest.java:[12,30] cannot find symbol'\n"
        "echo '[ERROR] Failed to execute goal org.apache.maven.plugins:maven-compiler-plugin:3.10.1:testCompile "
        "(default-testCompile) on project names: Compilation failure'\n"
        "exit 1\n"))
    assert code == 1
    assert "cannot find symbol" in output  # Maven's own output still reaches the run's log
    status, _detail, outcomes = MavenRunner().read_report(code, report, ["com.example.NamesTest"])
    assert status == OK
    assert {k: v.outcome for k, v in outcomes.items()} == {"[build]#testCompile": "error"}
    assert "com.example.NamesTest#firstLetter" not in outcomes  # missing: it counts as failing in this run


def test_a_build_that_fails_for_another_reason_stays_junit_missing(tmp_path):
    code, _output, report = run_command(tmp_path, (
        "echo '[ERROR] Failed to execute goal on project names: Could not resolve dependencies: "
        "org.apache.commons:commons-text:jar:9.9 was not found'\nexit 1\n"))
    status, detail, outcomes = MavenRunner().read_report(code, report, ["com.example.NamesTest"])
    assert (status, outcomes) == (JUNIT_MISSING, {})
    assert "wrote no Surefire report" in detail


def test_surefire_reports_are_read_as_they_are_when_the_tests_ran(tmp_path):
    code, _output, report = run_command(tmp_path, (
        "mkdir -p target/surefire-reports\n"
        f"cat > target/surefire-reports/TEST-com.example.NamesTest.xml <<'XML'\n{REPORT}XML\n"
        "echo '[ERROR] Failed to execute goal org.apache.maven.plugins:maven-surefire-plugin:2.22.3:test'\n"
        "echo 'mentions :testCompile only in passing'\nexit 1\n"))
    status, _detail, outcomes = MavenRunner().read_report(code, report, ["com.example.NamesTest"])
    assert status == OK
    assert {k: v.outcome for k, v in outcomes.items()} == {"com.example.NamesTest#firstLetter": "passed"}
