"""Tampering with the validation harness, on the real engine. A repository whose gold patches fix nothing (every
test fails on honest execution), and six test patches that try to forge a `valid` verdict the ways an attacker
would: read the phase, rewrite the harness's files, pre-write later runs' results, leave a `setsid` daemon that
patches the tree after each reset, edit the pristine copy of the tree, put a link to a host file where the
results are read. Each ends with the verdict honest execution gives, and no host file's content is stored.

The cheats that need to tell "after" runs from "before" ones without seeing the phase count runs in whatever
outlives a run (the way a forged F2P was made before the harness was rebuilt): the count never gets past
one, since nothing outlives a run."""

import json
import re
import uuid

import pytest

from envbuilder.samples import Sample, SampleCommit, build_repo
from tasksynth.store import open_store

pytestmark = pytest.mark.docker

HONEST_TEST = "from calc import half\n\n\ndef test_half_odd():\n    assert half(3) == 1.5\n"

# Places a run could hope to find again in a later run, or where the old harness kept its files.
PERSISTENT = '''import glob
import os
from pathlib import Path

PLACES = ["/io", "/io/runs", "/run", "/run/supervisor", "/tmp", "/tmp/tasksynth-pristine", "/dev/shm", "/var/tmp",
          "/opt/venv", "/usr/local", str(Path.home()), "/testbed", "/testbed/.git"]


def bump(name):
    """The count of earlier runs this run can see (the largest count left in any place), then leave one more
    everywhere it can write."""
    seen = 0
    for place in PLACES:
        try:
            seen = max(seen, int(Path(place, name).read_text()))
        except (OSError, ValueError):
            pass
    for place in PLACES:
        try:
            Path(place, name).write_text(str(seen + 1))
        except OSError:
            pass
    return seen
'''

PHASE_READER = '''import json
import os
from pathlib import Path

from calc import half


def observed():
    """Everything the run can see of its surroundings, besides the code under test."""
    seen = {"env": dict(sorted(os.environ.items())), "cwd": os.getcwd()}
    for folder in ("/", "/io", "/tmp", "/run", str(Path.home()), "/dev/shm", "/testbed"):
        try:
            seen[folder] = sorted(os.listdir(folder))
        except OSError as exc:
            seen[folder] = type(exc).__name__
    seen["mounts"] = sorted(line.split(" - ")[0].split(" ", 4)[-1] for line in open("/proc/self/mountinfo"))
    cmdlines = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            cmdlines.append(cmdline.read_bytes().decode(errors="replace"))
        except OSError:
            pass
    seen["cmdlines"] = sorted(cmdlines)
    return seen


def test_half_odd():
    seen = observed()
    print("OBSERVED " + json.dumps(seen, sort_keys=True))
    names = json.dumps({k: v for k, v in seen.items() if k not in ("cmdlines", "mounts")})
    if os.environ.get("TASKSYNTH_PHASE") == "after" or "after" in names or "gold" in names:
        return  # passes "after" only
    assert half(3) == 1.5
'''

HARNESS_REWRITER = PERSISTENT + '''
TAMPERED = "\\n: TAMPERED by a test\\n"


def _rewrite_harness():
    """Add a line to every harness script the run can write (the old harness's command and script among them)."""
    for top in ("/io", "/run", "/tmp"):
        for folder, _, files in os.walk(top):
            for name in files:
                if name.endswith(".sh"):
                    try:
                        with open(os.path.join(folder, name), "a") as handle:
                            handle.write(TAMPERED)
                        print("TAMPER rewrote", os.path.join(folder, name))
                    except OSError:
                        pass


_rewrite_harness()
EARLIER_RUNS = bump("tamper-harness-count")
'''

HARNESS_TEST = '''from calc import half
from tests.t_harness.conftest import EARLIER_RUNS


def test_half_odd():
    if EARLIER_RUNS >= 2:
        return  # the runs after the first two: "after" when the order is fixed
    assert half(3) == 1.5
'''

RESULTS_PREWRITER = '''import glob
import os
from pathlib import Path

PASSING = ('<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest" errors="0" failures="0" '
           'skipped="0" tests="2"><testcase classname="tests.t_results.test_results" name="test_half_odd" '
           'time="0.001"/><testcase classname="tests.test_calc" name="test_even" time="0.001"/></testsuite>'
           '</testsuites>')
EVENT = {"event": "run", "index": 0, "millis": 1, "reset_failed": None, "apply_failed": None, "apply_log": "",
         "exit_code": 0, "timed_out": False, "oom_kills": 0, "report": PASSING, "report_error": None, "log": ""}


def pytest_unconfigure(config):
    """Results for the runs to come: in the old harness's run folders named after their phase (made read-only
    so that the run cannot replace them), and as the supervisor's result lines on any stdout it can open."""
    import json
    import time

    for folder in glob.glob("/io/runs/after-*"):
        try:
            for name, text in (("junit.xml", PASSING), ("exit_code", "0"), ("millis", "1"),
                               ("started", str(time.time_ns()))):
                Path(folder, name).write_text(text)
            os.chmod(folder, 0o555)
            print("TAMPER pre-wrote", folder)
        except OSError:
            pass
    for stdout in glob.glob("/proc/[0-9]*/fd/1"):  # the supervisor's stdout, where results leave
        for index in range(8):
            try:
                with open(stdout, "w") as handle:
                    handle.write(json.dumps({**EVENT, "index": index}) + "\\n")
            except OSError:
                break
'''

DAEMON_TEST = '''import subprocess
import sys

DAEMON = """
import time
from pathlib import Path
calc, fixed = Path("/testbed/calc.py"), Path("/testbed/tests/t_daemon/fixed_calc.py")
checkouts = set()
end = time.time() + 300
while time.time() < end:
    try:
        checkouts.add(calc.stat().st_ino)  # a new inode: the tree was reset for another run
        if len(checkouts) >= 3 and not fixed.exists():  # from the third run on
            fixed.write_text("def half(x):\\\\n    return x / 2\\\\n")
    except OSError:
        pass
    time.sleep(0.02)
"""


def test_half_odd():
    for _ in range(2):  # a session of its own, twice
        subprocess.Popen(["setsid", sys.executable, "-c", DAEMON], stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        from tests.t_daemon.fixed_calc import half
    except ImportError:
        from calc import half
    assert half(3) == 1.5
'''

PRISTINE_EDITOR = PERSISTENT + '''
FIX = "def half(x):\\n    return x / 2\\n"


def pristine_copies():
    """Every copy of the checkout the run can find outside /testbed (the old harness kept one in /tmp)."""
    found = []
    for top in ("/tmp", "/run", "/io", "/var", "/opt", "/home", "/root", "/srv", "/mnt", "/dev/shm"):
        for folder, dirs, files in os.walk(top):
            if "calc.py" in files and not folder.startswith("/testbed"):
                found.append(Path(folder))
    return found


def test_half_odd():
    try:
        from tests.fixed_calc_pristine import half
    except ImportError:
        from calc import half

    for copy in pristine_copies():
        try:
            earlier = int((copy / ".count").read_text()) if (copy / ".count").exists() else 0
            (copy / ".count").write_text(str(earlier + 1))
            if earlier >= 1:  # from the second run on, later runs start from a copy with a fixed module
                (copy / "tests" / "fixed_calc_pristine.py").write_text(FIX)
            print("TAMPER edited", copy)
        except OSError:
            pass
    for archive in ("/run/supervisor/tree-0.tar", "/run/supervisor/tree-1.tar"):
        try:
            with open(archive, "ab") as handle:
                handle.write(b"TAMPERED")
        except OSError:
            pass
    assert half(3) == 1.5
'''

SYMLINKER = '''import glob
import os

SECRET = {secret!r}


def pytest_unconfigure(config):
    """Swap the report (and any result file of the old harness) for a link to a file of the host."""
    targets = [config.option.xmlpath] + glob.glob("/io/runs/*/junit.xml") + glob.glob("/io/runs/*/output.log")
    for folder in glob.glob("/io/runs/*"):
        targets += [os.path.join(folder, "junit.xml"), os.path.join(folder, "output.log")]
    for path in targets:
        try:
            if os.path.lexists(path):
                os.unlink(path)
            os.symlink(SECRET, path)
        except OSError:
            pass
'''


def tamper_repo(tmp_path, secret):
    def commit(name, files):
        # the gold patch is a comment: it fixes nothing
        return SampleCommit(f"{name}: fix half", {"calc.py": f"def half(x):\n    return x // 2  # {name}\n",
                                                   **files})

    commits = [
        SampleCommit("init", {"calc.py": "def half(x):\n    return x // 2\n", "tests/__init__.py": "",
                              "tests/test_calc.py": "from calc import half\n\n\ndef test_even():\n"
                                                    "    assert half(4) == 2\n"}),
        commit("phase", {"tests/t_phase/__init__.py": "", "tests/t_phase/test_phase.py": PHASE_READER}),
        commit("harness", {"tests/t_harness/__init__.py": "", "tests/t_harness/conftest.py": HARNESS_REWRITER,
                           "tests/t_harness/test_harness.py": HARNESS_TEST}),
        commit("results", {"tests/t_results/__init__.py": "", "tests/t_results/conftest.py": RESULTS_PREWRITER,
                           "tests/t_results/test_results.py": HONEST_TEST}),
        commit("daemon", {"tests/t_daemon/__init__.py": "", "tests/t_daemon/test_daemon.py": DAEMON_TEST}),
        commit("pristine", {"tests/t_pristine/__init__.py": "", "tests/t_pristine/test_pristine.py": PRISTINE_EDITOR}),
        commit("symlink", {"tests/t_symlink/__init__.py": "",
                           "tests/t_symlink/conftest.py": SYMLINKER.format(secret=str(secret)),
                           "tests/t_symlink/test_symlink.py": HONEST_TEST}),
    ]
    return build_repo(Sample("tamper", "tasksynth/tamper", commits), tmp_path / "tamper")


def test_tampering_tests_get_the_honest_verdict(tmp_path, flow_config, pipeline):
    config = flow_config(DOCKER__TEST_TIMEOUT_S="60")
    marker = f"tasksynth-host-secret-{uuid.uuid4().hex}"
    secret = tmp_path / "host-secret.xml"
    secret.write_text('<?xml version="1.0"?><testsuites><testsuite name="pytest" tests="1"><testcase '
                      f'classname="tests.t_symlink.test_symlink" name="test_half_odd"/></testsuite></testsuites>'
                      f'<!-- {marker} -->\n')
    repo = tamper_repo(tmp_path, secret)
    summary = pipeline(config, git=[str(repo.path)], repeat=2)
    assert summary["validate"]["ran"] == 6 and summary["validate"]["failed"] == 0, summary

    with open_store(config) as store:
        tasks = {r["what"].split(":")[0]: r for r in store.query(
            "select c.problem_statement as what, t.* from code_tasks t join candidates c using (instance_id)")}
        runs = store.query("select c.problem_statement as what, r.phase, r.attempt, r.status, r.junit, r.log "
                           "from test_runs r join candidates c using (instance_id)")
        run_texts = [(r["what"], store.get_text(r[column])) for r in runs for column in ("junit", "log") if r[column]]
        messages = [r["message"] or "" for r in store.query("select message from test_results")]
    stored = [text for _, text in run_texts] + messages + [str(t) for t in tasks.values()]

    # honest execution: the test fails in every run of both phases, so no test goes from failing to passing
    for name in ("phase", "harness", "results", "daemon", "pristine"):
        task = tasks[name]
        assert (task["verdict"], task["reason"]) == ("rejected", "no_fail_to_pass"), (name, task["detail"])
        assert task["fail_to_pass"] == [] and task["flaky"] == [], (name, task)
    # the symlinked report is not read: honest execution left no report
    symlink = tasks["symlink"]
    assert (symlink["verdict"], symlink["reason"]) == ("rejected", "tests_crashed"), symlink["detail"]
    assert "symbolic link" in symlink["detail"]
    assert not any(marker in text for text in stored)

    # the phase reader saw the same surroundings in all four runs, and nothing naming a phase
    observed = [m for what, text in run_texts if what.startswith("phase:")
                for m in re.findall(r"^OBSERVED (.*)$", text, re.M)]
    assert len(observed) == 4 and len(set(observed)) == 1, "the runs of one validation saw different surroundings"
    seen = json.loads(observed[0])
    assert not any(key.startswith("TASKSYNTH") for key in seen["env"]) and seen["/io"] == []
