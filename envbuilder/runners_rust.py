"""Rust: the heuristic recipe and the `cargo test` runner, its libtest output converted to JUnit
(`verifiers.cargo_test`, which refuses output it does not understand) and read with junitparser.

Crates come from a directory source, never from the network: Debian's packaged crates
(`/usr/share/cargo/registry`, the `librust-*-dev` packages of the toolchain image) when they hold every
dependency the manifests name, else the crates the trusted host fetcher downloaded (`envbuilder.cargo_fetch`)
vendored at `/opt/cargo-vendor`. The recipe's first install step writes cargo's config.toml replacing crates.io
with that directory; its last, `cargo fetch --offline`, resolves every dependency from it, so a crate it lacks
ends the build `install_failed` naming it, before any test runs. `build.rs` scripts and proc-macros are the repository's code: cargo compiles and runs them
only inside the sandbox, which has no network.

Test ids are `<target>::<test path>`: the target is the source path cargo names for a test binary
(`src/lib.rs`, `tests/half.rs`; `doctest:<crate>` for doc-tests), the test path what `cargo test` filters on
(`tests::halves_odd`). Targets run: `--test <name>` for each integration test file (tests/<name>.rs) the test
patch touches and `--lib` when the library's sources are touched; none of those, or scope "all": every target.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterable
from pathlib import PurePosixPath

from envbuilder.recipes import Recipe, RecipeContext, dependency_files
from envbuilder.repos import SourceTree
from envbuilder.runners import REPORT_PATH, RUNNERS, TestRunner
from envbuilder.runners_go import parse_junit_cases
from envbuilder.sources.patches import file_diffs
from verifiers.cargo_test import CargoTestOutputError, cargo_test_to_junit
from verifiers.grading import JUNIT_MALFORMED, JUNIT_MISSING, OK, TESTS_CRASHED
from verifiers.junit import JUnitError, TestOutcome

CARGO_TEST_COMMAND = "cargo test --offline --no-fail-fast"
DEBIAN_CRATES = "/usr/share/cargo/registry"
VENDORED_CRATES = "/opt/cargo-vendor"
CARGO_CONFIG = "/home/tester/.cargo/config.toml"  # $CARGO_HOME of the recipe (tasksynth.docker.toolchains)


class CargoTestRunner(TestRunner):
    name = "cargo"
    language = "rust"
    # cargo test: 0 all passed; 101 a test failed or the crate did not compile (the output says which)
    OK_EXIT_CODES = {0: "all passed", 101: "some tests failed or did not compile"}

    def select_tests(self, files: Iterable[str], test_patch: str, patch: str, scope: str) -> list[str]:
        if scope == "all":
            return []
        present = set(files)
        targets: list[str] = []
        for piece in file_diffs(test_patch):
            path = PurePosixPath(piece.path)
            if "\n+++ /dev/null" in piece.text or path.suffix != ".rs":
                continue
            if path.parts[0] == "tests" and len(path.parts) == 2:
                targets += ["--test", path.stem]
            elif path.parts[0] == "tests" and len(path.parts) == 3 and path.name == "main.rs":
                targets += ["--test", path.parts[1]]
        library = [p for p in file_diffs(patch) + file_diffs(test_patch)
                   if p.path.startswith("src/") and p.path.endswith(".rs")]
        if library and "src/lib.rs" in present:
            targets.append("--lib")
        return targets

    def command(self, base_command: str, targets: list[str], report_path: str = REPORT_PATH) -> str:
        # both streams, in order: cargo names each test binary on stderr, libtest prints its results on stdout
        return " ".join([base_command, *(shlex.quote(t) for t in targets), ">", shlex.quote(report_path), "2>&1"])

    def read_report(self, exit_code: int | None, report: str | None,
                    targets: list[str]) -> tuple[str, str, dict[str, TestOutcome]]:
        if exit_code not in self.OK_EXIT_CODES:
            return TESTS_CRASHED, f"cargo test exited with {exit_code}", {}
        if report is None or not report.strip():
            return JUNIT_MISSING, "cargo test wrote no output", {}
        try:
            outcomes = parse_junit_cases(cargo_test_to_junit(report), lambda target, name: f"{target}::{name}")
        except (CargoTestOutputError, JUnitError) as exc:
            return JUNIT_MALFORMED, str(exc), {}
        return OK, self.OK_EXIT_CODES[exit_code], outcomes


def rust_recipe(tree: SourceTree, context: RecipeContext) -> Recipe:
    """Cargo with crates.io replaced by a directory of crates: Debian's when it has every dependency the
    manifests name, else the host-fetched ones (`envbuilder.cargo_fetch`)."""
    from envbuilder.cargo_fetch import crates_debian_lacks
    from tasksynth.docker.toolchains import TOOLCHAIN_ENV

    lacking = crates_debian_lacks(tree)
    directory = VENDORED_CRATES if lacking else DEBIAN_CRATES
    config = ["[source.crates-io]", 'replace-with = "offline"', "[source.offline]", f'directory = "{directory}"']
    write_config = (f"mkdir -p {PurePosixPath(CARGO_CONFIG).parent} && printf '%s\\n' "
                    + " ".join(shlex.quote(line) for line in config) + f" > {CARGO_CONFIG}")
    notes = ["Cargo.toml found: Rust, tests by `cargo test`, its output converted to JUnit",
             f"crates from Debian's packages ({DEBIAN_CRATES})" if not lacking else
             f"crates Debian's packages lack ({', '.join(lacking)}): fetched by the host (cargo fetch), "
             f"vendored at {VENDORED_CRATES}"]
    return Recipe(env_steps=[write_config, "cargo --version", "cargo fetch --offline"], test_runner="cargo",
                  test_command=CARGO_TEST_COMMAND, env=dict(TOOLCHAIN_ENV["rust"]), language="rust",
                  dependency_files=dependency_files(tree), notes=notes)


RUNNERS.setdefault(CargoTestRunner.name, CargoTestRunner())
