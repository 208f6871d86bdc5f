"""Sessions and one-shot runs on the real engine: commands as the untrusted user, timeouts, output caps,
nothing left running between commands, files read and written only where the run user may."""

from __future__ import annotations

import pytest

from tasksynth.sandbox import Limits, Mount, SandboxFileError, Session, run_oneshot

pytestmark = pytest.mark.docker


@pytest.fixture(scope="module")
def session(sandbox_config, tmp_path_factory):
    inputs = tmp_path_factory.mktemp("inputs")
    inputs.chmod(0o755)  # the run user reads mounted inputs as "other"
    (inputs / "task.txt").write_text("read me")
    with Session(sandbox_config, mounts=[Mount(str(inputs), "/inputs")]) as opened:
        yield opened


def test_a_command_runs_as_the_untrusted_user(session):
    result = session.run("id -u; grep CapEff /proc/self/status; echo oops >&2; exit 3")
    assert result.outcome == "ok" and result.exit_code == 3 and not result.ok
    assert result.stdout.split("\n")[:2] == ["1000", "CapEff:\t0000000000000000"]
    assert result.stderr == "oops\n"


def test_files_are_written_and_read_as_the_run_user(session):
    session.write_file("/work/notes.txt", "hello")
    assert session.run("cat /work/notes.txt").stdout == "hello"
    assert session.read_file("/inputs/task.txt") == b"read me"
    assert session.read_file("/inputs/task.txt", max_bytes=4) == b"read"  # cut at the cap, not refused
    with pytest.raises(SandboxFileError, match="not a regular file"):
        session.read_file("/dev/zero")
    session.run("ln -sf /etc/shadow /work/link")
    with pytest.raises(SandboxFileError, match="Permission denied"):
        session.read_file("/work/link")
    with pytest.raises(SandboxFileError):
        session.read_file("/work/link", follow_links=False)
    with pytest.raises(SandboxFileError):
        session.write_file("/inputs/task.txt", "overwritten")  # a read-only mount
    with pytest.raises(SandboxFileError):
        session.write_file("/usr/bin/evil", "x")  # the read-only root
    assert session.read_file("/inputs/task.txt") == b"read me"


def test_stdin_and_working_folder(session):
    result = session.run("pwd; wc -c", stdin="12345")
    assert result.stdout.split() == ["/work", "5"]


def test_a_command_past_its_timeout_is_killed_and_nothing_survives_it(session):
    result = session.run("(setsid sleep 120 &) ; nohup sleep 120 >/dev/null 2>&1 & sleep 30", timeout_s=1)
    assert result.outcome == "timeout"
    left = session.run("ps -eo uid=,comm= | awk '$1 == 1000 && $2 == \"sleep\"' | wc -l")
    assert left.stdout.strip() == "0"


def test_background_jobs_end_with_their_command(session):
    assert session.run("sleep 60 & echo started").stdout == "started\n"
    assert session.run("ps -eo uid=,comm= | grep -c '^ *1000 sleep'", timeout_s=5).stdout.strip() == "0"


def test_output_flood_is_capped(session):
    result = session.run("yes", output_cap=5000)
    assert result.outcome == "output_capped" and len(result.stdout) == 5000
    assert session.run("echo still here").stdout == "still here\n"


def test_oneshot_run(sandbox_config, sandbox_image):
    limits = Limits.from_config(sandbox_config, wall_s=20)
    done = run_oneshot(sandbox_config, sandbox_image, "id -u; cat; touch /x", stdin=b"in", limits=limits)
    assert done.outcome == "ok" and done.exit_code == 1
    assert done.stdout == "1000\nin" and "Read-only file system" in done.stderr
    slow = run_oneshot(sandbox_config, sandbox_image, ["sleep", "30"], limits=limits.replace(wall_s=1))
    assert slow.outcome == "timeout"
    flood = run_oneshot(sandbox_config, sandbox_image, "yes", limits=limits, output_cap=2000)
    assert flood.outcome == "output_capped" and len(flood.stdout) == 2000
    hog = run_oneshot(sandbox_config, sandbox_image, ["python3", "-c", "x = bytearray(1 << 30); x[::4096] = b'x' * (1 << 18)"],
                      limits=limits.replace(memory="128m"))
    assert hog.outcome in ("oom", "ok") and hog.exit_code != 0  # the kernel kills it, or Python sees MemoryError
    broken = run_oneshot(sandbox_config, "tasksynth/no-such-image:never", "true", limits=limits)
    assert broken.outcome == "infra_error"
