"""`go test -json` output -> JUnit XML, by a converter that refuses what it does not understand.

`go test -json` (test2json) writes one JSON event per line: {"Action": ..., "Package": ..., "Test": ...,
"Elapsed": ..., "Output": ...}. Each test (subtests as `TestA/sub`) becomes one <testcase> whose classname is
its package and whose name is the test, so its id is `<package>::<test>`; its output goes into the failure's
text. What is not a test gets no made-up outcome:
- a line that is not a JSON event, or an action this converter does not know, stops the conversion
  (`GoTestOutputError`) instead of guessing;
- a test that started but never ended (a panic, a timeout killing the binary) is an <error> "did not finish";
- a package that failed without any test result (it did not build) is one <error> case `<package>::[package]`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from xml.sax.saxutils import quoteattr

from verifiers.junit import JUnitError

KNOWN_ACTIONS = frozenset({"start", "run", "pause", "cont", "pass", "fail", "skip", "output", "bench",
                           "build-output", "build-fail"})
PACKAGE_CASE = "[package]"
MAX_OUTPUT_CHARS = 20_000


class GoTestOutputError(JUnitError):
    """`go test -json` output the converter does not understand."""


@dataclass
class _Test:
    outcome: str | None = None  # pass | fail | skip; None: it never ended
    seconds: float = 0.0
    output: list[str] = field(default_factory=list)


@dataclass
class _Package:
    tests: dict[str, _Test] = field(default_factory=dict)
    outcome: str | None = None
    output: list[str] = field(default_factory=list)


def go_test_json_to_junit(stream: str) -> str:
    """The JUnit XML of one `go test -json` run (GoTestOutputError on output it does not understand)."""
    packages: dict[str, _Package] = {}
    for number, line in enumerate(stream.splitlines(), 1):
        if not line.strip():
            continue
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            raise GoTestOutputError(f"go test -json output, line {number}, is not a JSON event: {line[:120]!r}") \
                from None
        if not isinstance(event, dict) or event.get("Action") not in KNOWN_ACTIONS:
            action = event.get("Action") if isinstance(event, dict) else None
            raise GoTestOutputError(f"go test -json output, line {number}: unknown action {action!r}")
        name = event.get("Package") or event.get("ImportPath")
        if not isinstance(name, str) or not name:
            raise GoTestOutputError(f"go test -json output, line {number}: an event without a package")
        package = packages.setdefault(name.removesuffix(".test"), _Package())
        _apply(package, event)
    return _xml(packages)


def _apply(package: _Package, event: dict) -> None:
    action, test = event["Action"], event.get("Test")
    text = event.get("Output") or ""
    if action in ("build-output", "build-fail"):
        package.output.append(text)
        if action == "build-fail":
            package.outcome = "fail"
        return
    if not test:
        if action == "output":
            package.output.append(text)
        elif action in ("pass", "fail", "skip"):
            package.outcome = action
        return
    case = package.tests.setdefault(test, _Test())
    if action == "output":
        case.output.append(text)
    elif action in ("pass", "fail", "skip"):
        case.outcome = action
        case.seconds = float(event.get("Elapsed") or 0.0)


def _xml(packages: dict[str, _Package]) -> str:
    suites = []
    for name, package in sorted(packages.items()):
        cases = []
        for test, case in package.tests.items():
            output = _clip("".join(case.output))
            if case.outcome == "pass":
                body = ""
            elif case.outcome == "skip":
                body = f"<skipped message={_attr(_last_line(output) or 'skipped')}/>"
            elif case.outcome == "fail":
                body = f"<failure message={_attr(_last_line(output) or 'failed')}>{_text(output)}</failure>"
            else:
                body = f"<error message=\"did not finish\">{_text(output)}</error>"
            cases.append(f"<testcase classname={quoteattr(name)} name={quoteattr(test)} "
                         f"time=\"{case.seconds:.3f}\">{body}</testcase>")
        if package.outcome == "fail" and not package.tests:
            output = _clip("".join(package.output))
            cases.append(f"<testcase classname={quoteattr(name)} name={quoteattr(PACKAGE_CASE)} time=\"0\">"
                         f"<error message={_attr(_last_line(output) or 'the package failed')}>{_text(output)}"
                         f"</error></testcase>")
        suites.append(f"<testsuite name={quoteattr(name)} tests=\"{len(cases)}\">{''.join(cases)}</testsuite>")
    return "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<testsuites>" + "".join(suites) + "</testsuites>\n"


def _clip(text: str) -> str:
    return text if len(text) <= MAX_OUTPUT_CHARS else "[...]\n" + text[-MAX_OUTPUT_CHARS:]


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith(("=== ", "--- "))]
    return lines[-1][:300] if lines else ""


def _attr(text: str) -> str:
    return quoteattr("".join(c for c in text if ord(c) >= 32))


def _text(text: str) -> str:
    # XML 1.0 allows no control characters but tab, newline and carriage return
    cleaned = "".join(c for c in text if c in "\t\n\r" or ord(c) >= 32)
    return cleaned.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
