"""The call pool on the real engine: state reset per attempt, modules, and hostile functions. Each hostile
call must end with its own outcome and reason, and the next call on the same pool must be served."""

from __future__ import annotations

import sqlite3
import subprocess
import textwrap
import uuid

import pytest

pytestmark = pytest.mark.docker

TRIVIAL = "def echo(x):\n    return x\n"


def fn(body: str) -> str:
    """Source of a function `f` with this body."""
    return "def f():\n" + textwrap.indent(textwrap.dedent(body).strip("\n"), "    ") + "\n"


def assert_pool_serves(pool):
    result = pool.call(TRIVIAL, "echo", {"x": [1, "two"]})
    assert result.outcome == "ok" and result.result == [1, "two"], result


@pytest.fixture
def master(tmp_path):
    path = tmp_path / "env.sqlite"
    with sqlite3.connect(path) as db:
        db.execute("create table accounts(id integer primary key, owner text, balance integer)")
        db.executemany("insert into accounts values (?, ?, ?)", [(1, "ada", 100), (2, "bob", 50)])
    return path


TOOLS = textwrap.dedent("""
    import os, sqlite3

    def db():
        return sqlite3.connect(os.environ["SANDBOX_STATE"])

    def transfer(src, dst, amount):
        with db() as c:
            c.execute("update accounts set balance = balance - ? where id = ?", (amount, src))
            c.execute("update accounts set balance = balance + ? where id = ?", (amount, dst))
        return balances()

    def balances():
        return dict(db().execute("select owner, balance from accounts order by id").fetchall())
""")


def test_an_attempt_works_on_its_own_copy_of_the_state(pool, master):
    with pool.attempt(state_master=master) as attempt:
        attempt.load("tools", TOOLS)
        moved = attempt.call_module("tools", "transfer", {"src": 1, "dst": 2, "amount": 30})
        assert moved.outcome == "ok" and moved.result == {"ada": 70, "bob": 80}
        verdict = attempt.call("import tools\ndef verify():\n    return tools.balances()['bob'] == 80\n", "verify")
        assert verdict.result is True
        leftover = attempt.call(fn("open('/tmp/leftover', 'w').write('x'); return 1"), "f")
        assert leftover.ok
    with pool.attempt(state_master=master) as attempt:
        attempt.load("tools", TOOLS)
        assert attempt.call_module("tools", "balances").result == {"ada": 100, "bob": 50}
        assert attempt.call(fn("import os; return os.path.exists('/tmp/leftover')"), "f").result is False
    with sqlite3.connect(master) as db:  # the master itself never changes
        assert db.execute("select balance from accounts where id = 2").fetchone() == (50,)


def test_nothing_passes_from_one_attempt_to_the_next(pool):
    with pool.attempt() as attempt:
        left = attempt.call(fn("""
            import ctypes
            for path in ('/tmp/note', '/dev/shm/note', '/work/note'):
                open(path, 'w').write('answer: 42')
            return ctypes.CDLL(None).shmget(4242, 4096, 0o1000 | 0o600)  # System V shared memory
        """), "f")
        assert left.ok and left.result >= 0
        container = attempt._member.container.name
    with pool.attempt() as attempt:
        seen = attempt.call(fn("""
            import os
            files = [p for p in ('/tmp/note', '/dev/shm/note', '/work/note') if os.path.exists(p)]
            return files, open('/proc/sysvipc/shm').read().count('\\n') - 1
        """), "f")
        assert attempt._member.container.name == container  # the same warm container, reset
        assert seen.result == [[], 0]


LEFTOVER_PROBE = """
import sys

def f(secret):
    # What of earlier attempts the supervisor's memory, as this process has it, still refers to.
    supervisor = sys.modules.get("supervisor") or sys.modules["__main__"]
    found = []
    if secret in repr(getattr(supervisor.SUPERVISOR, "modules", {})):
        found.append("loaded modules")
    if any(secret in source for _, source in getattr(supervisor, "COMPILED", {})):
        found.append("kept compiled code")
    return found
"""


def test_an_attempt_finds_nothing_of_earlier_attempts_in_its_processes(pool):
    secret = f"expected-{uuid.uuid4().hex}"
    with pool.attempt() as attempt:
        attempt.load("answers", f"EXPECTED = {secret!r}\ndef check(x):\n    return x == EXPECTED\n")
        for _ in range(3):  # a module called into, and a source run twice: both kept compiled
            attempt.call_module("answers", "check", ["guess"])
        for _ in range(2):
            attempt.call(f"def verify():\n    return {secret!r} != ''\n", "verify")
        container = attempt._member.container.name
    with pool.attempt() as attempt:
        first = attempt.call(LEFTOVER_PROBE, "f", [secret])  # the first call: in the process that did the reset
        second = attempt.call(LEFTOVER_PROBE, "f", [secret])
        assert attempt._member.container.name == container
        assert (first.result, second.result) == ([], []), (first, second)


MEMORY_SCAN = """
import ctypes

def f(reversed_markers):
    # How often each marker (sent reversed, so that the request holds no copy of it) is in this process's
    # writable memory: one copy is the one made here.
    markers = [r[::-1].encode() for r in reversed_markers]
    found = [0] * len(markers)
    for line in open("/proc/self/maps").read().splitlines():
        parts = line.split()
        if not parts[1].startswith("rw") or len(parts) > 5 and parts[5].startswith("[v"):
            continue
        low, high = (int(x, 16) for x in parts[0].split("-"))
        data = ctypes.string_at(low, high - low)
        for i, marker in enumerate(markers):
            found[i] += data.count(marker)
    return found
"""


def test_an_attempt_cannot_read_earlier_attempts_in_its_memory(pool):
    """Not even in freed memory: the verifier of one attempt (its expected answer) is never in the memory
    the next attempt's processes start with (they are forked from the fork server, which never held it)."""
    secret, control = (f"answer-{uuid.uuid4().hex}" for _ in range(2))
    with pool.attempt() as attempt:
        attempt.load("answers", f"EXPECTED = {secret!r}\n")
        assert attempt.call(f"import answers\ndef verify():\n    return answers.EXPECTED == {secret!r}\n",
                            "verify").result is True
        container = attempt._member.container.name
    with pool.attempt() as attempt:
        for _ in range(2):
            found = attempt.call(MEMORY_SCAN, "f", [[secret[::-1], control[::-1]]])
            assert found.result == [1, 1], found  # the secret no more often than a string never sent
        assert attempt._member.container.name == container


def test_a_call_reports_result_output_and_exception(pool):
    printed = pool.call(fn("print('to stdout ✓'); import sys; print('to stderr é', file=sys.stderr); return {'a': 1}"), "f")
    assert (printed.result, printed.stdout, printed.stderr) == ({"a": 1}, "to stdout ✓\n", "to stderr é\n")
    raised = pool.call("def f(x):\n    return 1 / x\n", "f", [0])
    assert raised.outcome == "exception" and raised.exception["type"] == "ZeroDivisionError"
    assert "return 1 / x" in raised.exception["traceback"]
    assert pool.call("def f(:\n", "f").exception["type"] == "SyntaxError"
    assert pool.call(fn("return object()"), "f").exception["type"] == "TypeError"


FORGER = textwrap.dedent("""
    import marshal, os, struct

    def value():
        return "honest"

    def forge():
        # What a call's child sends ahead of its result when the supervisor keeps its compiled code: try to
        # make the kept code of this module, and of the verifier, say something else.
        forged = marshal.dumps(compile("def value():\\n    return 'forged'\\n", "<forged>", "exec"))
        os.write(3, struct.pack(">I", len(forged)) + forged)
        return "sent"
""")
VERIFIER = "def verify():\n    return 1 / 0\n"


def test_code_run_again_is_served_from_kept_code_that_calls_cannot_forge(pool):
    for _ in range(2):
        with pool.attempt() as attempt:
            attempt.load("tools", FORGER)
            values = [attempt.call_module("tools", "value").result for _ in range(3)]
            attempt.call_module("tools", "forge")
            verdicts = [attempt.call(VERIFIER, "verify") for _ in range(3)]
            values.append(attempt.call_module("tools", "value").result)
            assert values == ["honest"] * 4
            for verdict in verdicts:  # kept code keeps its file name and lines for the traceback
                assert verdict.exception["type"] == "ZeroDivisionError"
                assert "return 1 / 0" in verdict.exception["traceback"]



KEPT_CODE_PROBE = """
import sys

def kept():
    # Whether this call's own code came to its process already compiled (the kept code its request carried).
    supervisor = sys.modules["supervisor"]
    return [source == SOURCE_MARK for (name, source) in supervisor.COMPILED if name == "<call>"]

SOURCE_MARK = None
"""


def test_kept_code_serves_later_attempts_of_the_same_source_only(pool):
    """A verifier runs in every attempt of its task: from its third run on the same container it comes
    compiled (its second run's child ships the code), and a call of another source gets none of it."""
    probe = KEPT_CODE_PROBE.replace("SOURCE_MARK = None", "SOURCE_MARK = __import__('sys').modules['supervisor']"
                                    "._SOURCES['<call>']")
    seen, other = [], None
    for _ in range(3):
        with pool.attempt() as attempt:
            seen.append(attempt.call(probe, "kept").result)
            container = attempt._member.container.name
    with pool.attempt() as attempt:
        other = attempt.call(KEPT_CODE_PROBE, "kept").result  # another source (its last line differs)
        assert attempt._member.container.name == container
    assert seen == [[], [], [True]], seen
    assert other == [], other


MODULE_WITH_CLASSES = textwrap.dedent("""
    import dataclasses, sys

    @dataclasses.dataclass
    class Order:  # dataclasses looks its module up in sys.modules
        item: str
        quantity: int = 1

    def describe():
        me = sys.modules[__name__]
        return [__name__, __spec__.name, __loader__ is __spec__.loader, me.Order("tea", 2).quantity]

    def fail(x):
        return {"a": 1}[x]
""")


def test_a_loaded_module_is_a_proper_module_and_its_lines_show_in_tracebacks(pool):
    with pool.attempt() as attempt:
        attempt.load("shop", MODULE_WITH_CLASSES)
        assert attempt.call_module("shop", "describe").result == ["shop", "shop", True, 2]
        imported = attempt.call("import shop\ndef f():\n    return shop.describe()\n", "f")
        assert imported.result == ["shop", "shop", True, 2]
        failed = attempt.call_module("shop", "fail", ["b"])
        assert failed.outcome == "exception" and failed.exception["type"] == "KeyError"
        assert 'return {"a": 1}[x]' in failed.exception["traceback"]


def test_calls_run_as_the_untrusted_user_with_no_capabilities(pool):
    result = pool.call(fn("""
        import os
        status = dict(l.split(':', 1) for l in open('/proc/self/status') if ':' in l)
        caps = {k: int(status[k], 16) for k in ('CapInh', 'CapPrm', 'CapEff', 'CapBnd', 'CapAmb')}
        return [os.getuid(), os.geteuid(), os.getgroups(), caps, status['NoNewPrivs'].strip()]
    """), "f")
    uid, euid, groups, caps, no_new_privs = result.result
    assert (uid, euid, groups, no_new_privs) == (1000, 1000, [], "1")
    assert set(caps.values()) == {0}, caps


def test_infinite_loop_times_out(pool):
    result = pool.call(fn("while True: pass"), "f", timeout_s=1)
    assert result.outcome == "timeout" and "1 s" in result.reason
    assert_pool_serves(pool)


def test_cpu_time_limit(pool):
    result = pool.call(fn("while True: pass"), "f", cpu_s=1, timeout_s=30)  # a loaded machine gives little CPU
    assert result.outcome == "timeout" and "CPU" in result.reason
    assert_pool_serves(pool)


def test_fork_bomb_hits_the_process_limit_and_leaves_nothing(pool):
    result = pool.call(fn("""
        import os, time
        while True:
            os.fork()
    """), "f", timeout_s=15)
    assert result.outcome == "pids", result
    survivors = pool.call(fn("""
        import os
        return [p for p in os.listdir('/proc') if p.isdigit() and os.stat('/proc/' + p).st_uid == 1000
                and int(p) != os.getpid()]
    """), "f")
    assert survivors.result == []


def test_memory_hog(pool):
    result = pool.call(fn("blocks = [bytearray(16 << 20) for _ in range(1000)]"), "f")
    assert result.outcome == "oom" and "MemoryError" in result.reason
    assert_pool_serves(pool)


def test_output_flood_is_capped_before_it_is_read(pool):
    result = pool.call(fn("while True: print('x' * 4096)"), "f", output_cap=10_000)
    assert result.outcome == "output_capped" and "stdout" in result.reason
    assert len(result.stdout) == 10_000
    huge = pool.call(fn("return 'y' * 200_000"), "f", output_cap=10_000)
    assert huge.outcome == "output_capped" and huge.result is None
    assert_pool_serves(pool)


def test_disk_filler(pool):
    too_big = pool.call(fn("open('/work/big', 'wb').write(b'x' * (16 << 20))"), "f")
    assert too_big.outcome == "file_size", too_big
    full = pool.call(fn("""
        for i in range(100):
            open(f'/tmp/part{i}', 'wb').write(b'x' * (4 << 20))
    """), "f")
    assert full.outcome == "disk_full", full
    assert_pool_serves(pool)


def test_no_network_not_even_the_hosts_loopback(pool, loopback_listener):
    result = pool.call(f"""
import socket
def f():
    try:
        socket.create_connection(('127.0.0.1', {loopback_listener.port}), timeout=2).sendall(b'leak')
        return 'connected'
    except OSError as exc:
        return type(exc).__name__
""", "f")
    assert result.result in ("ConnectionRefusedError", "OSError")
    interfaces = pool.call(fn("return [l.split(':')[0].strip() for l in open('/proc/net/dev').readlines()[2:]]"), "f")
    assert interfaces.result == ["lo"]
    assert loopback_listener.connections == 0 and loopback_listener.received == b""


def test_host_files_are_not_reachable(pool, tmp_path):
    secret = tmp_path / "host-secret.txt"
    secret.write_text("host only")
    result = pool.call(f"""
def f():
    out = {{}}
    for path in ({str(secret)!r}, '/etc/shadow', '/run/tasksynth-sandbox', '/opt/tasksynth-sandbox/supervisor.py'):
        try:
            out[path] = open(path).read()[:20] if not path.endswith('sandbox') else __import__('os').listdir(path)
        except OSError as exc:
            out[path] = type(exc).__name__
    return out
""", "f")
    out = result.result
    assert out[str(secret)] == "FileNotFoundError"
    assert out["/etc/shadow"] == "PermissionError"  # the image's own, and unreadable to the run user
    assert out["/run/tasksynth-sandbox"] in ("PermissionError", [])  # the socket folder: nothing to take
    assert "host only" not in str(out)


def test_writing_outside_the_allowed_folders_fails(pool):
    result = pool.call(fn("""
        out = {}
        for path in ('/etc/passwd', '/usr/bin/x', '/opt/tasksynth-sandbox/supervisor.py', '/x'):
            try:
                open(path, 'a').write('x')
                out[path] = 'written'
            except OSError as exc:
                out[path] = type(exc).__name__
        return out
    """), "f")
    assert "written" not in result.result.values(), result.result


def test_the_supervisor_cannot_be_signalled_or_traced(pool):
    result = pool.call(fn("""
        import ctypes, os, signal
        out = {}
        for pid in (1, int(open('/proc/1/task/1/children').read().split()[0])):  # tini, the supervisor
            for sig in (signal.SIGKILL, signal.SIGSTOP, signal.SIGTERM):
                try:
                    os.kill(pid, sig)
                    out[f'{pid}:{sig.name}'] = 'sent'
                except OSError as exc:
                    out[f'{pid}:{sig.name}'] = type(exc).__name__
            libc = ctypes.CDLL(None, use_errno=True)
            out[f'{pid}:ptrace'] = libc.ptrace(16, pid, 0, 0)  # PTRACE_ATTACH
            try:
                open(f'/proc/{pid}/mem', 'rb').read(1)
                out[f'{pid}:mem'] = 'read'
            except OSError as exc:
                out[f'{pid}:mem'] = type(exc).__name__
        return out
    """), "f")
    values = result.result
    assert not [k for k, v in values.items() if v in ("sent", "read") or v == 0], values
    assert_pool_serves(pool)


def test_a_daemon_does_not_outlive_its_call(pool):
    started = pool.call(fn("""
        import os, time
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                time.sleep(60)
            os._exit(0)
        return os.getpid()
    """), "f")
    assert started.ok
    after = pool.call(fn("""
        import os
        mine = os.getpid()
        return [p for p in os.listdir('/proc') if p.isdigit() and int(p) != mine
                and 'Uid:\\t1000' in open(f'/proc/{p}/status').read()]
    """), "f")
    assert after.result == []


def test_a_container_that_dies_is_replaced(pool, master, sandbox_config):
    with pool.attempt(state_master=master) as attempt:
        attempt.load("tools", TOOLS)
        assert attempt.call_module("tools", "transfer", {"src": 1, "dst": 2, "amount": 10}).ok
        name = attempt._member.container.name
        killer = subprocess.Popen(["sh", "-c", f"sleep 1; docker kill {name}"])
        crashed = attempt.call(fn("import time; time.sleep(20)"), "f", timeout_s=30)
        killer.wait()
        assert crashed.outcome == "sandbox_crash" and attempt.crashes == 1
        # The attempt goes on in a new container; its state restarted from the master.
        assert attempt.call_module("tools", "balances").result == {"ada": 100, "bob": 50}
        assert attempt._member.container.name != name
    assert_pool_serves(pool)


KILL_RUN_USER = ("import os; me = os.getpid(); "
                 "print(len([p for p in os.listdir('/proc') if p.isdigit() and int(p) != me "
                 "and 'Uid:\\t1000' in open(f'/proc/{p}/status').read()])); os.kill(-1, 9)")


def kill_waiting_child(container: str) -> int:
    """Kill, from outside the supervisor, every process of the run user: after an attempt's reset that is the
    child that did it, waiting for the attempt's first call. How many there were."""
    done = subprocess.run(["docker", "exec", "-u", "1000", container, "python3", "-c", KILL_RUN_USER],
                          capture_output=True, text=True, timeout=60)
    return int(done.stdout.strip() or 0)


def test_the_resets_child_that_died_is_replaced_without_the_attempt_noticing(pool, master):
    with pool.attempt(state_master=master) as attempt:
        attempt.load("tools", TOOLS)
        assert attempt.call_module("tools", "transfer", {"src": 1, "dst": 2, "amount": 10}).ok
        name = attempt._member.container.name
        assert kill_waiting_child(name) == 0  # between calls nothing of the run user is left
    with pool.attempt(state_master=master) as attempt:
        attempt.load("tools", TOOLS)
        attempt._ready_member()  # the reset, done by the child that is to run the first call
        assert attempt._member.container.name == name
        assert kill_waiting_child(name) == 1  # that child, waiting, and nothing else
        fresh = attempt.call_module("tools", "balances")
        assert fresh.outcome == "ok" and fresh.result == {"ada": 100, "bob": 50}, fresh
        assert attempt.call_module("tools", "transfer", {"src": 1, "dst": 2, "amount": 5}).result == \
            {"ada": 95, "bob": 55}
        assert attempt.crashes == 0


def test_an_exit_status_cannot_fake_a_reason(pool):
    for status in (97, 98):  # once the child's own ways of saying "result too big" and "truncated"
        faked = pool.call(fn(f"import os; os._exit({status})"), "f")
        assert faked.outcome == "killed" and f"status {status << 8}" in faked.reason, faked
    big = pool.call(fn("return 'y' * 5000"), "f", output_cap=4096)  # the supervisor measures the result
    assert big.outcome == "output_capped" and "result" in big.reason and big.result is None
    fits = pool.call(fn("return 'y' * 4000"), "f", output_cap=4096)
    assert fits.outcome == "ok" and fits.result == "y" * 4000


def test_engine_failures_are_infra_errors_not_the_codes(sandbox_config):
    from tasksynth.sandbox import CallPool

    with CallPool(sandbox_config, image="tasksynth/no-such-image:never") as broken:
        result = broken.call(TRIVIAL, "echo", {"x": 1})
    assert result.outcome == "infra_error" and "2 tries" in result.reason
