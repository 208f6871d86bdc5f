"""`cargo test` output (libtest's stable text format) -> JUnit XML, by a converter that refuses what it does
not understand.

Stable Rust has no machine-readable test output (`--format json` is nightly only), so the text cargo and
libtest print is read, both streams together in the order they came (`cargo test ... > report 2>&1`):

    Running unittests src/lib.rs (target/debug/deps/calc-0f1e2d3c4b5a6978)     <- cargo: a test binary starts
    running 2 tests                                                           <- libtest: how many it runs
    test tests::halves ... ok                                                 <- one result per test
    test tests::odd ... FAILED                                                   (ok | FAILED | ignored[, why])
    failures:
    ---- tests::odd stdout ----                                               <- a failed test's captured output
    test result: FAILED. 1 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.00s

Each test becomes one <testcase> whose classname is its target (the source path cargo names, `src/lib.rs`,
`tests/half.rs`; `doctest:<crate>` for doc-tests) and whose name is the test path, so its id is
`<target>::<test path>` (a doc-test's is `<file> - <item>`, without the line, which moves with any edit above). The summary line is the check: a section whose results do not add up to its
summary's counts (output of a test mixed into a result line, a result this converter does not know) stops the
conversion (`CargoTestOutputError`) instead of guessing. What is not a test gets no made-up outcome:
- a binary that ended without its summary (a crash, an abort, a kill) keeps the results it printed, plus one
  <error> case `<target>::[binary]`; a test it started (`test x ... ` with no result) is an <error>;
- a crate that did not compile (`error: could not compile `name``) is one <error> case `<name>::[build]`,
  so the tests the run should have had count as missing;
- output in which no test binary ran and nothing failed to compile (a dependency cargo could not resolve) is
  refused: there is no test outcome in it to report.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from xml.sax.saxutils import quoteattr

from verifiers.junit import JUnitError

BINARY_CASE = "[binary]"
BUILD_CASE = "[build]"
MAX_OUTPUT_CHARS = 20_000

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
# `Running unittests src/lib.rs (target/debug/deps/calc-<hash>)`, `Running tests/half.rs (...)`, or before
# cargo 1.58 only the binary: `Running target/debug/deps/half-<hash>`; verbose mode quotes the command.
_RUNNING = re.compile(r"^\s*Running (?:unittests )?(?P<what>.+?)\s*$")
_WITH_BINARY = re.compile(r"^(?P<source>.+?) \((?P<binary>[^()]+)\)$")
# cargo right-aligns its status word to 12 columns; a test's own output inside a section rarely does that
_CARGO_STATUS = re.compile(r"^ {5}Running (\S.*\(.*/deps/[^/()]+\)|`\S*/deps/[^/`]+`)$|^ {3}Doc-tests \S+$")
_DOC_TESTS = re.compile(r"^\s*Doc-tests (?P<crate>\S+)\s*$")
_RUNNING_N = re.compile(r"^running (?P<count>\d+) tests?$")
_RESULT = re.compile(r"^test (?P<name>.+?) \.\.\. ?(?P<status>.*)$")
_SUMMARY = re.compile(r"^test result: (?P<verdict>ok|FAILED)\. (?P<passed>\d+) passed; (?P<failed>\d+) failed; "
                      r"(?P<ignored>\d+) ignored; (?P<measured>\d+) measured; \d+ filtered out")
_CAPTURED = re.compile(r"^---- (?P<name>.+?) std(out|err) ----$")
_COULD_NOT_COMPILE = re.compile(r"^error: could not compile `(?P<crate>[^`]+)`")
_NOT_SUCCESSFUL = re.compile(r"process didn't exit successfully: .*$")
# libtest appends how a test is expected to end to its name: `x - should panic`, doc-tests `- compile fail`
_NAME_SUFFIX = re.compile(r" - (should panic|compile fail|compile)$")
_HASH = re.compile(r"-[0-9a-f]{16}$")
_DOCTEST_LINE = re.compile(r"^(?P<item>.+) \(line (?P<line>\d+)\)$")


class CargoTestOutputError(JUnitError):
    """`cargo test` output the converter does not understand."""


@dataclass
class _Test:
    outcome: str | None = None  # ok | failed | ignored; None: it started and never ended
    reason: str = ""
    output: list[str] = field(default_factory=list)


@dataclass
class _Binary:
    target: str
    expected: int | None = None  # `running N tests`
    tests: dict[str, _Test] = field(default_factory=dict)
    summary: dict[str, int] | None = None
    results_done: bool = False  # `failures:` / `successes:` seen: what follows is captured output, not results
    ended: str = ""  # cargo's line about how the process ended, when it did not exit successfully


def cargo_test_to_junit(stream: str) -> str:
    """The JUnit XML of one `cargo test` run (CargoTestOutputError on output it does not understand)."""
    binaries: list[_Binary] = []
    labels: set[str] = set()
    current: _Binary | None = None
    capturing: _Test | None = None
    build_failures: dict[str, list[str]] = {}
    errors: list[str] = []
    for number, raw in enumerate(stream.splitlines(), 1):
        line = _ANSI.sub("", raw).rstrip("\r")
        running, doc = _RUNNING.match(line), _DOC_TESTS.match(line)
        in_section = current is not None and current.expected is not None and current.summary is None
        if running and running.group("what").startswith("`") and "/deps/" not in running.group("what").split()[0]:
            continue  # verbose mode: cargo names the compiler and build scripts it runs, not a test binary
        if (running or doc) and (not in_section or _CARGO_STATUS.match(line)):
            current = _Binary(_label(doc.group("crate") if doc else running.group("what"), bool(doc), labels))
            binaries.append(current)
            capturing = None
            continue
        compile_error = _COULD_NOT_COMPILE.match(line)
        if compile_error:
            build_failures.setdefault(compile_error.group("crate"), []).extend(errors[-5:] or [line])
            continue
        if line.startswith("error"):
            errors.append(line)
        ended = _NOT_SUCCESSFUL.search(line)
        if ended and binaries:
            # cargo names the failed binary after it ran; the last one that did not finish is the one
            unfinished = [b for b in binaries if b.summary is None and not b.ended]
            (unfinished[-1] if unfinished else binaries[-1]).ended = ended.group(0)
            continue
        if current is None or current.summary is not None:
            continue  # cargo's build log, or what follows a binary's summary
        count = _RUNNING_N.match(line)
        if count:
            if current.expected is not None:
                raise CargoTestOutputError(f"cargo test output, line {number}: a second `running N tests` in "
                                           f"{current.target}")
            current.expected = int(count.group("count"))
            continue
        if current.expected is None:
            continue
        summary = _SUMMARY.match(line)
        if summary:
            current.summary = {k: int(v) for k, v in summary.groupdict().items() if k != "verdict"}
            _check_counts(current, number)
            capturing = None
            continue
        captured = _CAPTURED.match(line)
        if captured and current.results_done:
            capturing = current.tests.get(_NAME_SUFFIX.sub("", captured.group("name")))
            continue
        result = None if current.results_done else _RESULT.match(line)
        if result:
            _record(current, result.group("name"), result.group("status"), number)
            capturing = None
            continue
        if line in ("failures:", "successes:"):
            current.results_done, capturing = True, None
        elif capturing is not None:
            capturing.output.append(line)
    if not binaries and not build_failures:
        tail = errors[-1] if errors else "no `Running` line and no compile error"
        raise CargoTestOutputError(f"cargo test ran no test binary: {tail[:300]}")
    return _xml(binaries, build_failures)


def _label(what: str, doc: bool, seen: set[str]) -> str:
    """The target a binary's tests belong to: the source path cargo names, else the binary's name."""
    if doc:
        label = f"doctest:{what}"
    else:
        what = what.strip("`")
        with_binary = _WITH_BINARY.match(what)
        binary = (with_binary.group("binary") if with_binary else what).rsplit("/", 1)[-1].split(" ", 1)[0]
        binary = _HASH.sub("", binary)
        label = with_binary.group("source") if with_binary else binary
        if label in seen:  # two workspace members with the same relative path
            label = f"{label} ({binary})"
    seen.add(label)
    return label


def _record(binary: _Binary, name: str, status: str, number: int) -> None:
    name = _NAME_SUFFIX.sub("", name)
    status = status.strip()
    if status == "ok":
        outcome, reason = "ok", ""
    elif status == "FAILED":
        outcome, reason = "failed", ""
    elif status == "ignored" or status.startswith("ignored, "):
        outcome, reason = "ignored", status.partition(", ")[2]
    elif status == "":
        outcome, reason = None, ""  # one test thread: the name is printed when the test starts
    else:
        raise CargoTestOutputError(f"cargo test output, line {number}: unknown result {status[:80]!r} of test "
                                   f"{name!r} in {binary.target}")
    previous = binary.tests.get(name)
    if previous is not None and previous.outcome is not None:
        raise CargoTestOutputError(f"cargo test output, line {number}: test {name!r} of {binary.target} has two "
                                   f"results")
    test = previous or binary.tests.setdefault(name, _Test())
    test.outcome, test.reason = outcome, reason


def _check_counts(binary: _Binary, number: int) -> None:
    summary = binary.summary or {}
    read = {"ok": 0, "failed": 0, "ignored": 0}
    for test in binary.tests.values():
        if test.outcome in read:
            read[test.outcome] += 1
    stated = (summary["passed"], summary["failed"], summary["ignored"])
    if (read["ok"], read["failed"], read["ignored"]) != stated or len(binary.tests) != binary.expected - \
            summary["measured"] or any(t.outcome is None for t in binary.tests.values()):
        raise CargoTestOutputError(
            f"cargo test output, line {number}: the summary of {binary.target} counts {stated[0]} passed, "
            f"{stated[1]} failed, {stated[2]} ignored of {binary.expected}, but the results read are "
            f"{read['ok']} passed, {read['failed']} failed, {read['ignored']} ignored of {len(binary.tests)} "
            f"(a test's own output mixed into the results?)")


def _doctest_names(binary: _Binary) -> dict[str, str]:
    """Doc-tests as `<file> - <item>`, without the line rustdoc adds: a gold patch that moves the item would
    otherwise make its doc-test a new test (missing before, so "fail to pass"). An item's second code block
    is `<file> - <item> #2`, counted in the order of their lines."""
    if not binary.target.startswith("doctest:"):
        return {name: name for name in binary.tests}
    by_item: dict[str, list[tuple[int, str]]] = {}
    renamed = {}
    for name in binary.tests:
        located = _DOCTEST_LINE.match(name)
        if located:
            by_item.setdefault(located.group("item"), []).append((int(located.group("line")), name))
        else:
            renamed[name] = name
    for item, blocks in by_item.items():
        for number, (_, name) in enumerate(sorted(blocks), 1):
            renamed[name] = item if number == 1 else f"{item} #{number}"
    return renamed


def _xml(binaries: list[_Binary], build_failures: dict[str, list[str]]) -> str:
    suites = []
    for binary in binaries:
        cases = []
        names = _doctest_names(binary)
        for original, test in binary.tests.items():
            name = names[original]
            output = _clip("\n".join(test.output))
            if test.outcome == "ok":
                body = ""
            elif test.outcome == "ignored":
                body = f"<skipped message={_attr(test.reason or 'ignored')}/>"
            elif test.outcome == "failed":
                body = f"<failure message={_attr(_panic_line(output) or 'failed')}>{_text(output)}</failure>"
            else:
                body = "<error message=\"did not finish\"/>"
            cases.append(f"<testcase classname={quoteattr(binary.target)} name={quoteattr(name)}>{body}</testcase>")
        if binary.summary is None:
            why = binary.ended or "the test binary ended without its summary line"
            cases.append(f"<testcase classname={quoteattr(binary.target)} name={quoteattr(BINARY_CASE)}>"
                         f"<error message={_attr(why[:300])}/></testcase>")
        suites.append(f"<testsuite name={quoteattr(binary.target)} tests=\"{len(cases)}\">{''.join(cases)}"
                      f"</testsuite>")
    for crate, lines in build_failures.items():
        text = _clip("\n".join(lines))
        suites.append(f"<testsuite name={quoteattr(crate)} tests=\"1\"><testcase classname={quoteattr(crate)} "
                      f"name={quoteattr(BUILD_CASE)}><error message={_attr(f'{crate} did not compile')}>"
                      f"{_text(text)}</error></testcase></testsuite>")
    return "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<testsuites>" + "".join(suites) + "</testsuites>\n"


def _panic_line(output: str) -> str:
    for line in output.splitlines():
        if "panicked at" in line:
            return line.strip()[:300]
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    return lines[0][:300] if lines else ""


def _clip(text: str) -> str:
    return text if len(text) <= MAX_OUTPUT_CHARS else "[...]\n" + text[-MAX_OUTPUT_CHARS:]


def _attr(text: str) -> str:
    return quoteattr("".join(c for c in text if ord(c) >= 32))


def _text(text: str) -> str:
    cleaned = "".join(c for c in text if c in "\t\n\r" or ord(c) >= 32)
    return cleaned.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
