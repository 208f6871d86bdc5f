"""`cargo test` output -> JUnit: every test under `<target>::<test path>`, ignored tests skipped, crashes and
compile errors as errors, and output the converter does not understand refused instead of guessed. The
streams are as Debian bookworm's cargo 0.66 / rustc 1.63 print them (captured from the toolchain image)."""

from __future__ import annotations

import pytest
from junitparser import JUnitXml

from envbuilder.runners import runner_for
from verifiers.cargo_test import CargoTestOutputError, cargo_test_to_junit
from verifiers.grading import JUNIT_MALFORMED, OK, TESTS_CRASHED

UNIT = """   Compiling hex v0.4.3
   Compiling hexcalc v0.1.0 (/testbed)
    Finished test [unoptimized + debuginfo] target(s) in 20.79s
     Running unittests src/lib.rs (/tmp/cargo-target/debug/deps/hexcalc-ab9281f8c799ae2c)

running 3 tests
test tests::slow ... ignored
test tests::unit_ok ... ok
test tests::panics - should panic ... ok

test result: ok. 2 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.21s

"""
INTEGRATION = """     Running tests/half.rs (/tmp/cargo-target/debug/deps/half-b3f57942b78cb9f1)

running 3 tests
test halves_even ... ok
test halves_odd ... FAILED
test hex_roundtrip ... ok

failures:

---- halves_odd stdout ----
thread 'halves_odd' panicked at 'assertion failed: `(left == right)`
  left: `1.0`,
 right: `1.5`', tests/half.rs:2:27
note: run with `RUST_BACKTRACE=1` environment variable to display a backtrace


failures:
    halves_odd

test result: FAILED. 2 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.00s

error: test failed, to rerun pass `--test half`
"""
DOC = """   Doc-tests hexcalc

running 1 test
test src/lib.rs - half (line 3) ... ok

test result: ok. 1 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 4.85s

error: 1 target failed:
    `--test half`
"""
COMPILE_ERROR = """   Compiling hexcalc v0.1.0 (/testbed)
error[E0425]: cannot find value `nope` in this scope
  --> src/lib.rs:15:26
   |
15 | pub fn broken() -> i32 { nope }
   |                          ^^^^ not found in this scope

For more information about this error, try `rustc --explain E0425`.
error: could not compile `hexcalc` due to previous error
warning: build failed, waiting for other jobs to finish...
error: could not compile `hexcalc` due to previous error
"""
UNRESOLVED = """error: no matching package named `serde` found
location searched: registry `crates-io`
required by package `hexcalc v0.1.0 (/testbed)`
"""


def outcomes(stream: str) -> dict[str, tuple[str, str | None]]:
    status, detail, found = runner_for("cargo").read_report(101, stream, [])
    assert status == OK, detail
    return {test_id: (o.outcome, o.message) for test_id, o in found.items()}


def test_every_binary_s_results_are_read_under_their_target():
    found = outcomes(UNIT + INTEGRATION + DOC)
    assert {k: v[0] for k, v in found.items()} == {
        "src/lib.rs::tests::slow": "skipped", "src/lib.rs::tests::unit_ok": "passed",
        "src/lib.rs::tests::panics": "passed", "tests/half.rs::halves_even": "passed",
        "tests/half.rs::halves_odd": "failed", "tests/half.rs::hex_roundtrip": "passed",
        "doctest:hexcalc::src/lib.rs - half": "passed"}
    assert "panicked at 'assertion failed" in found["tests/half.rs::halves_odd"][1]


def test_the_failure_text_is_the_test_s_captured_output():
    report = JUnitXml.fromstring(cargo_test_to_junit(INTEGRATION).encode())
    failed = [case for suite in report for case in suite if case.name == "halves_odd"][0]
    assert "right: `1.5`" in failed.result[0].text and "tests/half.rs:2:27" in failed.result[0].text


def test_a_crate_that_does_not_compile_is_one_error_and_its_tests_count_as_missing():
    found = outcomes(COMPILE_ERROR)
    assert list(found) == ["hexcalc::[build]"]
    assert found["hexcalc::[build]"][0] == "error"


def test_a_binary_that_crashed_keeps_its_results_and_gets_an_error():
    crashed = INTEGRATION.split("failures:")[0].replace("test hex_roundtrip ... ok\n", "test hex_roundtrip ... \n")
    crashed += "error: test failed, to rerun pass `--test half`\n\nCaused by:\n  process didn't exit " \
               "successfully: `/tmp/cargo-target/debug/deps/half-b3f57942b78cb9f1` (signal: 6, SIGABRT: " \
               "process abort signal)\n"
    found = outcomes(crashed + DOC)
    assert found["tests/half.rs::halves_even"][0] == "passed"
    assert found["tests/half.rs::hex_roundtrip"] == ("error", "did not finish")
    assert found["tests/half.rs::[binary]"][0] == "error" and "SIGABRT" in found["tests/half.rs::[binary]"][1]
    assert found["doctest:hexcalc::src/lib.rs - half"][0] == "passed"


def test_output_that_breaks_the_summary_s_count_is_refused():
    # a test's own output (println from a thread libtest does not capture) glued to a result line
    mixed = INTEGRATION.replace("test halves_even ... ok", "progress: 50%test halves_even ... ok")
    with pytest.raises(CargoTestOutputError, match="counts 2 passed.*1 passed"):
        cargo_test_to_junit(mixed)
    status, detail, found = runner_for("cargo").read_report(101, mixed, [])
    assert (status, found) == (JUNIT_MALFORMED, {}) and "summary of tests/half.rs" in detail


def test_a_result_it_does_not_know_is_refused():
    with pytest.raises(CargoTestOutputError, match="unknown result 'TIMED OUT'"):
        cargo_test_to_junit(INTEGRATION.replace("test halves_even ... ok", "test halves_even ... TIMED OUT"))


def test_output_in_which_no_test_binary_ran_is_refused_with_cargo_s_reason():
    with pytest.raises(CargoTestOutputError, match="ran no test binary: error: no matching package named `serde`"):
        cargo_test_to_junit(UNRESOLVED)


def test_exit_codes_other_than_cargo_test_s_own_mean_a_crash():
    status, detail, _ = runner_for("cargo").read_report(137, UNIT, [])
    assert status == TESTS_CRASHED and "137" in detail


def test_a_failed_test_s_output_that_looks_like_a_result_stays_output():
    echoed = INTEGRATION.replace("  left: `1.0`,\n", "  left: `1.0`,\ntest halves_even ... FAILED\n")
    found = outcomes(echoed)
    assert found["tests/half.rs::halves_even"][0] == "passed"
    report = JUnitXml.fromstring(cargo_test_to_junit(echoed).encode())
    failed = [case for suite in report for case in suite if case.name == "halves_odd"][0]
    assert "test halves_even ... FAILED" in failed.result[0].text


def test_verbose_mode_s_compiler_lines_are_not_test_binaries():
    verbose = ("     Running `rustc --crate-name hexcalc --edition=2021 src/lib.rs --test`\n"
               "     Running `/tmp/cargo-target/debug/build/hexcalc-0123456789abcdef/build-script-build`\n"
               + INTEGRATION.replace("Running tests/half.rs (/tmp/cargo-target/debug/deps/half-b3f57942b78cb9f1)",
                                     "Running `/tmp/cargo-target/debug/deps/half-b3f57942b78cb9f1`"))
    assert sorted(outcomes(verbose)) == ["half::halves_even", "half::halves_odd", "half::hex_roundtrip"]


def test_doc_test_ids_do_not_move_with_the_lines_above_them():
    moved = DOC.replace("running 1 test\ntest src/lib.rs - half (line 3) ... ok",
                        "running 3 tests\ntest src/lib.rs - half (line 12) ... ok\n"
                        "test src/lib.rs - half (line 9) ... ok\ntest src/lib.rs - to_hex (line 30) ... ok")
    moved = moved.replace("1 passed; 0 failed", "3 passed; 0 failed")
    assert sorted(outcomes(moved)) == ["doctest:hexcalc::src/lib.rs - half", "doctest:hexcalc::src/lib.rs - half #2",
                                       "doctest:hexcalc::src/lib.rs - to_hex"]
