"""Rust and C/C++ without the engine: detection, the recipes, target selection, CTest's report (a test whose
executable did not build is an error, not a skip), and the trusted cargo fetcher: Debian's crates need no
fetch, a crate Debian lacks is fetched from a mirror (a sparse registry on 127.0.0.1) with no repository code
run on the host, and fails with cargo's reason where crates.io is unreachable."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import shutil
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from envbuilder.cargo_fetch import _path_with_cargo, crates_debian_lacks, fetch_crates, registry_dependencies
from envbuilder.recipes import RecipeContext, detect_language, find_recipe
from envbuilder.repos import SourceTree
from envbuilder.runners import runner_for
from envbuilder.samples import Sample, SampleCommit, build_repo
from envbuilder.sources.patches import is_test_path, language_of
from envbuilder.wheelhouse import DependencyUnavailable
from tasksynth.config import load_config
from verifiers.grading import OK, TESTS_CRASHED

CARGO_TOML = """[package]
name = "hexcalc"
version = "0.1.0"
edition = "2021"

[dependencies]
hex = "0.4"
helper = { path = "helper" }
DEPS
"""


def tree_of(tmp_path: Path, files: dict[str, str]) -> SourceTree:
    repo = build_repo(Sample("r", "t/r", [SampleCommit("init", files)]), tmp_path / "repo")
    return SourceTree(repo.path, "HEAD")


@pytest.fixture
def config(tmp_path):
    def make(**overrides: str):
        return load_config(environ={"TASKSYNTH_HOME": str(tmp_path / "home"),
                                    **{f"TASKSYNTH_{k.upper()}": v for k, v in overrides.items()}})
    return make


def test_cargo_and_cmake_projects_are_detected_even_with_python_helper_scripts(tmp_path):
    rust = tree_of(tmp_path / "a", {"Cargo.toml": CARGO_TOML.replace("DEPS", ""), "scripts/release.py": ""})
    cpp = tree_of(tmp_path / "b", {"CMakeLists.txt": "project(x)\n", "tools/gen.py": ""})
    extension = tree_of(tmp_path / "c", {"CMakeLists.txt": "project(x)\n", "pyproject.toml": "[project]\nname='x'\n"})
    assert (detect_language(rust), detect_language(cpp), detect_language(extension)) == ("rust", "cpp", "python")
    # a source declares the language of the changed files; a Python package's C extension stays Python
    assert (detect_language(cpp, "cpp"), detect_language(extension, "cpp")) == ("cpp", "python")


def test_c_and_cpp_changes_are_told_apart_and_their_test_files_found():
    assert language_of(["src/half.cpp", "include/half.h", "README.md"]) == "cpp"
    assert [is_test_path(p) for p in ("src/half_test.cc", "test_half.cpp", "src/half.cpp")] == [True, True, False]


def test_the_rust_recipe_uses_debian_s_crates_when_they_hold_every_dependency(tmp_path):
    tree = tree_of(tmp_path, {"Cargo.toml": CARGO_TOML.replace("DEPS", "[dev-dependencies]\nitoa = \"1\"\n"),
                              "helper/Cargo.toml": "[package]\nname = \"helper\"\nversion = \"0.1.0\"\n"})
    assert registry_dependencies(tree) == ["hex", "itoa"]  # the path dependency is the repository's own
    assert crates_debian_lacks(tree) == ["itoa"]
    debian_only = tree_of(tmp_path / "d", {"Cargo.toml": CARGO_TOML.replace("DEPS", "")})
    recipe = find_recipe(debian_only, RecipeContext("t/r", ["3.11"]), "rust")
    assert (recipe.language, recipe.test_runner) == ("rust", "cargo")
    assert 'directory = "/usr/share/cargo/registry"' in recipe.env_steps[0]
    assert "/opt/cargo-vendor" in find_recipe(tree, RecipeContext("t/r", ["3.11"]), "rust").env_steps[0]


def test_cargo_targets_are_the_touched_integration_tests_and_the_library():
    runner = runner_for("cargo")
    test_patch = ("diff --git a/tests/half.rs b/tests/half.rs\n--- a/tests/half.rs\n+++ b/tests/half.rs\n"
                  "@@ -1 +1 @@\n-a\n+b\n")
    patch = "diff --git a/src/lib.rs b/src/lib.rs\n--- a/src/lib.rs\n+++ b/src/lib.rs\n@@ -1 +1 @@\n-a\n+b\n"
    targets = runner.select_tests(["src/lib.rs", "tests/half.rs"], test_patch, patch, "touched")
    assert targets == ["--test", "half", "--lib"]
    assert runner.command("cargo test --offline --no-fail-fast", targets, "/io/junit.xml") == \
        "cargo test --offline --no-fail-fast --test half --lib > /io/junit.xml 2>&1"
    assert runner.select_tests(["src/lib.rs"], test_patch, patch, "all") == []


CTEST_REPORT = """<?xml version="1.0" encoding="UTF-8"?>
<testsuite name="(empty)" tests="5" failures="1" disabled="1" skipped="2" hostname="" time="0" timestamp="">
  <testcase name="half_even" classname="half_even" time="0.01" status="run"><system-out></system-out></testcase>
  <testcase name="half_odd" classname="half_odd" time="0.01" status="fail"><failure message=""/>
    <system-out>half(3) = 1</system-out></testcase>
  <testcase name="label" classname="label" time="0" status="notrun"><skipped message="Unable to find executable"/>
    <system-out>Unable to find executable: /tmp/cmake-build/tests/test_label</system-out></testcase>
  <testcase name="needs_gpu" classname="needs_gpu" time="0" status="notrun">
    <skipped message="SKIP_RETURN_CODE=77"/></testcase>
  <testcase name="off" classname="off" time="0" status="disabled"><skipped message="Disabled"/></testcase>
</testsuite>
"""


def test_ctest_s_report_reads_an_unbuilt_test_as_an_error_and_a_requested_skip_as_skipped():
    runner = runner_for("ctest")
    status, detail, found = runner.read_report(8, CTEST_REPORT, [])
    assert (status, detail) == (OK, "some tests failed")
    assert {k: v.outcome for k, v in found.items()} == {"half_even": "passed", "half_odd": "failed",
                                                        "label": "error", "needs_gpu": "skipped", "off": "skipped"}
    assert found["label"].message == "not run: Unable to find executable"


def test_a_project_cmake_cannot_configure_crashes_the_run():
    status, detail, found = runner_for("ctest").read_report(90, None, [])
    assert (status, found) == (TESTS_CRASHED, {}) and "could not configure" in detail
    assert runner_for("ctest").command("BUILD", [], "/io/junit.xml") == \
        "BUILD && ctest --test-dir /tmp/cmake-build --output-junit /io/junit.xml"


needs_cargo = pytest.mark.skipif(not shutil.which("cargo", path=_path_with_cargo()),
                                 reason="the trusted fetcher needs cargo on the host")
MARKER_BUILD_RS = 'fn main() { std::fs::write("/tmp/BUILD_RS_RAN", "host").unwrap(); }\n'


@needs_cargo
def test_without_a_mirror_the_fetch_fails_with_cargo_s_reason_where_crates_io_is_unreachable(tmp_path, config):
    tree = tree_of(tmp_path, {"Cargo.toml": CARGO_TOML.replace("DEPS", "tinyhalf = \"0.1\"").replace(
        "helper = { path = \"helper\" }\n", ""), "src/lib.rs": "", "build.rs": MARKER_BUILD_RS})
    with pytest.raises(DependencyUnavailable) as caught:
        fetch_crates(config(), tree)
    message = str(caught.value)
    assert "cargo fetch could not download the crates from crates.io (set code.cargo_registry" in message
    assert "https://index.crates.io/config.json" in message  # cargo's own words: where it could not download from


def _crate_archive(name: str, version: str) -> bytes:
    files = {"Cargo.toml": f'[package]\nname = "{name}"\nversion = "{version}"\nedition = "2021"\n',
             "src/lib.rs": "pub fn half(x: i32) -> f64 { x as f64 / 2.0 }\n"}
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as archive:
        for path, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(f"{name}-{version}/{path}")
            info.size, info.mode = len(data), 0o644
            archive.addfile(info, io.BytesIO(data))
    return gzip.compress(raw.getvalue(), mtime=0)


@pytest.fixture
def sparse_registry():
    """A crates.io-shaped sparse registry on 127.0.0.1 holding one crate, `tinyhalf 0.1.0`."""
    crate = _crate_archive("tinyhalf", "0.1.0")
    entry = {"name": "tinyhalf", "vers": "0.1.0", "deps": [], "cksum": hashlib.sha256(crate).hexdigest(),
             "features": {}, "yanked": False}
    asked: list[str] = []

    class Registry(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - the http.server API
            asked.append(self.path)
            port = self.server.server_address[1]
            body = {"/config.json": json.dumps({"dl": f"http://127.0.0.1:{port}/crates"}).encode(),
                    "/ti/ny/tinyhalf": json.dumps(entry).encode() + b"\n",
                    "/crates/tinyhalf/0.1.0/download": crate}.get(self.path)
            self.send_response(200 if body is not None else 404)
            self.send_header("Content-Length", str(len(body or b"")))
            self.end_headers()
            self.wfile.write(body or b"")

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Registry)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"sparse+http://127.0.0.1:{server.server_address[1]}/", asked
    server.shutdown()


@needs_cargo
def test_a_crate_debian_lacks_is_fetched_from_the_mirror_and_vendored_without_running_build_rs(
        tmp_path, config, sparse_registry):
    url, asked = sparse_registry
    Path("/tmp/BUILD_RS_RAN").unlink(missing_ok=True)
    tree = tree_of(tmp_path, {"Cargo.toml": CARGO_TOML.replace("DEPS", "tinyhalf = \"0.1\"").replace(
        "hex = \"0.4\"\n", "").replace("helper = { path = \"helper\" }\n", ""), "src/lib.rs": "",
        "build.rs": MARKER_BUILD_RS, ".cargo/config.toml": "[build]\nrustc-wrapper = \"/bin/false\"\n"})
    assert crates_debian_lacks(tree) == ["tinyhalf"]
    vendor, key = fetch_crates(config(code__cargo_registry=url), tree)
    assert (vendor / "tinyhalf-0.1.0" / "src" / "lib.rs").read_text().startswith("pub fn half")
    assert json.loads((vendor / "tinyhalf-0.1.0" / ".cargo-checksum.json").read_text())["package"]
    assert "/crates/tinyhalf/0.1.0/download" in asked
    assert not Path("/tmp/BUILD_RS_RAN").exists()  # the repository's build script did not run on the host
    assert fetch_crates(config(code__cargo_registry=url), tree) == (vendor, key)  # kept: not fetched again
    assert asked.count("/crates/tinyhalf/0.1.0/download") == 1
