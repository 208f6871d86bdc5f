"""One small fixture repository per language beyond Python, generated here, built and validated on the real
engine: Go (toolchain and the third-party go-cmp from Debian's packages, `go test -json` converted to JUnit)."""

from __future__ import annotations

import subprocess
import time

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
