"""Session services on the real engine: a long-lived process of the untrusted user that answers one line per
line and keeps its state between requests (a notebook kernel's driver), stopped by a timeout, a flood, a
reset or the next command, and isolated like every command."""

from __future__ import annotations

import json

import pytest

from tasksynth.sandbox import Session

pytestmark = pytest.mark.docker

# Counts the lines it got (state between requests), reports who it runs as, and misbehaves on request.
ECHO_SERVICE = r"""
import json, os, sys, time
seen = 0
for line in sys.stdin:
    seen += 1
    request = json.loads(line)
    if request.get("sleep"):
        time.sleep(request["sleep"])
    if request.get("flood"):
        sys.stdout.write("x" * request["flood"])
        sys.stdout.flush()
    if request.get("exit"):
        os._exit(3)
    caps = [l.split()[1] for l in open("/proc/self/status") if l.startswith("CapEff")][0]
    sys.stdout.write(json.dumps({"seen": seen, "uid": os.getuid(), "caps": caps, "pid": os.getpid(),
                                 "cwd": os.getcwd(), "env": os.environ.get("MARK")}) + "\n")
    sys.stdout.flush()
"""


@pytest.fixture(scope="module")
def session(sandbox_config):
    with Session(sandbox_config, env={"MARK": "set"}) as opened:
        yield opened


def start(session):
    session.write_file("/tmp/service.py", ECHO_SERVICE)
    session.start_service(["/usr/bin/python3", "/tmp/service.py"])


def ask(session, timeout_s=10, **request):
    return session.service_call(json.dumps(request), timeout_s=timeout_s, output_cap=4096)


def test_a_service_keeps_its_state_between_requests_as_the_untrusted_user(session):
    start(session)
    first, second = ask(session), ask(session)
    assert first.outcome == second.outcome == "ok"
    answer = json.loads(second.line)
    assert json.loads(first.line)["seen"] == 1 and answer["seen"] == 2
    assert answer["uid"] == 1000 and answer["caps"] == "0000000000000000"
    assert answer["cwd"] == "/work" and answer["env"] == "set"
    assert answer["pid"] == json.loads(first.line)["pid"]


def test_a_service_that_does_not_answer_in_time_is_killed(session):
    start(session)
    slow = ask(session, timeout_s=1, sleep=30)
    assert slow.outcome == "timeout" and "killed" in slow.reason
    assert ask(session).outcome == "service_gone"


def test_a_flood_or_an_exit_ends_the_service(session):
    start(session)
    assert ask(session, flood=100_000).outcome == "output_capped"
    start(session)
    gone = ask(session, exit=True)
    assert gone.outcome == "service_gone" and "ended" in gone.reason


def test_a_command_or_a_reset_stops_the_service(session):
    start(session)
    assert ask(session).outcome == "ok"
    assert session.run("true").outcome == "ok"
    assert ask(session).outcome == "service_gone"
    start(session)
    session.write_file("/work/left.txt", "x")
    session.reset()
    assert ask(session).outcome == "service_gone"
    assert session.run("ls -A /work /tmp").stdout.split() == ["/tmp:", "/work:"]
    start(session)
    assert json.loads(ask(session).line)["seen"] == 1  # a new process, no state from before
