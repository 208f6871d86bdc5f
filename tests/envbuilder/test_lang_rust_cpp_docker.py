"""Rust and C/C++ fixture repositories, generated here, built and validated on the real engine:
Rust (Debian's rustc and cargo, the third-party crate `hex` from Debian's packaged crates, `cargo test` output
converted to JUnit), a Rust crate whose dependency Debian lacks (fetched by the host's `cargo fetch` from a
crates.io mirror on 127.0.0.1, vendored into an image layer) and C++ (CMake, g++ and ninja, the third-party
library fmt from libfmt-dev, `ctest --output-junit`). Each history has an issue-fixing commit whose new test
fails before the fix and passes after. Each prints its build and validation seconds."""

from __future__ import annotations

import time

import pytest

from envbuilder.build import build_candidate
from envbuilder.samples import SampleCommit
from envbuilder.validation import validate_instance
from tests.envbuilder.test_lang_rust_cpp import needs_cargo, sparse_registry  # noqa: F401
from tests.envbuilder.test_languages_docker import candidate_from_history, local_index  # noqa: F401
from tests.envbuilder.test_offline_build_docker import index_files  # noqa: F401

# engine_config: tests/envbuilder/conftest.py; every test here builds on the Python base image
pytestmark = [pytest.mark.docker, pytest.mark.usefixtures("base_311")]

CARGO_TOML = """[package]
name = "hexcalc"
version = "0.1.0"
edition = "2021"

[dependencies]
hex = "0.4"
"""
RUST_LIB = """pub fn half(x: i32) -> f64 {
    BODY
}

pub fn to_hex(bytes: &[u8]) -> String {
    hex::encode(bytes)
}

#[cfg(test)]
mod tests {
    #[test]
    fn encodes() {
        assert_eq!(super::to_hex(&[255, 1]), "ff01");
    }
}
"""
RUST_TEST = """#[test]
fn halves_even() {
    assert_eq!(hexcalc::half(4), 2.0);
}

#[test]
fn hex_roundtrip() {
    assert_eq!(hex::decode(hexcalc::to_hex(&[1, 2])).unwrap(), vec![1, 2]);
}
"""
RUST_ODD_TEST = """
#[test]
fn halves_odd() {
    assert_eq!(hexcalc::half(3), 1.5);
}
"""


def test_a_rust_crate_with_a_debian_packaged_crate_builds_and_validates(tmp_path, engine_config,
                                                                        local_index):  # noqa: F811
    config = engine_config(code__index_url=local_index)
    candidate = candidate_from_history(tmp_path, "hexcalc", [
        SampleCommit("init", {"Cargo.toml": CARGO_TOML, "src/lib.rs": RUST_LIB.replace("BODY", "(x / 2) as f64"),
                              "tests/half.rs": RUST_TEST}),
        SampleCommit("half: true division", {"src/lib.rs": RUST_LIB.replace("BODY", "x as f64 / 2.0"),
                                             "tests/half.rs": RUST_TEST + RUST_ODD_TEST})], ["tests/half.rs"])

    started = time.monotonic()
    built = build_candidate(config, candidate)
    build_s = time.monotonic() - started
    assert built.ok, built.instance["detail"]
    assert (built.environment["language"], built.instance["test_runner"]) == ("rust", "cargo")
    assert built.environment["base_image"].startswith("tasksynth/toolchain:rust-")  # Debian's crates: no fetch
    assert built.instance["test_targets"] == ["--test", "half", "--lib"]

    started = time.monotonic()
    outcome = validate_instance(config, candidate, built.instance, repeat=1, round_="languages")
    validate_s = time.monotonic() - started
    print(f"rust: build {build_s:.1f} s, validation {validate_s:.1f} s")
    assert outcome.grade.valid, (outcome.grade, [(r.status, r.detail) for r in outcome.runs])
    assert list(outcome.grade.fail_to_pass) == ["tests/half.rs::halves_odd"]
    assert sorted(outcome.grade.pass_to_pass) == ["src/lib.rs::tests::encodes", "tests/half.rs::halves_even",
                                                  "tests/half.rs::hex_roundtrip"]
    assert not outcome.grade.pass_to_fail


CMAKE_ROOT = """cmake_minimum_required(VERSION 3.16)
project(halfcpp CXX)
find_package(fmt REQUIRED)
add_library(half src/half.cpp)
target_include_directories(half PUBLIC include)
target_link_libraries(half PUBLIC fmt::fmt)
enable_testing()
add_subdirectory(tests)
"""
HALF_H = "#pragma once\n#include <string>\ndouble half(int x);\nstd::string label(int x);\n"
HALF_CPP = """#include "half.h"
#include <fmt/core.h>
double half(int x) { return BODY; }
std::string label(int x) { return fmt::format("half of {} is {}", x, half(x)); }
"""
CMAKE_TESTS = """add_executable(test_half test_half.cpp)
target_link_libraries(test_half half)
add_executable(test_label test_label.cpp)
target_link_libraries(test_label half)
add_test(NAME half_even COMMAND test_half even)
add_test(NAME label_uses_fmt COMMAND test_label)
"""
TEST_HALF = """#include "half.h"
#include <cstdio>
#include <cstring>
int main(int argc, char** argv) {
  if (!strcmp(argv[1], "even")) return half(4) == 2.0 ? 0 : 1;
  if (!strcmp(argv[1], "odd")) { std::printf("half(3) = %g\\n", half(3)); return half(3) == 1.5 ? 0 : 1; }
  return 2;
}
"""
TEST_LABEL = '#include "half.h"\nint main() { return label(4) == "half of 4 is 2" ? 0 : 1; }\n'
# added with the fix, against a function the fix brings: before it, its executable does not build
TEST_QUARTER = '#include "half.h"\nint main() { return quarter(8) == 2.0 ? 0 : 1; }\n'
CMAKE_QUARTER = """add_executable(test_quarter test_quarter.cpp)
target_link_libraries(test_quarter half)
add_test(NAME quarter_of_eight COMMAND test_quarter)
"""


def test_a_cmake_project_with_a_debian_library_builds_and_validates(tmp_path, engine_config,
                                                                   local_index):  # noqa: F811
    config = engine_config(code__index_url=local_index)
    tests = {"tests/CMakeLists.txt": CMAKE_TESTS, "tests/test_half.cpp": TEST_HALF, "tests/test_label.cpp": TEST_LABEL}
    candidate = candidate_from_history(tmp_path, "halfcpp", [
        SampleCommit("init", {"CMakeLists.txt": CMAKE_ROOT, "include/half.h": HALF_H,
                              "src/half.cpp": HALF_CPP.replace("BODY", "x / 2"), **tests}),
        SampleCommit("half: true division; quarter", {
            "include/half.h": HALF_H + "double quarter(int x);\n",
            "src/half.cpp": HALF_CPP.replace("BODY", "x / 2.0") + "double quarter(int x) { return half(x) / 2; }\n",
            "tests/test_quarter.cpp": TEST_QUARTER,
            "tests/CMakeLists.txt": CMAKE_TESTS + "add_test(NAME half_odd COMMAND test_half odd)\n" + CMAKE_QUARTER})],
        [*tests, "tests/test_quarter.cpp"])

    started = time.monotonic()
    built = build_candidate(config, candidate)
    build_s = time.monotonic() - started
    assert built.ok, built.instance["detail"]
    assert (built.environment["language"], built.instance["test_runner"]) == ("cpp", "ctest")
    assert built.environment["base_image"].startswith("tasksynth/toolchain:cpp-")

    started = time.monotonic()
    outcome = validate_instance(config, candidate, built.instance, repeat=1, round_="languages")
    validate_s = time.monotonic() - started
    print(f"cpp: build {build_s:.1f} s, validation {validate_s:.1f} s")
    assert outcome.grade.valid, (outcome.grade, [(r.status, r.detail) for r in outcome.runs])
    # half_odd fails before the fix; quarter_of_eight's executable does not build before it (an error, not a skip)
    assert sorted(outcome.grade.fail_to_pass) == ["half_odd", "quarter_of_eight"]
    assert sorted(outcome.grade.pass_to_pass) == ["half_even", "label_uses_fmt"]
    before = next(run for run in outcome.runs if run.phase == "before")
    assert before.tests["quarter_of_eight"].outcome == "error"
    assert before.tests["quarter_of_eight"].message == "not run: Unable to find executable"
    assert not outcome.grade.pass_to_fail


TINY_CARGO_TOML = CARGO_TOML.replace('hex = "0.4"', 'tinyhalf = "0.1"')
TINY_LIB = "pub fn half(x: i32) -> f64 {\n    BODY\n}\n"
TINY_TEST = "#[test]\nfn halves_even() {\n    assert_eq!(hexcalc::half(4), 2.0);\n}\n"


@needs_cargo
def test_a_crate_debian_lacks_comes_from_the_mirror_through_the_trusted_fetcher(
        tmp_path, engine_config, local_index, sparse_registry):  # noqa: F811
    url, asked = sparse_registry
    config = engine_config(code__index_url=local_index, code__cargo_registry=url)
    candidate = candidate_from_history(tmp_path, "tinycalc", [
        SampleCommit("init", {"Cargo.toml": TINY_CARGO_TOML, "src/lib.rs": TINY_LIB.replace("BODY", "(x / 2) as f64"),
                              "tests/half.rs": TINY_TEST}),
        SampleCommit("half: the crate's true division", {
            "src/lib.rs": TINY_LIB.replace("BODY", "tinyhalf::half(x)"),
            "tests/half.rs": TINY_TEST + RUST_ODD_TEST})], ["tests/half.rs"])

    started = time.monotonic()
    built = build_candidate(config, candidate)
    build_s = time.monotonic() - started
    assert built.ok, built.instance["detail"]
    assert built.environment["base_image"].startswith("tasksynth/toolchain:rust-deps-")  # the vendored crates' layer
    assert "/crates/tinyhalf/0.1.0/download" in asked

    started = time.monotonic()
    outcome = validate_instance(config, candidate, built.instance, repeat=1, round_="languages")
    validate_s = time.monotonic() - started
    print(f"rust (mirror): build {build_s:.1f} s, validation {validate_s:.1f} s")
    assert outcome.grade.valid, (outcome.grade, [(r.status, r.detail) for r in outcome.runs])
    assert list(outcome.grade.fail_to_pass) == ["tests/half.rs::halves_odd"]
    assert list(outcome.grade.pass_to_pass) == ["tests/half.rs::halves_even"]
