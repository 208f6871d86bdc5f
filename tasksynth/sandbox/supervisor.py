"""The supervisor inside a sandbox container: takes requests from the host over a unix socket and runs each
one in a forked child that has become the untrusted user. Standard library only; it is mounted read-only
into the container, imported by `/usr/bin/python3 -I -S -c ...` (isolated mode, no site: nothing the image or
the code under test installed is imported into a root process) and serves with `serve(SOCKET)`.

Who may talk to it: the socket sits in a host folder mounted into the container, and the supervisor serves
exactly one connection whose peer is outside the container's pid namespace (SO_PEERCRED reports pid 0 for
it): a process inside the container cannot issue requests even if it reached the socket. When that one
connection closes (the host process ended, even by SIGKILL) the supervisor exits and the container with it.

Privileges: the supervisor is root with SETUID, SETGID and SETPCAP only, and empties its own bounding set at
start (children inherit it empty). Every request that touches untrusted code or the untrusted user's files
forks a child that drops its groups, becomes UNTRUSTED_UID (which clears its permitted and effective
capabilities) and only then does the work.
Killing the untrusted user's processes is done the same way: a child that has become that uid calls
kill(-1, SIGKILL), which reaches every process of that uid and nothing else (not the root supervisor, not
pid 1), so the supervisor needs no KILL capability.

Wire format, both directions: a 4-byte big-endian length, then a JSON object. A `reset` request carries one
file descriptor (SCM_RIGHTS): the state master, opened read-only by the host.

Requests (`op`):
  ping                          -> {"ok": true}
  reset {state_name, modules}  + fd
                                -> every untrusted process killed, /work /tmp /dev/shm emptied, loaded
                                   modules forgotten (then `modules`, {name: source}, loaded as by `load`),
                                   the master copied to /work/<state_name> (owned by the untrusted user)
  load {name, source}           -> a module the following calls may import by name or call into
  call {source|module, function, args, limits}
                                -> {outcome, result, exception, stdout, stderr, seconds, reason}
  run {command, cwd, env, stdin, limits}
                                -> {outcome, exit_code, stdout, stderr, seconds, reason}
  read_file {path, max_bytes}   -> {data (base64), truncated} read as the untrusted user
  write_file {path, data, mode} -> written as the untrusted user
"""

from __future__ import annotations

import base64
import ctypes
import errno
import fcntl
import gc
import json
import linecache
import marshal
import os
import resource
import select
import selectors
import signal
import socket
import _socket  # socket's C layer: a reset child's socket pair without the Python wrappers
import stat
import struct
import sys
import time
import traceback

# Imported once here so that a forked call finds them already loaded: imported in a call's child they cost
# that call milliseconds (pathlib 9 ms, typing 7 ms: the general environments' harness imports both), kept
# here they cost each fork a little (every page held here is copied into, and unmapped from, each child).
import collections  # noqa: F401
import datetime  # noqa: F401
import decimal  # noqa: F401
import functools  # noqa: F401
import hashlib  # noqa: F401
import itertools  # noqa: F401
import math  # noqa: F401
import pathlib  # noqa: F401
import random  # noqa: F401
import re  # noqa: F401
import sqlite3  # noqa: F401
import statistics  # noqa: F401
import typing  # noqa: F401
import importlib.util  # not importlib.abc: it brings importlib.resources and more, 0.7 MB, unused

UNTRUSTED_UID = 1000
WORK = "/work"
SCRUBBED = ("/work", "/tmp", "/dev/shm", "/dev/mqueue")  # the untrusted user's writable places, emptied on reset
PATH = "/usr/local/bin:/usr/bin:/bin"
CALL_ENVIRONMENT = {"PATH": PATH, "HOME": WORK, "LANG": "C.UTF-8"}
CAP_LAST = 63
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
RESULT_FD = 3
REQUEST_FD = 4
FD_SPACE = socket.CMSG_SPACE(4 * 4)  # room for the file descriptors a request may carry
EXIT_TRUNCATED = 98
RESET_DONE = b"R"  # a reset child's confirmation that it reset the work folders
_libc = ctypes.CDLL(None, use_errno=True)
DEV_NULL = os.open(os.devnull, os.O_RDONLY)  # a call's stdin: opened once, for every child


# ------------------------------------------------------------------------------------------------ wire


# The JSON of the host connection goes straight through the json module's C encoder and scanner, made once:
# after each fork, every page the supervisor writes costs it a fault, and each Python layer writes some.
_encode_reply = (json.encoder.c_make_encoder(None, None, json.encoder.encode_basestring_ascii, None, ":", ",",
                                             False, False, True) if json.encoder.c_make_encoder else None)
_scan_request = json.scanner.c_make_scanner(json.decoder.JSONDecoder()) if json.scanner.c_make_scanner else None


def send_message(conn: socket.socket, message: dict) -> None:
    """Our replies hold only what JSON can hold (the results came to us as JSON), and no cycles."""
    text = "".join(_encode_reply(message, 0)) if _encode_reply else json.dumps(message, separators=(",", ":"))
    data = text.encode()
    conn.sendall(len(data).to_bytes(4, "big") + data)


def receive_message(conn: socket.socket) -> tuple[dict | None, list[int]]:
    """A request of the host and the file descriptors that came with its first bytes."""
    data, ancillary, _, _ = conn.recvmsg(65536, FD_SPACE)
    fds = received_fds(ancillary)
    if len(data) < 4:
        while 0 < len(data) < 4 and (more := conn.recv(4 - len(data))):
            data += more
        if len(data) < 4:
            return None, fds
    size = 4 + int.from_bytes(data[:4], "big")
    while len(data) < size:
        chunk = conn.recv(min(size - len(data), 1 << 20))
        if not chunk:
            return None, fds
        data += chunk
    text = data[4:size].decode()
    if _scan_request is None:
        return json.loads(text), fds
    try:
        message, end = _scan_request(text, 0)
    except StopIteration:  # what the scanner raises where no JSON value starts
        raise ValueError("the request is not JSON") from None
    if end != len(text):
        raise ValueError("trailing data after the request")
    return message, fds


def received_fds(ancillary: list) -> list[int]:
    fds: list[int] = []
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds += struct.unpack(f"{len(payload) // 4}i", payload[:len(payload) - len(payload) % 4])
    return fds


# ------------------------------------------------------------------------------------------- privileges


def bounding_caps() -> list[int]:
    """The capabilities in our bounding set (the container's: SUPERVISOR_CAPS), read once at start."""
    with open("/proc/self/status") as handle:
        line = next(line for line in handle if line.startswith("CapBnd:"))
    mask = int(line.split()[1], 16)
    return [cap for cap in range(CAP_LAST + 1) if mask >> cap & 1]


BOUNDING_CAPS: list[int] = []  # what a child must still drop itself (none once empty_own_bounding_set worked)
NO_NEW_PRIVS = False  # whether we have no_new_privs set (docker's no-new-privileges does it), so children too


def empty_own_bounding_set() -> None:
    """Once, in the supervisor: empty our bounding set and set no_new_privs. Both are inherited by every child,
    so a forked child need not do it again (four prctl calls, through ctypes, per call). Our own effective
    and permitted capabilities stay (the bounding set only limits what an exec could gain, and we never
    exec); a child loses them when it changes its uid. Whatever could not be dropped here, each child drops."""
    global BOUNDING_CAPS, NO_NEW_PRIVS
    for cap in bounding_caps():
        _libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0)
    NO_NEW_PRIVS = _libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0
    BOUNDING_CAPS = bounding_caps()


def become_untrusted(limits: dict | None = None, *, oom_first: bool = False) -> None:
    """In a forked child: from here on nothing of root is left. Limits are set first (as root, lowering only).
    `oom_first`: make the OOM killer take this process before the supervisor. It costs about 2 ms (the
    kernel walks every process), so calls skip it: their address space is limited below the container's
    memory, and the OOM killer takes the biggest process, which is theirs, not the supervisor's."""
    for cap in BOUNDING_CAPS:
        _libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0)
    if not NO_NEW_PRIVS:
        _libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
    if oom_first:
        try:
            with open("/proc/self/oom_score_adj", "w") as handle:
                handle.write("1000")
        except OSError:
            pass
    for name, value in (limits or {}).items():
        # CPU: SIGXCPU at the soft limit (a clear reason), SIGKILL a second later if it is caught.
        hard = value + 1 if name == "RLIMIT_CPU" else value
        resource.setrlimit(getattr(resource, name), (value, hard))
    os.setgroups([])
    os.setresgid(UNTRUSTED_UID, UNTRUSTED_UID, UNTRUSTED_UID)
    os.setresuid(UNTRUSTED_UID, UNTRUSTED_UID, UNTRUSTED_UID)


def call_rlimits(limits: dict) -> dict:
    return {"RLIMIT_CPU": int(limits["cpu_s"]), "RLIMIT_AS": int(limits["memory_bytes"]),
            "RLIMIT_NPROC": int(limits["processes"]), "RLIMIT_FSIZE": int(limits["file_size_bytes"])}


def fork() -> int:
    """os.fork(), waiting out a full pids cgroup: the untrusted processes' limit (RLIMIT_NPROC) is set below
    the container's, so room comes back, and the supervisor must never die of a fork bomb."""
    for attempt in range(500):
        try:
            return os.fork()
        except BlockingIOError:
            time.sleep(0.01)
    return os.fork()


def run_as_untrusted(work) -> int:
    """Run `work()` in a child that has become the untrusted user; its exit status."""
    pid = fork()
    if pid == 0:
        code = 1
        try:
            become_untrusted()
            code = work() or 0
        except BaseException:  # noqa: BLE001 - a child must never return into the supervisor's loop
            traceback.print_exc()
        os._exit(code)
    return os.waitpid(pid, 0)[1]


def wait_status(pid: int) -> int:
    return os.waitpid(pid, 0)[1]


def kill_untrusted(reap: int | None = None, wait=wait_status) -> int:
    """Kill every process of the untrusted user in this container, daemons and fork bombs included.
    `reap`: a process among them to reap with `wait` (a child of the fork server is reaped by it); its wait
    status is returned."""
    if reap is None and not untrusted_processes_left():
        return 0

    def sweep() -> int:
        # kill(-1) as the untrusted uid reaches all of its processes but ourselves. It reports success while
        # any other process exists (root's included), so whether any is left is read from /proc; a fork
        # bomb's children started during one pass are caught by the next.
        me = os.getpid()
        for _ in range(5000):
            os.kill(-1, signal.SIGKILL)
            if not untrusted_pids(exclude=me, living_only=True):
                return 0
            time.sleep(0.0005)
        return 1

    killer = fork()
    if killer == 0:
        code = 1
        try:
            become_untrusted()
            code = sweep()
        except BaseException:  # noqa: BLE001
            pass
        os._exit(code)
    status = wait(reap) if reap is not None else 0
    if os.waitpid(killer, 0)[1] != 0 and SUPERVISOR is not None:
        # Something of the run user would not die (a process stuck in the kernel): this container cannot
        # promise a clean next call; the host replaces it after this reply.
        SUPERVISOR.unusable = "a process of the run user could not be killed"
    return status


PIDS_CURRENT = ("/sys/fs/cgroup/pids.current", "/sys/fs/cgroup/pids/pids.current")
BASELINE_TASKS: int | None = None  # tasks in the container when no untrusted process runs (pid 1 and us)


_OPEN_FILES: dict[tuple[str, ...], int | None] = {}


def _read_first(paths: tuple[str, ...]) -> bytes | None:
    """The content of the first of these cgroup files that exists. Each is opened once and read with
    pread afterwards: these are read several times per call, and a Python open() costs more than the read."""
    if paths not in _OPEN_FILES:
        _OPEN_FILES[paths] = None
        for path in paths:
            try:
                _OPEN_FILES[paths] = os.open(path, os.O_RDONLY)
                break
            except OSError:
                continue
    fd = _OPEN_FILES[paths]
    return None if fd is None else os.pread(fd, 4096, 0)


def container_tasks() -> int | None:
    data = _read_first(PIDS_CURRENT)
    return None if data is None else int(data)


def untrusted_processes_left() -> bool:
    """Cheap when nothing is left: the container's task count is back at its baseline."""
    tasks = container_tasks()
    if tasks is not None and BASELINE_TASKS is not None and tasks <= BASELINE_TASKS:
        return False
    return bool(untrusted_pids())


def untrusted_pids(exclude: int = 0, living_only: bool = False) -> list[int]:
    """Processes of the untrusted uid, read from /proc/PID/status: unlike the ownership of /proc/PID, it cannot
    be hidden (a process that makes itself non-dumpable shows as root's there). `living_only` leaves out
    zombies, which run nothing and wait for their parent (pid 1 or us) to reap them."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == exclude:
            continue
        try:
            with open(f"/proc/{entry.name}/status") as handle:
                status = handle.read()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        if str(UNTRUSTED_UID) in fields.get("Uid", "").split():
            if not (living_only and fields.get("State", "").strip().startswith(("Z", "X"))):
                found.append(int(entry.name))
    return found


# ------------------------------------------------------------------------------------ limit accounting


def _counter(paths: tuple[str, ...], key: str) -> int:
    return _parse_counter(_read_first(paths), key)


def _parse_counter(data: bytes | None, key: str) -> int:
    for line in (data or b"").decode().splitlines():
        name, _, value = line.partition(" ")
        if name == key:
            return int(value)
    return 0


PIDS_EVENTS = ("/sys/fs/cgroup/pids.events", "/sys/fs/cgroup/pids/pids.events")
MEMORY_EVENTS = ("/sys/fs/cgroup/memory.events", "/sys/fs/cgroup/memory/memory.oom_control")


def pids_limit_hits() -> int:
    """How often a fork was refused by the container's pids limit (cgroup v2 or v1)."""
    return _counter(PIDS_EVENTS, "max")


def oom_kills() -> int:
    return _counter(MEMORY_EVENTS, "oom_kill")


class LimitEvents:
    """The container's pids and memory event counters when a run started, to tell afterwards whether it hit
    either limit. Kept as read; parsed only if they changed (almost never: a call must not pay for it)."""

    def __init__(self):
        self.pids, self.memory = _read_first(PIDS_EVENTS), _read_first(MEMORY_EVENTS)

    def pids_hit(self) -> bool:
        now = _read_first(PIDS_EVENTS)
        return now != self.pids and _parse_counter(now, "max") > _parse_counter(self.pids, "max")

    def oom_killed(self) -> bool:
        now = _read_first(MEMORY_EVENTS)
        return now != self.memory and _parse_counter(now, "oom_kill") > _parse_counter(self.memory, "oom_kill")


# ---------------------------------------------------------------------------------------- running a child


class CappedStreams:
    """Reads a child's output pipes as they fill, keeping at most `cap` bytes of each: nothing larger is
    ever held in memory. A stream that goes over its cap stops the run (`output_capped`). A plain poll set,
    not a selector: no descriptor of its own and no per-call set-up, for the call path's sake. A pipe is read
    only when poll says it is readable, so a read never blocks (only we hold the reading ends)."""

    def __init__(self, fds: dict[str, int], cap: int, caps: dict[str, int] | None = None):
        self.cap = cap
        self.caps = {name: (caps or {}).get(name, cap) for name in fds}  # per stream: `cap` unless given
        self.data = {name: bytearray() for name in fds}
        self.names = {fd: name for name, fd in fds.items()}  # the streams still open
        self.over: str | None = None
        self.poller = select.poll()
        for fd in fds.values():
            self.poller.register(fd, select.POLLIN)

    @property
    def open(self) -> bool:
        return bool(self.names)

    def pump(self, timeout: float) -> None:
        for fd, _ in self.poller.poll(max(timeout, 0) * 1000):
            self.read(fd)

    def read(self, fd: int) -> None:
        name = self.names.get(fd)
        if name is None:
            return
        chunk = os.read(fd, 65536)
        if not chunk:
            self.poller.unregister(fd)
            del self.names[fd]
            os.close(fd)
            return
        buffer = self.data[name]
        room = self.caps[name] - len(buffer)
        buffer += chunk[:max(room, 0)]
        if len(chunk) > room and self.over is None:
            self.over = name

    def close(self) -> None:
        for fd in self.names:
            self.poller.unregister(fd)
            os.close(fd)
        self.names.clear()

    def text(self, name: str) -> str:
        return self.data[name].decode("utf-8", errors="replace")


def supervise(pid: int, streams: CappedStreams, timeout_s: float, wait=wait_status) -> tuple[int, str | None]:
    """Wait for the process `pid` while reading its output; stop it on timeout or output over the cap.
    Returns its wait status (`wait` reaps it) and why it was stopped (None: it ended by itself). A pidfd
    tells when it ended: that works for a child of the fork server too, a zombie until it is reaped."""
    deadline = time.monotonic() + timeout_s
    pidfd = os.pidfd_open(pid)
    streams.poller.register(pidfd, select.POLLIN)
    stopped = None
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                stopped = "timeout"
                break
            exited = False
            for fd, _ in streams.poller.poll(remaining * 1000):
                if fd == pidfd:
                    exited = True
                    continue
                streams.read(fd)
            if streams.over:
                stopped = "output_capped"
                break
            if exited:
                break
    finally:
        streams.poller.unregister(pidfd)
        os.close(pidfd)
    if stopped:
        # The child and everything it started go at once; the supervisor reaps the child meanwhile.
        status = kill_untrusted(reap=pid, wait=wait)
    else:
        status = wait(pid)
        # Whatever the child left behind (daemons, a fork bomb) goes too, which also closes the pipes.
        kill_untrusted()
    drain_deadline = time.monotonic() + 2
    while streams.open and time.monotonic() < drain_deadline:
        streams.pump(0.05)
    streams.close()
    return status, stopped


def classify(status: int, stopped: str | None, limits: dict, events: LimitEvents,
             streams: CappedStreams) -> tuple[str, str]:
    """The outcome caused by the code and a one-line reason (ok has an empty reason)."""
    if events.pids_hit():
        return "pids", f"the process limit was reached ({limits.get('processes', '?')} processes per call)"
    if stopped == "timeout":
        return "timeout", f"still running after {limits['timeout_s']:g} s (wall clock); killed"
    if stopped == "output_capped":
        if streams.over == "result":
            return "output_capped", f"the result is larger than {streams.cap} bytes; stopped"
        return "output_capped", f"wrote more than {streams.cap} bytes on {streams.over}; stopped"
    if events.oom_killed():
        return "oom", "killed by the container's out-of-memory killer"
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        if sig == signal.SIGXCPU:
            return "timeout", f"used more than {limits.get('cpu_s', '?')} s of CPU time; killed"
        if sig == signal.SIGXFSZ:
            return "file_size", "wrote a file larger than the file size limit"
        return "killed", f"killed by signal {signal.Signals(sig).name}"
    return "ok", ""


# -------------------------------------------------------------------------------------------- requests


class Supervisor:
    def __init__(self) -> None:
        # Sources, compiled only in the untrusted child: the root supervisor never parses code.
        self.modules: dict[str, str] = {}
        self.state_name = "state.sqlite"
        self.ready: CallChild | None = None  # the child that did the attempt's reset, waiting for the first call
        self.unusable = ""  # why this container must not serve another request, once that is so
        self.service: Service | None = None  # a long-lived process of the untrusted user (a kernel's driver)
        self.sources_seen: set[int] = set()  # hashes of the sources calls ran (see _seen_before)

    def forget_ready_child(self) -> None:
        """The reset's child, unused: before anything that kills the run user's processes or runs something
        else as that user."""
        if self.ready is not None:
            self.ready.discard()
            self.ready = None

    def handle(self, request: dict, fds: list[int]) -> dict:
        op = request.get("op")
        try:
            if op in ("reset", "run", "read_file", "write_file", "service_start"):
                self.forget_ready_child()
            if op in ("reset", "run", "service_start", "service_stop"):
                # A command's or a reset's sweep kills every process of the run user: the service first,
                # so that it is reaped and its pipes closed here, not left a zombie.
                self.stop_service()
            return self._handle(op, request, fds)
        except Exception as exc:  # noqa: BLE001 - the supervisor outlives any one request
            return {"ok": False, "error": f"supervisor failed on {op}: {type(exc).__name__}: {exc}"}
        finally:
            for fd in fds:
                os.close(fd)

    def _handle(self, op: str, request: dict, fds: list[int]) -> dict:
        if op == "ping":
            return {"ok": True}
        if op == "reset":
            return self.reset(request, fds)
        if op == "load":
            self.modules[request["name"]] = request["source"]
            return {"ok": True}
        if op == "service_stop":
            return {"ok": True}
        handler = {"call": self.call, "run": self.run, "read_file": self.read_file,
                   "write_file": self.write_file, "service_start": self.service_start,
                   "service_call": self.service_call}.get(op)
        return handler(request) if handler else {"ok": False, "error": f"unknown op {op!r}"}

    # ---- state

    def reset(self, request: dict, fds: list[int]) -> dict:
        self.forget_ready_child()
        self.modules.clear()
        # COMPILED and sources_seen stay: the same toolkit and verifier run again in the next attempts, and
        # a child only ever gets the kept code of what its own call runs (see COMPILED).
        master = fds[0] if fds else None
        name = self.state_name = os.path.basename(request.get("state_name") or "state.sqlite")
        # A child forked now, when nothing of the previous attempt is left in our memory but freed bytes,
        # does the reset and then waits for the attempt's first call: a reset has no process of its own. One
        # that does not confirm (it died) is replaced once.
        for _ in range(2):
            kill_untrusted()
            ready = CallChild()
            if ready.reset(name, master):
                break
            ready.discard()
        else:
            return {"ok": False, "error": "could not reset the work folder"}
        self.ready = ready
        self.modules.update(request.get("modules") or {})  # the attempt's modules, without a round trip each
        os.environ["SANDBOX_STATE"] = os.path.join(WORK, name)  # inherited by the calls' children
        return {"ok": True}

    # ---- function calls

    def call(self, request: dict) -> dict:
        limits = request["limits"]
        if request.get("module") and request["module"] not in self.modules:
            return {"ok": False, "error": f"no module {request['module']!r} is loaded"}
        child, self.ready = self.ready, None
        events = LimitEvents()
        started = time.monotonic()
        # What the attempt loaded travels with the request (a module loaded after the reset as well).
        key = compiled_key(request, self.modules)
        ship = key not in COMPILED and (bool(request.get("module")) or self._seen_before(key))
        request = {**request, "modules": self.modules, "state_name": self.state_name, "ship": ship,
                   "code": self._kept_code_for(request)}
        try:
            if child is None:  # forked now, with its request in the memory it starts with
                child = CallChild(request)
            elif not child.send(request):  # the reset's child died while it waited (the OOM killer did)
                child.discard()
                child = CallChild(request)
        except ForkServerGone as exc:
            return {"ok": True, "outcome": "sandbox_crash", "reason": str(exc), "seconds": 0.0, "result": None,
                    "exception": None, "stdout": "", "stderr": ""}
        cap = int(limits["output_cap"])
        # The result pipe carries the compiled code a child may ship (see _ship_compiled), then the result:
        # whether the result is over the cap is decided here, from what was read, never by the child.
        streams = CappedStreams({"stdout": child.out_r, "stderr": child.err_r, "result": child.res_r}, cap,
                                {"result": 4 + shipped_code_max(limits) + cap})
        status, stopped = supervise(child.pid, streams, float(limits["timeout_s"]), child.wait)
        seconds = time.monotonic() - started
        outcome, reason = classify(status, stopped, limits, events, streams)
        reply = {"ok": True, "outcome": outcome, "reason": reason, "seconds": seconds, "result": None,
                 "exception": None, "stdout": streams.text("stdout"), "stderr": streams.text("stderr")}
        if outcome == "ok":
            compiled, raw = split_compiled(bytes(streams.data["result"]))
            if len(raw) > cap:
                reply.update(outcome="output_capped", reason=f"the result is larger than {cap} bytes")
                return reply
            if ship and compiled is not None:
                self._keep_compiled(key, compiled)
            try:
                payload = json.loads(raw or b"null")
            except ValueError:
                payload = None
            if not isinstance(payload, dict):
                reply.update(outcome="killed", reason=f"ended (status {status}) without returning a result")
                return reply
            reply["result"] = payload.get("result")
            if payload.get("exception"):
                exc = payload["exception"]
                reply["exception"] = exc
                reply["outcome"], reply["reason"] = _exception_outcome(exc, limits)
        return reply

    def _seen_before(self, key: tuple[str, str]) -> bool:
        """Whether a call ran this source before, in this attempt or an earlier one (then its compiled code is
        worth keeping); notes it if not. A source run once (a solution) costs no more than a compile in its
        own child; a verifier runs again in every attempt of its task. A loaded module is kept from its first
        call: it is loaded to be called."""
        digest = hash(key)
        if digest in self.sources_seen:
            return True
        if len(self.sources_seen) > 4 * COMPILED_MAX_ENTRIES:
            self.sources_seen.clear()
        self.sources_seen.add(digest)
        return False

    def _kept_code_for(self, request: dict) -> dict[str, bytes]:
        """The kept compiled code a call may use, by file name: its own source's and the attempt's modules'.
        It goes with the request: the child is forked from the fork server, which holds none of it."""
        keys = [compiled_key(request, self.modules)]
        keys += [(f"<module {name}>", source) for name, source in self.modules.items()]
        return {key[0]: COMPILED[key] for key in keys if key in COMPILED}

    @staticmethod
    def _keep_compiled(key: tuple[str, str], compiled: bytes) -> None:
        size = sum(len(data) for data in COMPILED.values())
        if len(COMPILED) >= COMPILED_MAX_ENTRIES or size + len(compiled) > COMPILED_MAX_BYTES:
            COMPILED.clear()  # an attempt that runs this much different code gains little from keeping it
        COMPILED[key] = compiled

    # ---- shell commands (sessions)

    def run(self, request: dict) -> dict:
        limits = request["limits"]
        stdin = base64.b64decode(request.get("stdin") or "")
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        in_r, in_w = os.pipe()
        events = LimitEvents()
        started = time.monotonic()
        pid = fork()
        if pid == 0:
            _exec_untrusted(limits, request, "/bin/sh", ["sh", "-c", request["command"]], (in_r, out_w, err_w),
                            (signal.SIGXFSZ, signal.SIGPIPE))
        for fd in (out_w, err_w, in_r):
            os.close(fd)
        _feed_stdin(in_w, stdin)
        streams = CappedStreams({"stdout": out_r, "stderr": err_r}, int(limits["output_cap"]))
        status, stopped = supervise(pid, streams, float(limits["timeout_s"]))
        outcome, reason = classify(status, stopped, limits, events, streams)
        exit_code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else -os.WTERMSIG(status)
        return {"ok": True, "outcome": outcome, "reason": reason, "exit_code": exit_code,
                "seconds": time.monotonic() - started, "stdout": streams.text("stdout"),
                "stderr": streams.text("stderr")}

    # ---- a long-lived service (sessions): one process of the run user that outlives a request

    def service_start(self, request: dict) -> dict:
        """Start `argv` as the run user (its own session, the file-size and process limits, first for the OOM
        killer), stdin and stdout pipes kept here, stderr discarded. It lives until the next reset, run,
        service_start or service_stop, or until it exits."""
        limits = request["limits"]
        in_r, in_w = os.pipe()
        out_r, out_w = os.pipe()
        pid = fork()
        if pid == 0:
            argv = [str(part) for part in request["argv"]]
            _exec_untrusted(limits, request, argv[0], argv, (in_r, out_w, None), (signal.SIGPIPE,))
        os.close(in_r)
        os.close(out_w)
        self.service = Service(pid, in_w, out_r)
        return {"ok": True, "pid": pid}

    def service_call(self, request: dict) -> dict:
        """Write one line to the service's stdin and read one line back, within `timeout_s` and `output_cap`
        bytes. A service that does not answer in time or floods is killed (`timeout`, `output_capped`); one
        that ended is `service_gone` (`oom` when the out-of-memory killer took it)."""
        service = self.service
        if service is None:
            return {"ok": True, "outcome": "service_gone", "reason": "no service is running", "line": ""}
        ooms_before = oom_kills()
        outcome, line = service.exchange(request["line"].encode(), float(request["timeout_s"]),
                                         int(request["output_cap"]))
        if outcome == "ok":
            return {"ok": True, "outcome": "ok", "reason": "", "line": line}
        status = self.stop_service()
        if outcome == "service_gone" and oom_kills() > ooms_before:
            outcome, reason = "oom", "the service was killed by the container's out-of-memory killer"
        else:
            reason = {"timeout": f"no answer within {float(request['timeout_s']):g} s; killed",
                      "output_capped": f"answered more than {int(request['output_cap'])} bytes; killed",
                      "service_gone": f"the service ended (status {status})"}[outcome]
        return {"ok": True, "outcome": outcome, "reason": reason, "line": ""}

    def stop_service(self) -> int:
        """Kill the service and everything of the run user with it; its wait status (0 when none ran)."""
        service, self.service = self.service, None
        if service is None:
            return 0
        os.close(service.in_w)
        os.close(service.out_r)
        return kill_untrusted(reap=service.pid)

    # ---- files, always as the untrusted user (so a link it planted leads nowhere it could not go itself)

    def read_file(self, request: dict) -> dict:
        r, w = os.pipe()
        pid = fork()
        if pid == 0:
            code = 1
            try:
                os.close(r)
                become_untrusted()
                flags = os.O_RDONLY | (os.O_NOFOLLOW if request.get("no_follow") else 0)
                fd = os.open(request["path"], flags | os.O_NONBLOCK)  # a FIFO must not block us
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    raise IsADirectoryError(errno.EISDIR, "not a regular file")
                os.set_blocking(fd, True)
                left = int(request["max_bytes"])
                while left > 0 and (chunk := os.read(fd, min(left, 1 << 20))):
                    os.write(w, chunk)
                    left -= len(chunk)
                code = EXIT_TRUNCATED if os.read(fd, 1) else 0
            except OSError as exc:
                os.write(w, f"{type(exc).__name__}: {exc.strerror or exc}".encode()[:500])
            os._exit(code)
        os.close(w)
        streams = CappedStreams({"data": r}, int(request["max_bytes"]))
        status, stopped = supervise(pid, streams, 30)
        code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else None
        if stopped or code not in (0, EXIT_TRUNCATED):
            return {"ok": True, "error": streams.text("data") or "could not read the file"}
        return {"ok": True, "data": base64.b64encode(bytes(streams.data["data"])).decode(),
                "truncated": code == EXIT_TRUNCATED}

    def write_file(self, request: dict) -> dict:
        data = base64.b64decode(request["data"])
        mode = int(request.get("mode", 0o644))

        def write() -> int:
            fd = os.open(request["path"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
            with os.fdopen(fd, "wb") as out:
                out.write(data)
            os.chmod(request["path"], mode)
            return 0

        status = run_as_untrusted(write)
        return {"ok": True} if status == 0 else {"ok": True, "error": f"could not write {request['path']}"}


class Service:
    """A running service's pid and pipes; what it wrote past the last line is kept for the next call."""

    def __init__(self, pid: int, in_w: int, out_r: int):
        self.pid, self.in_w, self.out_r = pid, in_w, out_r
        self.pending = bytearray()
        os.set_blocking(out_r, False)

    def exchange(self, line: bytes, timeout_s: float, cap: int) -> tuple[str, str]:
        deadline = time.monotonic() + timeout_s
        try:
            _write_all(self.in_w, line.replace(b"\n", b" ") + b"\n", deadline)
        except (BrokenPipeError, TimeoutError):
            return "service_gone", ""
        with selectors.DefaultSelector() as selector:
            selector.register(self.out_r, selectors.EVENT_READ)
            while b"\n" not in self.pending:
                if len(self.pending) > cap:
                    return "output_capped", ""
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return "timeout", ""
                if not selector.select(remaining):
                    continue
                try:
                    chunk = os.read(self.out_r, 65536)
                except BlockingIOError:
                    continue
                if not chunk:
                    return "service_gone", ""
                self.pending += chunk
        end = self.pending.index(b"\n")
        if end > cap:
            return "output_capped", ""
        answer = bytes(self.pending[:end])
        del self.pending[:end + 1]
        return "ok", answer.decode("utf-8", errors="replace")


def _write_all(fd: int, data: bytes, deadline: float) -> None:
    """Blocking writes in a loop, bounded by `deadline` (a service that stopped reading cannot hang us)."""
    view = memoryview(data)
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_WRITE)
        os.set_blocking(fd, False)
        while view:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            if not selector.select(remaining):
                continue
            try:
                written = os.write(fd, view)
            except BlockingIOError:
                continue
            view = view[written:]


def _feed_stdin(fd: int, data: bytes) -> None:
    """Write the command's stdin (bounded by the host) and close it; a reader that never reads gets EOF."""
    try:
        os.set_blocking(fd, False)
        view = memoryview(data)
        deadline = time.monotonic() + 5
        while view and time.monotonic() < deadline:
            try:
                view = view[os.write(fd, view):]
            except BlockingIOError:
                time.sleep(0.001)
    except BrokenPipeError:
        pass
    finally:
        os.close(fd)


def _exception_outcome(exc: dict, limits: dict) -> tuple[str, str]:
    line = f"{exc['type']}: {exc['message']}"[:500]
    if exc["type"] == "MemoryError":
        return "oom", f"ran out of memory (address space limit {limits['memory_bytes']} bytes): {line}"
    number = exc.get("errno")
    if number == errno.EAGAIN and exc["type"] in ("BlockingIOError", "OSError"):
        return "pids", f"could not start another process: {line}"
    if number == errno.EFBIG:
        return "file_size", f"wrote a file larger than {limits['file_size_bytes']} bytes: {line}"
    if number in (errno.ENOSPC, errno.EDQUOT):
        return "disk_full", f"the work folder is full: {line}"
    return "exception", line


def _remove_sysv_ipc() -> None:
    """System V shared memory, queues and semaphores outlive their processes: the run user's go on reset,
    so that nothing passes from one attempt to the next (POSIX queues live in /dev/mqueue, emptied above)."""
    for kind, remove in (("shm", lambda i: _libc.shmctl(i, 0, None)), ("msg", lambda i: _libc.msgctl(i, 0, None)),
                         ("sem", lambda i: _libc.semctl(i, 0, 0))):  # 0: IPC_RMID
        try:
            fd = os.open(f"/proc/sysvipc/{kind}", os.O_RDONLY)
        except OSError:
            continue
        try:
            table = b"".join(iter(lambda: os.read(fd, 65536), b""))
        finally:
            os.close(fd)
        for row in table.splitlines()[1:]:
            remove(int(row.split()[1]))


def reset_work(master: int | None, name: str) -> int:
    """As the run user, with none of its processes left: empty its writable places and its System V IPC, and
    copy the state master (an open file) to /work/NAME."""
    for top in SCRUBBED:
        _empty_folder(top)
    _remove_sysv_ipc()
    if master is not None:
        copy_file(master, os.path.join(WORK, name))
    return 0


def copy_file(source_fd: int, path: str) -> None:
    """Copy an open file to `path` inside the kernel (sendfile: no buffer of ours, no page of it to fault in);
    read and write where the kernel refuses (a file system that cannot be a sendfile source)."""
    out = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
    try:
        size, offset = os.fstat(source_fd).st_size, 0
        try:
            while offset < size and (sent := os.sendfile(out, source_fd, offset, size - offset)):
                offset += sent
        except OSError as exc:
            if exc.errno not in (errno.EINVAL, errno.ENOSYS) or offset:
                raise
            os.lseek(source_fd, 0, os.SEEK_SET)
            while chunk := os.read(source_fd, 1 << 20):
                view = memoryview(chunk)
                while view:
                    view = view[os.write(out, view):]
    finally:
        os.close(out)


def _empty_folder(top: str) -> None:
    try:
        entries = list(os.scandir(top))
    except OSError:
        return
    for entry in entries:
        try:
            if entry.is_dir(follow_symlinks=False):
                os.chmod(entry.path, 0o700)  # our own folder, even if the code took its permissions away
                _empty_folder(entry.path)
                os.rmdir(entry.path)
            else:
                os.unlink(entry.path)
        except OSError:
            continue


class _LoadedModules:
    """Lets a call `import` the modules loaded for this attempt, executing each at most once per call. A
    meta path finder and loader by their methods (importlib only calls these)."""

    def __init__(self, sources: dict[str, str]):
        self.sources = sources  # a call's child sets the modules of its attempt

    def find_spec(self, name, path=None, target=None):
        return importlib.util.spec_from_loader(name, self) if name in self.sources else None

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        exec(compile_source(self.sources[module.__name__], f"<module {module.__name__}>"), module.__dict__)


SUPERVISOR: Supervisor | None = None
FORK_SERVER: "ForkServer | None" = None
# Lets a call's code import the attempt's loaded modules. Installed once (prepare_for_calls) with no modules,
# so that a child only fills it in; the supervisor itself imports nothing once it serves.
LOADED_MODULES = _LoadedModules({})

# Compiled code of the sources an attempt's calls run again and again (its modules, a harness called for each
# tool call), marshalled, keyed by (file name, source): a call's request carries the entries of the code it
# runs (its own source, its attempt's modules) and its child unmarshals them instead of compiling. The
# supervisor (root) only stores these bytes; they are made, and read, by untrusted children
# (`_ship_compiled`). Kept across attempts: children are forked from the fork server, which never holds
# any of it, so an attempt finds only the code of the sources it sends itself (a verifier's answer, kept
# here, reaches no call but that verifier's). Bounded: emptied when it grows too big.
COMPILED: dict[tuple[str, str], bytes] = {}
COMPILED_MAX_BYTES = 4 * 1024 * 1024  # the supervisor's memory for it
COMPILED_MAX_ENTRIES = 256
_CHILD_CODE: dict[tuple[str, str], object] = {}  # in a call's child: code objects of this call
_SOURCES: dict[str, str] = {}  # in a call's child: the sources it compiled, by file name (for tracebacks)
_RESULT_PREFIX = [b"\0\0\0\0"]  # in a call's child: what goes before the result (no code: a zero length)


class CallChild:
    """The process of one call, forked by the fork server (see ForkServer) when the call's request has
    arrived: it finds the request in the memory it starts with, becomes the untrusted user and runs it.
    Without a request it is the child of an attempt's reset: it waits on a socket, empties the work folders
    and copies the master it is handed when told, and then waits there for the attempt's first call. It is
    forked only when no untrusted process is left (after the previous sweep), and holds nothing but its own
    pipes, the memory the fork server started with, and its request.

    Forked in advance (after the previous reply, as it once was), a child is off a call's critical path
    (about 0.4 ms), but it costs more CPU (the supervisor's writes while it waits copy pages), and the reset's
    child could not be the first call's too without carrying what was there before the reset."""

    def __init__(self, request: dict | None = None):
        if FORK_SERVER is None:
            raise ForkServerGone("the container's fork server is gone; the container is replaced")
        self.out_r, out_w = os.pipe()
        self.err_r, err_w = os.pipe()
        self.res_r, res_w = os.pipe()
        ends = [out_w, err_w, res_w]
        if request is None:
            # A socket, not a pipe, for the requests: a reset hands it the state master's file descriptor.
            parent_end, child_end = _socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            self.request, self.request_w = parent_end, parent_end.fileno()
            ends.append(child_end.detach())
        else:
            self.request_w = -1
        try:
            self.pid = FORK_SERVER.fork(marshal.dumps(request) if request is not None else b"", ends)
        finally:
            for fd in ends:
                os.close(fd)
        self.wait = FORK_SERVER.wait

    def send(self, request: dict, fds: list[int] | None = None, *, last: bool = True) -> bool:
        """Write a request to the child. `last` (a call): nothing follows, the request socket is closed.
        In marshal: the child reads it with one C call (the host's JSON was parsed by us)."""
        data = marshal.dumps(request)
        try:
            frame = struct.pack(">I", len(data)) + data
            if fds:
                sent = self.request.sendmsg([frame], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                                        struct.pack(f"{len(fds)}i", *fds))])
            else:
                sent = os.write(self.request_w, frame)
            view = memoryview(frame)[sent:]
            while view:  # the child reads as we write: a request larger than the buffer does not block
                view = view[os.write(self.request_w, view):]
            return True
        except (BrokenPipeError, ConnectionResetError):
            return False
        finally:
            if last:
                self.close_request()

    def close_request(self) -> None:
        if self.request_w >= 0:
            self.request.close()
            self.request_w = -1

    def reset(self, state_name: str, master: int | None) -> bool:
        """Have it reset the work folders for the next attempt (see `reset_work`); it then waits for the
        attempt's first call. False when it did not confirm (it died, or the reset failed): discard it."""
        if not self.send({"op": "reset", "state_name": state_name}, [master] if master is not None else None,
                         last=False):
            return False
        try:
            return os.read(self.request_w, 1) == RESET_DONE
        except OSError:
            return False

    def discard(self) -> int:
        """Unused: closing its request socket makes it exit by itself. Its wait status."""
        self.close_request()
        for fd in (self.out_r, self.err_r, self.res_r):
            os.close(fd)
        return self.wait(self.pid)


class ForkServerGone(RuntimeError):
    """The fork server died (nothing of the run user can kill it; the out-of-memory killer could)."""


class ForkServer:
    """The process every call's child is forked from: root, forked from the supervisor once at start, before
    any request, and holding nothing of any attempt. A child of the supervisor itself would start with the
    supervisor's memory, freed memory included, where the requests of earlier attempts lie (a verifier's
    source with its expected answer, say) for the code under test to read (its own memory is readable to
    it); a child of the fork server starts with the fork server's, which never held any of them, plus its
    own request. It also spares the supervisor's own writes the page faults a fork leaves behind.

    Protocol over a socket pair (one request at a time): `F`, a 4-byte length and that many bytes of a
    call's request (marshal; none for a reset's child), with the child's pipe ends (and for a reset's child
    its request socket) as SCM_RIGHTS -> the child's pid (4 bytes; -1 when the fork failed). `W` and a pid
    -> that child reaped, its wait status (4 bytes). Should the fork server die, the container cannot
    serve calls again and is replaced (`ForkServerGone`)."""

    def __init__(self):
        ours, theirs = _socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        gc.freeze()  # see CallChild: what exists now is never collected in a child
        self.pid = fork()
        if self.pid == 0:
            ours.close()
            _serve_forks(theirs)  # never returns
        theirs.close()
        self.socket = ours

    def fork(self, request: bytes, ends: list[int]) -> int:
        try:
            self.socket.sendmsg([b"F" + len(request).to_bytes(4, "big"), request],
                               [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack(f"{len(ends)}i", *ends))])
            pid = self._answer()
        except OSError:
            pid = None
        if pid is None:
            self.lost()
        if pid is None or pid < 0:
            raise ForkServerGone("the container's fork server could not fork a call's process")
        return pid

    def wait(self, pid: int) -> int:
        """Reap a child of the fork server: its wait status (0 when the fork server is gone)."""
        try:
            self.socket.sendall(b"W" + pid.to_bytes(4, "big"))
            status = self._answer()
        except OSError:
            status = None
        if status is None:
            self.lost()
            return 0
        return status

    def _answer(self) -> int | None:
        data = b""
        while len(data) < 4:
            chunk = self.socket.recv(4 - len(data))
            if not chunk:
                return None
            data += chunk
        return int.from_bytes(data, "big", signed=True)

    def lost(self) -> None:
        """It died: reap it and count it out of the container's baseline of tasks; the reply that finds this
        out says the container is unusable, and the host replaces it."""
        global FORK_SERVER, BASELINE_TASKS
        if FORK_SERVER is self:
            FORK_SERVER = None
            self.socket.close()
            os.waitpid(self.pid, 0)
            if BASELINE_TASKS is not None:
                BASELINE_TASKS -= 1
            if SUPERVISOR is not None:
                SUPERVISOR.unusable = "the container's fork server died"


def _serve_forks(requests) -> None:
    """The fork server's loop (see ForkServer). A request's bytes go into one buffer, zeroed again once the
    child is forked: what this process holds after a fork is what it held at start."""
    buffer = bytearray(1 << 16)
    status = 0
    try:
        while True:
            head, ancillary, _, _ = requests.recvmsg(5, FD_SPACE)
            fds = received_fds(ancillary)
            while head and len(head) < 5 and (more := requests.recv(5 - len(head))):
                head += more
            if len(head) < 5:
                break  # the supervisor is gone
            value = int.from_bytes(head[1:], "big")
            if head[:1] == b"W":
                requests.sendall(os.waitpid(value, 0)[1].to_bytes(4, "big", signed=True))
                continue
            if value > len(buffer):
                buffer[:] = bytes(len(buffer))
                buffer = bytearray(value)
            view = memoryview(buffer)
            got = 0
            while got < value and (n := requests.recv_into(view[got:value])):
                got += n
            try:
                pid = fork() if got == value and head[:1] == b"F" and len(fds) in (3, 4) else -1
            except OSError:
                pid = -1
            if pid == 0:
                request = marshal.loads(view[:value]) if value else None
                _call_child(fds[3] if len(fds) == 4 else -1, fds[0], fds[1], fds[2], request)  # never returns
            view[:value] = bytes(value)
            view.release()
            for fd in fds:
                os.close(fd)
            requests.sendall(pid.to_bytes(4, "big", signed=True))
    except BaseException:  # noqa: BLE001 - a forked process must never return into the supervisor's loop
        status = 1
    os._exit(status)


def _exec_untrusted(limits: dict, request: dict, path: str, argv: list[str], stdio: tuple[int, int, int | None],
                    default_signals: tuple[int, ...]) -> None:
    """In a forked child: become the run user (its own session, the file-size and process limits, first for
    the OOM killer) and exec `argv` on `stdio` (stderr None: discarded), in the request's folder and
    environment. Never returns."""
    try:
        if stdio[2] is None:
            stdio = (stdio[0], stdio[1], os.open(os.devnull, os.O_WRONLY))
        os.setsid()
        become_untrusted({"RLIMIT_FSIZE": int(limits["file_size_bytes"]),
                          "RLIMIT_NPROC": int(limits["processes"])}, oom_first=True)
        for target, fd in enumerate(stdio):
            os.dup2(fd, target)
        os.closerange(3, 1 << 16)
        os.chdir(request.get("cwd") or WORK)
        for sig in default_signals:
            signal.signal(sig, signal.SIG_DFL)
        env = {"PATH": PATH, "HOME": WORK, "LANG": "C.UTF-8", **(request.get("env") or {})}
        os.execve(path, argv, env)
    except BaseException:  # noqa: BLE001 - nothing may escape a forked child; stderr is the run's (or nowhere)
        traceback.print_exc()
    os._exit(127)


def _read_request(sock: socket.socket) -> tuple[dict | None, list[int]]:
    """In a reset's child: the next request from the supervisor (a 4-byte length, then marshal: only the
    supervisor writes here) and the file descriptors that came with its first bytes (a reset's master).
    Straight on the socket's C methods: every line of Python a child runs costs it pages to copy."""
    data, ancillary, _, _ = sock.recvmsg(65536, FD_SPACE)
    fds = received_fds(ancillary)
    if len(data) < 4:
        return None, fds
    size = 4 + int.from_bytes(data[:4], "big")
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            return None, fds
        data += chunk
    return marshal.loads(data[4:size]), fds


def _set_call_limits(limits: dict) -> None:
    """As the untrusted user: limits can only be lowered, never above the container's (its hard limits, read
    once by the supervisor: HARD_LIMITS)."""
    setrlimit = resource.setrlimit
    for (which, hard), value in zip(HARD_LIMITS, (int(limits["cpu_s"]), int(limits["memory_bytes"]),
                                                  int(limits["processes"]), int(limits["file_size_bytes"]))):
        # CPU: SIGXCPU at the soft limit (a clear reason), SIGKILL a second later if it is caught.
        top = value + 1 if which == resource.RLIMIT_CPU else value
        setrlimit(which, (value, top) if hard < 0 else (min(value, hard), min(top, hard)))


# The calls' limits and the container's hard limit of each (-1: none): RLIMIT_CPU, _AS, _NPROC, _FSIZE.
HARD_LIMITS = [(which, resource.getrlimit(which)[1]) for which in
               (resource.RLIMIT_CPU, resource.RLIMIT_AS, resource.RLIMIT_NPROC, resource.RLIMIT_FSIZE)]


def _call_child(request_r: int, out_w: int, err_w: int, res_w: int, request: dict | None = None) -> None:
    """The forked child of a call: becomes untrusted, waits for its request, sets its limits, runs the
    function and writes its JSON result to fd 3."""
    status = 1
    call_pid = os.getpid()
    try:
        # Move every pipe out of the way first: a source may sit where another one is to go (3 or 4).
        dup_high, dup2 = fcntl.fcntl, os.dup2
        out_w, err_w, res_w = (dup_high(out_w, fcntl.F_DUPFD, 64), dup_high(err_w, fcntl.F_DUPFD, 64),
                               dup_high(res_w, fcntl.F_DUPFD, 64))
        if request is None:
            dup2(dup_high(request_r, fcntl.F_DUPFD, 64), REQUEST_FD)
        dup2(out_w, 1)
        dup2(err_w, 2)
        dup2(res_w, RESULT_FD)
        dup2(DEV_NULL, 0)
        os.closerange(REQUEST_FD + 1, 1 << 16)  # the host connection and every other supervisor fd
        become_untrusted()
        os.chdir(WORK)
        # The environment (CALL_ENVIRONMENT) and sys.std* (line-buffered, on fds 0-2, which now are /dev/null
        # and our pipes) were set up once in the supervisor: done here they cost more than a small call.
        requests = _socket.socket(socket.AF_UNIX, socket.SOCK_STREAM, 0, REQUEST_FD) if request is None else None
        while requests is not None:
            request, fds = _read_request(requests)
            if request is None:
                os._exit(0)  # not needed after all
            if request.get("op") != "reset":
                break
            # The attempt's reset, done here and confirmed by one byte on the request socket; then this
            # process waits for the attempt's first call.
            reset_work(fds[0] if fds else None, request["state_name"])
            os.environ["SANDBOX_STATE"] = os.path.join(WORK, request["state_name"])
            for fd in fds:
                os.close(fd)
            os.write(REQUEST_FD, RESET_DONE)
        if requests is not None:
            requests.close()
        for filename, data in (request.get("code") or {}).items():
            COMPILED[(filename, request["source"] if filename == "<call>" else request["modules"][filename[8:-1]])] = data
        os.environ["SANDBOX_STATE"] = os.path.join(WORK, request["state_name"])
        LOADED_MODULES.sources = request["modules"]
        limits = request["limits"]
        _set_call_limits(limits)
        payload = _invoke(request)
        if os.getpid() != call_pid:
            os._exit(0)  # a process the function forked returned through here: only the call answers
        try:
            data = RESULT_ENCODER.encode(payload).encode()
        except (TypeError, ValueError, RecursionError) as exc:
            data = json.dumps(_exception_payload(exc)).encode()
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        # Whatever its size: the supervisor reads it under its cap and stops a result too large to hold.
        view = memoryview(_RESULT_PREFIX[0] + data)
        while view:
            view = view[os.write(RESULT_FD, view):]
        status = 0
    except BaseException:  # noqa: BLE001 - nothing may escape a forked child
        try:
            traceback.print_exc()
            sys.stderr.flush()
        except BaseException:  # noqa: BLE001
            pass
    os._exit(status)


def _invoke(request: dict) -> dict:
    try:
        limits = request["limits"]
        if request.get("module"):
            _ship_compiled(*compiled_key(request, request["modules"]), request.get("ship"), limits)
            namespace = _import_loaded(request["module"]).__dict__
        else:
            _ship_compiled(*compiled_key(request, {}), request.get("ship"), limits)
            namespace = {"__name__": "__sandbox__", "__builtins__": __builtins__}
            exec(compile_source(request["source"], "<call>"), namespace)
        function = namespace.get(request["function"])
        if not callable(function):
            raise NameError(f"no function {request['function']!r} is defined")
        args = request.get("args")
        result = function(**args) if isinstance(args, dict) else function(*(args or []))
        return {"result": result}
    except BaseException as exc:  # noqa: BLE001 - SystemExit and KeyboardInterrupt are the code's outcome too
        return _exception_payload(exc)


def _import_loaded(name: str):
    """The module a call calls into, as `import name` would give it. A loaded top-level module not imported
    yet (the usual case: a fresh child) is made and run directly, as the import system would: spec, module,
    sys.modules, its code; without the import system's search and locks, which each call would otherwise
    go through again (and copy the pages of)."""
    finder = LOADED_MODULES
    if "." in name or name in sys.modules or sys.meta_path[0] is not finder:
        return importlib.import_module(name)
    module = type(sys)(name)
    module.__loader__, module.__package__ = finder, ""
    module.__spec__ = type(sys.__spec__)(name, finder)  # a ModuleSpec, as spec_from_loader makes it
    sys.modules[name] = module
    try:
        finder.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


def compile_source(source: str, filename: str):
    """The code of `source`, in a call's child: compiled code the supervisor keeps for it (COMPILED) is
    unmarshalled, anything else compiled here. The source is noted so that a traceback shows its lines."""
    _SOURCES[filename] = source
    key = (filename, source)
    code = _CHILD_CODE.get(key)
    if code is None:
        data = COMPILED.get(key)
        code = _CHILD_CODE[key] = marshal.loads(data) if data is not None else compile(source, filename, "exec")
    return code


def compiled_key(request: dict, modules: dict) -> tuple[str, str]:
    """(file name, source) of the code a call request runs first: the module it calls into, or its source."""
    if request.get("module"):
        return f"<module {request['module']}>", modules[request["module"]]
    return "<call>", request["source"]


def _ship_compiled(filename: str, source: str, ship: bool, limits: dict) -> None:
    """In a call's child, before any code of the attempt has run: compile the call's own code and, when the
    supervisor asked for it (`ship`: it has seen this source before), send it the marshalled code first on
    the result pipe: a 4-byte length, then the bytes (length 0: nothing sent). Nothing of the attempt has
    run in this process yet, so the bytes are what the compiler made of the source; the code run afterwards
    cannot take back what is already in the pipe, and this pipe carries nothing else before the result.
    Not asked, the zero length goes out with the result (one write fewer): the supervisor then reads no
    code from this pipe, whatever the code wrote there."""
    data = b""
    try:
        code = compile_source(source, filename)
        if ship:
            data = marshal.dumps(code)
            if len(data) > shipped_code_max(limits):
                data = b""
    finally:
        if ship:
            view = memoryview(struct.pack(">I", len(data)) + data)
            _RESULT_PREFIX[0] = b""
            while view:
                view = view[os.write(RESULT_FD, view):]


def shipped_code_max(limits: dict) -> int:
    """The most bytes of compiled code a call's child ships ahead of its result."""
    return min(int(limits["output_cap"]) // 4, COMPILED_MAX_BYTES // 8)


def split_compiled(raw: bytes) -> tuple[bytes | None, bytes]:
    """The result pipe's content as (compiled code or None, the JSON result). Without a complete header and
    code the result is empty (the child ended early)."""
    if len(raw) < 4:
        return None, b""
    size = struct.unpack(">I", raw[:4])[0]
    if len(raw) < 4 + size:
        return None, b""
    return (raw[4:4 + size] or None), raw[4 + size:]


def _exception_payload(exc: BaseException) -> dict:
    for filename, source in _SOURCES.items():  # registered only now: most calls write no traceback
        linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename == __file__:
        tb = tb.tb_next  # the supervisor's own frames say nothing about the code
    return {"exception": {"type": type(exc).__name__, "message": str(exc)[:2000],
                          "errno": getattr(exc, "errno", None),
                          "traceback": "".join(traceback.format_exception(type(exc), exc, tb))[-8000:]}}


def _not_json(value):
    raise TypeError(f"the result holds a {type(value).__name__}, which is not JSON")


RESULT_ENCODER = json.JSONEncoder(default=_not_json)  # made once: each call's child only uses it


# ------------------------------------------------------------------------------------------------ main


def prepare_for_calls() -> None:
    """Once, before the first fork: whatever every call's child would otherwise do again, on memory it
    would then copy page by page. The environment and line-buffered sys.std* are the calls' own from here
    on (the supervisor never prints: nothing of it is buffered there). SQLite, JSON and marshal are used
    once on our own data, so that their library symbols are bound (lazy binding would resolve them again
    in each child) and their first-use set-up is done; then freed memory is returned."""
    os.environ.clear()
    os.environ.update(CALL_ENVIRONMENT)
    for stream in (sys.stdout, sys.stderr):
        if stream is not None:
            stream.reconfigure(line_buffering=True, errors="replace")
    path = "/tmp/.supervisor-warm-up.sqlite"
    try:
        with sqlite3.connect(path) as db:
            db.execute("create table t(id integer primary key, name text)")
            db.execute("create index t_name on t(name)")
            db.execute("insert into t(name) values (?)", ("x",))
        db.execute("select id, name from t where name = ? order by id", ("x",)).fetchall()
        db.close()
    except sqlite3.Error:
        pass
    finally:
        for leftover in (path, path + "-journal"):
            try:
                os.unlink(leftover)
            except OSError:
                pass
    json.loads(RESULT_ENCODER.encode({"warm": [1, 2.5, "up", None, True]}))
    sys.meta_path.insert(0, LOADED_MODULES)
    marshal.loads(marshal.dumps(compile("def warm(up):\n    return up\n", "<warm-up>", "exec")))
    # What start-up and imports left freed goes back to the kernel: every fork copies, and every exit
    # unmaps, each page we hold (about 1 MB fewer).
    gc.collect()
    _libc.malloc_trim(0)


def serve(socket_path: str, accept_timeout_s: float = 120) -> None:
    global SUPERVISOR, BASELINE_TASKS, FORK_SERVER
    SUPERVISOR = Supervisor()
    prepare_for_calls()
    empty_own_bounding_set()
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    FORK_SERVER = ForkServer()
    BASELINE_TASKS = container_tasks()
    try:
        os.unlink(socket_path)
    except FileNotFoundError:
        pass
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(socket_path)
    os.chmod(socket_path, 0o666)  # reachable only through the host folder; peers are checked below
    listener.listen(4)
    listener.settimeout(accept_timeout_s)
    deadline = time.monotonic() + accept_timeout_s
    while True:
        try:
            conn, _ = listener.accept()
        except socket.timeout:
            return  # nobody came: the host that started us is gone
        pid, _, _ = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
        if pid == 0:  # a peer outside our pid namespace: the host
            break
        conn.close()
        if time.monotonic() > deadline:
            return
    listener.close()
    os.unlink(socket_path)  # nobody else can connect from now on
    conn.settimeout(None)
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
    while True:
        try:
            request, fds = receive_message(conn)
        except (OSError, ValueError):
            return
        if request is None:
            return  # the host closed the connection: we are done, and the container ends with us
        reply = SUPERVISOR.handle(request, fds)
        reply["id"] = request.get("id")
        if SUPERVISOR.unusable:
            reply["unusable"] = SUPERVISOR.unusable
        try:
            send_message(conn, reply)
        except OSError:
            return
        if SUPERVISOR.unusable:
            return  # the container ends with us; the host has been told why


if __name__ == "__main__":
    serve(sys.argv[1], float(sys.argv[2]) if len(sys.argv) > 2 else 120)
