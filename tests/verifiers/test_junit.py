"""JUnit reports written by a real pytest run -> pytest node ids and outcomes, as SWE-bench names tests."""

import subprocess
import sys
import textwrap

import pytest

from verifiers.junit import JUnitError, node_id, parse_junit

TESTS = {
    "tests/test_calc.py": """
        import pytest

        class TestDiv:
            @pytest.mark.parametrize("x", [1, "a.b", "x::y"])
            def test_param(self, x):
                assert x != 1

            class TestNested:
                def test_inner(self):
                    pass

        def test_skip():
            pytest.skip("not here")

        @pytest.mark.xfail
        def test_expected_failure():
            assert 0

        @pytest.fixture
        def broken():
            yield
            raise RuntimeError("teardown broke")

        def test_teardown_error(broken):
            pass

        def test_setup_error(missing_fixture):
            pass
    """,
    "tests/sub/test_import.py": "import module_that_does_not_exist\n\ndef test_never():\n    pass\n",
    "pkg_tests/check_test.py": "def test_suffix_style():\n    assert 1\n",
}


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    root = tmp_path_factory.mktemp("junit")
    for path, text in TESTS.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(textwrap.dedent(text))
    subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--continue-on-collection-errors",
                    "-o", "junit_family=xunit1", f"--rootdir={root}", f"--junitxml={root / 'junit.xml'}",
                    "tests", "pkg_tests/check_test.py"], cwd=root, capture_output=True, timeout=120)
    return (root / "junit.xml").read_text()


def test_node_ids_match_pytest_and_swebench(report):
    outcomes = parse_junit(report)
    assert {k: v.outcome for k, v in outcomes.items()} == {
        "tests/test_calc.py::TestDiv::test_param[1]": "failed",
        "tests/test_calc.py::TestDiv::test_param[a.b]": "passed",
        "tests/test_calc.py::TestDiv::test_param[x::y]": "passed",
        "tests/test_calc.py::TestDiv::TestNested::test_inner": "passed",
        "tests/test_calc.py::test_skip": "skipped",
        "tests/test_calc.py::test_expected_failure": "skipped",
        "tests/test_calc.py::test_teardown_error": "error",
        "tests/test_calc.py::test_setup_error": "error",
        "tests/sub/test_import.py": "error",  # the collection error names the module
        "pkg_tests/check_test.py::test_suffix_style": "passed",
    }
    assert "assert 1 != 1" in outcomes["tests/test_calc.py::TestDiv::test_param[1]"].message
    assert outcomes["tests/test_calc.py::test_skip"].message == "not here"


def test_without_file_attribute_known_files_place_the_module(report):
    stripped = report.replace(' file="tests/test_calc.py"', "")
    outcomes = parse_junit(stripped, known_files=["tests/test_calc.py"])
    assert "tests/test_calc.py::TestDiv::TestNested::test_inner" in outcomes
    # and with nothing known, capitalised names are taken as classes
    assert "tests/test_calc.py::TestDiv::test_param[a.b]" in parse_junit(stripped)


def test_node_id_of_a_module_with_a_dotted_parameter():
    assert node_id("tests.test_x", "test_y[1.5]", None) == "tests/test_x.py::test_y[1.5]"
    assert node_id("tests.test_x.TestC", "test_y", "tests/test_x.py") == "tests/test_x.py::TestC::test_y"


@pytest.mark.parametrize("xml, message", [
    (None, "no JUnit report was written"),
    ("", "no JUnit report was written"),
    ("<testsuites><testsuite name='x'><testcase", "malformed JUnit XML"),
    ("not xml at all", "malformed JUnit XML"),
])
def test_missing_or_malformed_reports_are_clear(xml, message):
    with pytest.raises(JUnitError, match=message):
        parse_junit(xml)


def test_a_report_with_no_tests_is_empty_not_an_error():
    assert parse_junit('<?xml version="1.0"?><testsuites><testsuite name="pytest" tests="0"/></testsuites>') == {}


def test_the_worst_outcome_wins_for_a_test_reported_twice():
    xml = """<testsuites><testsuite name="pytest">
      <testcase classname="tests.test_a" name="test_t" file="tests/test_a.py"/>
      <testcase classname="tests.test_a" name="test_t" file="tests/test_a.py"><error message="teardown"/></testcase>
    </testsuite></testsuites>"""
    assert parse_junit(xml)["tests/test_a.py::test_t"].outcome == "error"
