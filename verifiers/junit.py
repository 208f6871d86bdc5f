"""JUnit XML (as `pytest --junitxml` writes it) -> per-test outcomes keyed by pytest node ids.

Node ids are the ones SWE-bench uses (`tests/test_x.py::TestC::test_y[param]`), so our FAIL_TO_PASS and
PASS_TO_PASS lists compare directly with theirs. pytest writes `classname` as the node id's path with `/`
turned into `.` and `.py` dropped, followed by the class names; `name` is the function with its parameters.
Turning that back into a path needs to know where the path ends: the `file` attribute (xunit1) when it fits,
else the test files that were run, else the convention that classes are capitalised.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from junitparser import Error, Failure, JUnitXml, Skipped, TestSuite

from tasksynth.errors import TasksynthError

PASSED, FAILED, ERROR, SKIPPED = "passed", "failed", "error", "skipped"
OUTCOMES = (PASSED, FAILED, ERROR, SKIPPED)
# When one test id appears twice (a teardown error reported beside the call), the worst outcome wins.
_SEVERITY = {PASSED: 0, SKIPPED: 1, FAILED: 2, ERROR: 3}
MAX_MESSAGE_CHARS = 500


class JUnitError(TasksynthError):
    """A JUnit report that is missing, empty or not valid JUnit XML."""


@dataclass(frozen=True)
class TestOutcome:
    test_id: str
    outcome: str  # passed | failed | error | skipped
    seconds: float | None = None
    message: str | None = None


def parse_junit(xml: str | bytes | None, *, known_files: Iterable[str] = ()) -> dict[str, TestOutcome]:
    """Every test case of a JUnit report, keyed by node id. Raises `JUnitError` on a missing or malformed
    report; a well-formed report with no test cases is an empty dict (nothing was collected)."""
    if xml is None or not (xml.strip() if isinstance(xml, str) else xml.strip()):
        raise JUnitError("no JUnit report was written (the test process ended before pytest finished)")
    try:
        # Bytes, whatever came in: with lxml installed, junitparser refuses a str that carries an encoding
        # declaration (pytest writes one); undecodable bytes are replaced, as before.
        text = xml if isinstance(xml, str) else xml.decode(errors="replace")
        report = JUnitXml.fromstring(text.encode())
    except Exception as exc:  # lxml/ElementTree errors differ by backend; all mean the same to the user
        raise JUnitError(f"malformed JUnit XML: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") \
            from None
    suites = [report] if isinstance(report, TestSuite) else list(report)
    files = sorted({_dotted(f) for f in known_files if f.endswith(".py")}, key=len, reverse=True)
    outcomes: dict[str, TestOutcome] = {}
    for suite in suites:
        if not isinstance(suite, TestSuite):
            raise JUnitError("malformed JUnit XML: <testsuites> holds something that is not a <testsuite>")
        for case in suite:
            test_id = node_id(case.classname or "", case.name or "", case._elem.get("file"), files)
            outcome, message = _outcome(case.result)
            found = TestOutcome(test_id, outcome, _seconds(case), message)
            previous = outcomes.get(test_id)
            if previous is None or _SEVERITY[outcome] > _SEVERITY[previous.outcome]:
                outcomes[test_id] = found
    return outcomes


def node_id(classname: str, name: str, file: str | None = None, known_dotted: Iterable[str] = ()) -> str:
    """The pytest node id of one test case (see the module docstring)."""
    if not classname:  # a collection error: pytest names the module in `name`
        if file:
            return file
        return name.replace(".", "/") + ".py" if name else "<unknown>"
    module, classes = _split_classname(classname, file, known_dotted)
    path = module.replace(".", "/") + ".py"
    return "::".join([path, *classes, name])


def _split_classname(classname: str, file: str | None, known_dotted: Iterable[str]) -> tuple[str, list[str]]:
    candidates = []
    if file and file.endswith(".py"):
        candidates.append(_dotted(file))
    candidates.extend(known_dotted)
    for dotted in candidates:
        if classname == dotted:
            return dotted, []
        if classname.startswith(dotted + "."):
            return dotted, classname[len(dotted) + 1:].split(".")
    parts = classname.split(".")
    cut = len(parts)
    while cut > 1 and parts[cut - 1][:1].isupper():
        cut -= 1
    return ".".join(parts[:cut]), parts[cut:]


def _dotted(path: str) -> str:
    path = path[2:] if path.startswith("./") else path
    return path[:-3].replace("/", ".") if path.endswith(".py") else path.replace("/", ".")


def _outcome(results) -> tuple[str, str | None]:
    outcome, message = PASSED, None
    for result in results or []:
        if isinstance(result, Error):
            kind = ERROR
        elif isinstance(result, Failure):
            kind = FAILED
        elif isinstance(result, Skipped):
            kind = SKIPPED
        else:
            continue
        if _SEVERITY[kind] > _SEVERITY[outcome]:
            outcome, message = kind, (result.message or (result.text or "")).strip()[:MAX_MESSAGE_CHARS] or None
    return outcome, message


def _seconds(case) -> float | None:
    try:
        return float(case.time) if case.time is not None else None
    except (TypeError, ValueError):
        return None
