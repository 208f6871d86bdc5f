"""One small fixture repository per language beyond Python, generated here, built and validated on the real
engine: Go (toolchain and the third-party go-cmp from Debian's packages, `go test -json` converted to JUnit);
JavaScript (Debian's nodejs; lodash, mocha and its JUnit reporter from npm through the host's `npm ci
--ignore-scripts`, the lock file generated here). Each prints its build and validation seconds."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from envbuilder.build import build_candidate
from envbuilder.samples import Sample, SampleCommit, build_repo
from envbuilder.validation import validate_instance
from tests.envbuilder.test_offline_build_docker import index_files, serve_index  # noqa: F401

pytestmark = pytest.mark.docker

GO_TEST = '''package calc

import (
\t"testing"

\t"github.com/google/go-cmp/cmp"
)

func TestHalf(t *testing.T) {
\tif diff := cmp.Diff(2.0, Half(4)); diff != "" {
\t\tt.Error(diff)
\t}
}
'''
GO_ODD_TEST = '''
func TestHalfOdd(t *testing.T) {
\tif diff := cmp.Diff(1.5, Half(3)); diff != "" {
\t\tt.Error(diff)
\t}
}
'''


@pytest.fixture
def local_index(tmp_path, index_files):  # noqa: F811 - the imported fixture
    files = tmp_path / "index"
    files.mkdir()
    for wheel in index_files.iterdir():
        (files / wheel.name).write_bytes(wheel.read_bytes())
    server, url = serve_index(files)
    yield url
    server.shutdown()


def candidate_from_history(tmp_path, name, commits, tests):
    repo = build_repo(Sample(name, f"t/{name}", commits), tmp_path / name)

    def diff(*paths):
        return subprocess.run(["git", "-C", str(repo.path), "diff", "HEAD~1", "HEAD", "--", *paths],
                              capture_output=True, text=True, check=True).stdout

    changed = subprocess.run(["git", "-C", str(repo.path), "diff", "--name-only", "HEAD~1", "HEAD"],
                             capture_output=True, text=True, check=True).stdout.split()
    base = subprocess.run(["git", "-C", str(repo.path), "rev-parse", "HEAD~1"], capture_output=True, text=True,
                          check=True).stdout.strip()
    return {"instance_id": f"{name}-1", "candidate_id": f"{name}-1", "repo": f"t/{name}",
            "repo_url": str(repo.path), "base_commit": base, "language": None,
            "patch": diff(*[p for p in changed if p not in tests]), "test_patch": diff(*tests)}


def test_a_go_repository_with_a_debian_packaged_dependency_builds_and_validates(tmp_path, flow_config, local_index):
    config = flow_config(code__index_url=local_index)
    candidate = candidate_from_history(tmp_path, "gocalc", [
        SampleCommit("init", {"go.mod": "module example.com/calc\n\ngo 1.19\n\nrequire github.com/google/go-cmp v0.5.9\n",
                              "calc.go": "package calc\n\nfunc Half(x int) float64 {\n\treturn float64(x / 2)\n}\n",
                              "calc_test.go": GO_TEST}),
        SampleCommit("Half: true division", {"calc.go": "package calc\n\nfunc Half(x int) float64 {\n"
                                                        "\treturn float64(x) / 2\n}\n",
                                             "calc_test.go": GO_TEST + GO_ODD_TEST})], ["calc_test.go"])

    started = time.monotonic()
    built = build_candidate(config, candidate)
    build_s = time.monotonic() - started
    assert built.ok, built.instance["detail"]
    assert (built.environment["language"], built.instance["test_runner"]) == ("go", "gotest")
    assert built.environment["base_image"].startswith("tasksynth/toolchain:go-")

    started = time.monotonic()
    outcome = validate_instance(config, candidate, built.instance, repeat=1, round_="languages")
    validate_s = time.monotonic() - started
    print(f"go: build {build_s:.1f} s, validation {validate_s:.1f} s")
    assert outcome.grade.valid, (outcome.grade, [(r.status, r.detail) for r in outcome.runs])
    assert list(outcome.grade.fail_to_pass) == ["_/testbed::TestHalfOdd"]
    assert list(outcome.grade.pass_to_pass) == ["_/testbed::TestHalf"]


PACKAGE_JSON = {"name": "halfjs", "version": "1.0.0", "private": True, "dependencies": {"lodash": "4.17.21"},
                "devDependencies": {"mocha": "10.2.0", "mocha-junit-reporter": "2.2.1"}}
JS_TEST = """const assert = require('assert');
const _ = require('lodash');
const { half } = require('../half');

describe('half', () => {
  it('halves evens', () => assert.strictEqual(half(_.identity(4)), 2));
"""


@pytest.fixture(scope="session")
def package_lock(tmp_path_factory) -> str:
    """package-lock.json of the fixture, resolved by the host's npm against the registry (no script runs)."""
    folder = tmp_path_factory.mktemp("npm-lock")
    (folder / "package.json").write_text(json.dumps(PACKAGE_JSON))
    subprocess.run(["npm", "install", "--package-lock-only", "--ignore-scripts", "--no-audit", "--no-fund"],
                   cwd=folder, check=True, capture_output=True, timeout=600)
    return (folder / "package-lock.json").read_text()


def test_a_javascript_repository_with_npm_dependencies_builds_and_validates(tmp_path, flow_config, local_index,
                                                                               package_lock):
    config = flow_config(code__index_url=local_index)
    first = {"package.json": json.dumps(PACKAGE_JSON, indent=2) + "\n", "package-lock.json": package_lock,
             "half.js": "exports.half = (x) => Math.floor(x / 2);\n", "test/half.test.js": JS_TEST + "});\n"}
    fixed = {"half.js": "exports.half = (x) => x / 2;\n",
             "test/half.test.js": JS_TEST + "  it('halves odds', () => assert.strictEqual(half(3), 1.5));\n});\n"}
    candidate = candidate_from_history(tmp_path, "halfjs", [SampleCommit("init", first),
                                                            SampleCommit("half: no rounding", fixed)],
                                       ["test/half.test.js"])

    started = time.monotonic()
    built = build_candidate(config, candidate)
    build_s = time.monotonic() - started
    assert built.ok, built.instance["detail"]
    assert (built.environment["language"], built.instance["test_runner"]) == ("javascript", "mocha")
    assert (Path(config.home) / "npm").is_dir()  # fetched by the host, once per lock file

    started = time.monotonic()
    outcome = validate_instance(config, candidate, built.instance, repeat=1, round_="languages")
    validate_s = time.monotonic() - started
    print(f"javascript: build {build_s:.1f} s, validation {validate_s:.1f} s")
    assert outcome.grade.valid, (outcome.grade, [(r.status, r.detail) for r in outcome.runs])
    assert list(outcome.grade.fail_to_pass) == ["half halves odds"]
    assert list(outcome.grade.pass_to_pass) == ["half halves evens"]
