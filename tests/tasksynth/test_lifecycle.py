"""A command's process ends as a normal exit does in everything one can observe (exit code, output, log files,
exit callbacks, threads joined), only without the interpreter's teardown; an unexpected error ends the usual
way."""

import subprocess
import sys

import pytest

COMMAND = """
import atexit, logging, sys, threading, time
from tasksynth.cli import lifecycle

lifecycle.start()
with lifecycle.importing():
    import json  # noqa: F401 - an import made by a command
assert __import__("gc").isenabled()

log = logging.getLogger("command")
handler = logging.FileHandler(sys.argv[1] + "/command.log")
log.addHandler(handler)
log.warning("written by the command")
atexit.register(lambda: open(sys.argv[1] + "/callback", "w").write("ran"))


def late_worker():
    time.sleep(0.5)
    open(sys.argv[1] + "/worker", "w").write("joined")


threading.Thread(target=late_worker).start()


class Teardown:
    def __del__(self):
        open(sys.argv[1] + "/teardown", "w").write("ran")


kept_until_teardown = Teardown()
sys.stdout.write("x" * 100000 + "\\nlast line")  # buffered: a pipe is not a terminal
try:
    {ending}
except SystemExit as exc:
    lifecycle.arm_exit(exc.code)
    raise
"""


def _run(tmp_path, ending: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", COMMAND.format(ending=ending), str(tmp_path)],
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("ending, code", [("sys.exit(3)", 3), ("sys.exit(0)", 0), ("sys.exit()", 0)])
def test_an_exit_with_a_code_keeps_everything_observable_and_skips_the_teardown(tmp_path, ending, code):
    result = _run(tmp_path, ending)
    assert result.returncode == code, result.stderr
    assert result.stdout.endswith("x\nlast line") and len(result.stdout) == 100000 + len("\nlast line")
    assert (tmp_path / "command.log").read_text() == "written by the command\n"
    assert (tmp_path / "callback").read_text() == "ran"
    assert (tmp_path / "worker").read_text() == "joined"
    assert not (tmp_path / "teardown").exists()


def test_an_uncaught_error_ends_the_usual_way(tmp_path):
    result = _run(tmp_path, "raise RuntimeError('unexpected')")
    assert result.returncode == 1
    assert "RuntimeError: unexpected" in result.stderr and result.stdout.endswith("last line")
    assert (tmp_path / "callback").read_text() == "ran"


def test_an_exit_with_a_message_prints_it(tmp_path):
    result = _run(tmp_path, "sys.exit('a message')")
    assert result.returncode == 1 and result.stderr.strip() == "a message"
