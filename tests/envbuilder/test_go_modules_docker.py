"""Go modules Debian does not package, through the trusted fetcher: a GOPROXY of our own on 127.0.0.1 serves the
module `example.test/half` (built here: its zip, go.mod and info files, the module path case-encoded as the
protocol wants), the host's `go mod download` fetches it, the module cache becomes an image layer, and a fixture
repository requiring it is built and validated in module mode, offline, on the real engine. Without Docker: the
decision GOPATH mode or modules, and an unreachable proxy ending the candidate `install_failed` with go's reason.
"""

from __future__ import annotations

import base64
import hashlib
import http.server
import io
import json
import shutil
import socket
import threading
import time
import zipfile

import pytest

from envbuilder.build import build_candidate
from envbuilder.go_fetch import fetch_go_modules, go_modules_debian_lacks, module_requirements
from envbuilder.repos import SourceTree
from envbuilder.samples import SampleCommit
from envbuilder.validation import validate_instance
from envbuilder.wheelhouse import DependencyUnavailable
from tests.envbuilder.test_languages_docker import candidate_from_history, local_index  # noqa: F401
from tests.envbuilder.test_offline_build_docker import index_files  # noqa: F401
from verifiers.grading import INSTALL_FAILED

needs_go = pytest.mark.skipif(shutil.which("go") is None, reason="the host's go (make fetchers) is not installed")

MODULE, VERSION = "example.test/half", "v1.0.0"
HALF_GO = "package half\n\n// Of is x halved, in true division.\nfunc Of(x int) float64 {\n\treturn float64(x) / 2\n}\n"
HALF_MOD = f"module {MODULE}\n\ngo 1.19\n"
CALC_GO = "package calc\n\nBODY"
BEFORE = "func Half(x int) float64 {\n\treturn float64(x / 2)\n}\n"
AFTER = 'import "example.test/half"\n\nfunc Half(x int) float64 {\n\treturn half.Of(x)\n}\n'
CALC_TEST = '''package calc

import (
\t"testing"

\t"example.test/half"
)

func TestHalfEven(t *testing.T) {
\tif Half(4) != half.Of(4) {
\t\tt.Errorf("Half(4) = %v", Half(4))
\t}
}
'''
CALC_ODD_TEST = '''
func TestHalfOdd(t *testing.T) {
\tif Half(3) != 1.5 {
\t\tt.Errorf("Half(3) = %v", Half(3))
\t}
}
'''


def escape_module_path(path: str) -> str:
    """The GOPROXY protocol's case encoding: an upper-case letter is `!` and its lower case."""
    return "".join(f"!{c.lower()}" if c.isupper() else c for c in path)


def dirhash_h1(files: dict[str, bytes]) -> str:
    """go.sum's `h1:` hash: SHA-256 over the sorted lines `<sha256 hex>  <name>`."""
    summary = "".join(f"{hashlib.sha256(files[name]).hexdigest()}  {name}\n" for name in sorted(files))
    return "h1:" + base64.b64encode(hashlib.sha256(summary.encode()).digest()).decode()


def module_files() -> tuple[dict[str, bytes], str]:
    """({proxy path: body} for example.test/half v1.0.0, the go.sum lines that vouch for it)."""
    prefix = f"{MODULE}@{VERSION}/"
    content = {prefix + "go.mod": HALF_MOD.encode(), prefix + "half.go": HALF_GO.encode()}
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zf:
        for name, data in content.items():
            zf.writestr(name, data)
    base = f"/{escape_module_path(MODULE)}/@v/"
    served = {base + "list": f"{VERSION}\n".encode(),
              base + f"{VERSION}.info": json.dumps({"Version": VERSION, "Time": "2026-01-01T00:00:00Z"}).encode(),
              base + f"{VERSION}.mod": HALF_MOD.encode(), base + f"{VERSION}.zip": archive.getvalue()}
    go_sum = (f"{MODULE} {VERSION} {dirhash_h1(content)}\n"
              f"{MODULE} {VERSION}/go.mod {dirhash_h1({'go.mod': HALF_MOD.encode()})}\n")
    return served, go_sum


@pytest.fixture
def go_proxy():
    """(its URL, the paths asked of it): a GOPROXY on 127.0.0.1 serving example.test/half v1.0.0."""
    served, _ = module_files()
    asked: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - the http.server hook's name
            asked.append(self.path)
            body = served.get(self.path)
            self.send_response(200 if body is not None else 404)
            self.send_header("Content-Length", str(len(body or b"")))
            self.end_headers()
            self.wfile.write(body or b"")

        def log_message(self, *_args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", asked
    server.shutdown()


def halfcalc(tmp_path):
    go_mod = f"module example.com/halfcalc\n\ngo 1.19\n\nrequire {MODULE} {VERSION}\n"
    return candidate_from_history(tmp_path, "halfcalc", [
        SampleCommit("init", {"go.mod": go_mod, "go.sum": module_files()[1],
                              "calc.go": CALC_GO.replace("BODY", BEFORE), "calc_test.go": CALC_TEST}),
        SampleCommit("Half: the module's true division", {
            "calc.go": CALC_GO.replace("BODY", AFTER), "calc_test.go": CALC_TEST + CALC_ODD_TEST})],
        ["calc_test.go"])


def test_only_modules_debian_lacks_call_for_the_fetcher(tmp_path):
    go_mod = """module example.com/x // the main module

go 1.19

require github.com/google/go-cmp v0.5.9
require (
\texample.test/half v1.0.0 // indirect
\texample.test/own v0.0.0
)
replace example.test/own => ./own
"""
    assert module_requirements(go_mod) == (["github.com/google/go-cmp", "example.test/half", "example.test/own"],
                                           {"example.test/own": "./own"})
    candidate = halfcalc(tmp_path)
    assert go_modules_debian_lacks(SourceTree(candidate["repo_url"], candidate["base_commit"])) == [MODULE]


@needs_go
def test_an_unreachable_proxy_ends_the_candidate_install_failed_with_gos_reason(tmp_path, engine_config):
    with socket.socket() as probe:  # a loopback port nothing listens on
        probe.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{probe.getsockname()[1]}"
    config = engine_config(code__go_proxy=closed)
    built = build_candidate(config, halfcalc(tmp_path))
    assert not built.ok
    assert built.instance["reason"] == INSTALL_FAILED
    detail = built.instance["detail"]
    assert f"go mod download could not fetch the modules from {closed}" in detail
    assert "connection refused" in detail and f"{MODULE}@{VERSION}" in detail  # go's own reason line
    assert not list((config.home_path / "gomod").glob("*/download"))  # nothing half-fetched is kept


@needs_go
def test_go_sum_verifies_what_the_proxy_serves_even_with_the_checksum_database_off(tmp_path, engine_config, go_proxy):
    url, asked = go_proxy
    config = engine_config(code__go_proxy=url, code__go_sumdb="off")
    candidate = halfcalc(tmp_path)
    tree = SourceTree(candidate["repo_url"], candidate["base_commit"])
    download, key = fetch_go_modules(config, tree)
    assert (download / escape_module_path(MODULE) / "@v" / f"{VERSION}.zip").is_file()
    assert fetch_go_modules(config, tree) == (download, key) and len(asked) == 3  # once per go.mod and go.sum

    tampered = candidate_from_history(tmp_path / "tampered", "halfcalc", [SampleCommit("init", {
        "go.mod": f"module example.com/halfcalc\n\ngo 1.19\n\nrequire {MODULE} {VERSION}\n",
        "go.sum": module_files()[1].replace("h1:", "h1:A", 1), "calc.go": CALC_GO.replace("BODY", BEFORE)}),
        SampleCommit("fix", {"calc.go": CALC_GO.replace("BODY", AFTER)})], [])
    with pytest.raises(DependencyUnavailable, match="(?s)could not fetch the modules.*checksum mismatch"):
        fetch_go_modules(config, SourceTree(tampered["repo_url"], tampered["base_commit"]))


@pytest.mark.docker
@needs_go
def test_a_module_debian_lacks_comes_from_the_proxy_and_validates_offline(tmp_path, base_311, engine_config, go_proxy,
                                                                         local_index):  # noqa: F811
    url, asked = go_proxy
    config = engine_config(code__index_url=local_index, code__go_proxy=url)
    candidate = halfcalc(tmp_path)

    started = time.monotonic()
    built = build_candidate(config, candidate)
    build_s = time.monotonic() - started
    assert built.ok, built.instance["detail"]
    assert (built.environment["language"], built.instance["test_runner"]) == ("go", "gotest")
    assert built.environment["base_image"].startswith("tasksynth/toolchain:go-deps-")  # the module layer
    assert built.environment["recipe"]["env"]["GO111MODULE"] == "on"
    assert f"/{MODULE}/@v/{VERSION}.zip" in asked

    started = time.monotonic()
    outcome = validate_instance(config, candidate, built.instance, repeat=1, round_="languages")
    validate_s = time.monotonic() - started
    print(f"go (modules): build {build_s:.1f} s, validation {validate_s:.1f} s")
    assert outcome.grade.valid, (outcome.grade, [(r.status, r.detail) for r in outcome.runs])
    assert list(outcome.grade.fail_to_pass) == ["example.com/halfcalc::TestHalfOdd"]
    assert list(outcome.grade.pass_to_pass) == ["example.com/halfcalc::TestHalfEven"]
    assert not outcome.grade.pass_to_fail
