"""The call pool: warm sandbox containers that run model-written Python functions, fast.

    with CallPool(config) as pool:
        with pool.attempt(state_master=Path("env.sqlite")) as attempt:  # a fresh copy of the state
            attempt.load("tools", toolkit_source)                       # importable by the calls
            r = attempt.call(source, "fn_name", {"x": 1}, timeout_s=5)    # -> CallResult
            v = attempt.call(verifier_source, "verify")

Each container holds a supervisor (`supervisor.py`) that runs every call in a forked child that has become
the untrusted user, with CPU-time, address-space, process-count and file-size limits and a wall-clock
timeout. An attempt has one container to itself: entering it kills whatever the previous attempt left,
empties the work folders and copies the state master into the container's tmpfs `/work` (the master is
passed as a read-only file descriptor: the container sees that one file and no folder of the host).

Bound per host: a container is only started while its process holds one of `sandbox.max_containers` lock
files (flock) in `sandbox.slot_dir` (default /tmp/tasksynth-sandbox-slots, one folder for the whole host, so
the bound holds across processes, Dask workers and homes). A lock is released when its container is
closed, or by the kernel when the process dies. Idle containers are closed after IDLE_RELEASE_S so that a
quiet process does not keep slots another one waits for.

Blame: a container that dies during a call makes that call `sandbox_crash` (the attempt continues on a new
container, its state restarted from the master, and `attempt.crashes` counts it); failing to get a
container at all (`SandboxInfraError`) is retried `sandbox.infra_retries` times, then the call's outcome
is `infra_error`.
"""

from __future__ import annotations

import base64
import fcntl
import os
import threading
import time
from pathlib import Path
from typing import Any

from tasksynth.sandbox.container import WORK, SupervisedContainer
from tasksynth.sandbox.isolation import Limits
from tasksynth.sandbox.results import CallResult, SandboxInfraError, SupervisorGone

DEFAULT_SLOT_DIR = "/tmp/tasksynth-sandbox-slots"
IDLE_RELEASE_S = 30.0
ACQUIRE_TIMEOUT_S = 600.0
PROCESS_HEADROOM = 16  # pids the untrusted processes leave to the supervisor (it must always be able to fork)


def default_image(config: Any) -> str:
    if config.sandbox.image:
        return config.sandbox.image
    from tasksynth.docker.base_images import base_image

    return base_image(config, "3.11", log=lambda *_: None).tag


class HostSlots:
    """At most `count` sandbox containers on this host: one flock-ed file per running container."""

    def __init__(self, folder: str | Path, count: int):
        self.folder, self.count = Path(folder), count
        if not self.folder.is_dir():
            self.folder.mkdir(parents=True, exist_ok=True)
            try:  # every user of the host shares the bound
                os.chmod(self.folder, 0o1777)
            except PermissionError:
                pass

    def try_acquire(self) -> int | None:
        """A held lock's file descriptor, or None when all slots are taken."""
        for index in range(self.count):
            path = self.folder / f"slot-{index}"
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CREAT, 0o644)
            except PermissionError:
                fd = os.open(path, os.O_RDONLY)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return fd
            except BlockingIOError:
                os.close(fd)
        return None

    @staticmethod
    def release(fd: int) -> None:
        os.close(fd)  # closing the descriptor releases the flock


class _Member:
    """A pool container and the slot it holds."""

    def __init__(self, container: SupervisedContainer, slot: int, pool: "CallPool"):
        self.container, self.slot, self.pool = container, slot, pool
        self.idle_since = time.monotonic()

    def close(self) -> None:
        self.container.close()
        HostSlots.release(self.slot)
        self.pool._members.discard(self)


class CallPool:
    """A bounded pool of warm call containers; thread-safe. A context manager; `close()` ends them all."""

    def __init__(self, config: Any, image: str | None = None, *, limits: Limits | None = None,
                 slot_dir: str | None = None, size: int | None = None):
        self.config = config
        self.image = image or default_image(config)
        self.limits = limits or Limits.from_config(config)
        settings = config.sandbox
        self.slots = HostSlots(slot_dir or settings.slot_dir or DEFAULT_SLOT_DIR, size or settings.max_containers)
        self.call_limits = {"timeout_s": settings.call_timeout_s, "cpu_s": settings.call_cpu_s,
                            "memory_bytes": settings.call_memory_bytes,
                            "processes": max(1, min(settings.call_processes, self.limits.pids - PROCESS_HEADROOM)),
                            "file_size_bytes": settings.file_size_bytes, "output_cap": settings.output_cap_bytes}
        self.retries = settings.infra_retries
        self._idle: list[_Member] = []
        self._members: set[_Member] = set()  # idle and busy
        self._busy = 0
        self._lock = threading.Condition()
        self._closed = False
        self._stop = threading.Event()
        threading.Thread(target=self._release_idle_in_background, name="sandbox-pool-idle", daemon=True).start()

    # ---- public

    def attempt(self, state_master: str | Path | None = None, *, state_name: str = "state.sqlite") -> "Attempt":
        return Attempt(self, Path(state_master) if state_master else None, state_name)

    def call(self, source: str, function: str, args: Any = None, **limits: float) -> CallResult:
        """One stateless call in a fresh attempt."""
        with self.attempt() as attempt:
            return attempt.call(source, function, args, **limits)

    def container_names(self) -> list[str]:
        """The pool's running containers (for `docker stats`, or a benchmark's CPU accounting)."""
        with self._lock:
            return sorted(m.container.name for m in self._members if m.container.alive)

    def close(self) -> None:
        self._stop.set()
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
            self._lock.notify_all()
        for member in idle:
            member.close()

    def __enter__(self) -> "CallPool":
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # ---- members

    def _acquire(self) -> _Member:
        """An idle container, a new one under a free host slot, or wait for either."""
        deadline = time.monotonic() + ACQUIRE_TIMEOUT_S
        while True:
            with self._lock:
                if self._closed:
                    raise SandboxInfraError("the call pool is closed")
                self._release_idle_members(keep_one=True)
                if self._idle:
                    self._busy += 1
                    return self._idle.pop()
                slot = self.slots.try_acquire()
                if slot is not None:
                    self._busy += 1
                    break
                if time.monotonic() > deadline:
                    raise SandboxInfraError(f"no sandbox slot came free in {ACQUIRE_TIMEOUT_S:.0f} s "
                                            f"({self.slots.count} per host, in {self.slots.folder})")
                self._lock.wait(0.05)  # another thread returning one wakes us; other processes are polled
        try:
            container = SupervisedContainer(self.config, self.image, role="call_pool", limits=self.limits).start()
        except BaseException:
            HostSlots.release(slot)
            with self._lock:
                self._busy -= 1
                self._lock.notify()
            raise
        member = _Member(container, slot, self)
        with self._lock:
            self._members.add(member)
        return member

    def _give_back(self, member: _Member) -> None:
        with self._lock:
            self._busy -= 1
            if self._closed or not member.container.alive:
                closing = True
            else:
                closing = False
                member.idle_since = time.monotonic()
                self._idle.append(member)
            self._lock.notify()
        if closing:
            member.close()

    def _discard(self, member: _Member) -> None:
        with self._lock:
            self._busy -= 1
            self._lock.notify()
        member.close()

    def _release_idle_in_background(self) -> None:
        while not self._stop.wait(IDLE_RELEASE_S / 3):
            with self._lock:
                self._release_idle_members(keep_one=False)

    def _release_idle_members(self, keep_one: bool) -> None:
        now = time.monotonic()
        stale = [m for m in self._idle if now - m.idle_since > IDLE_RELEASE_S]
        if keep_one and stale and len(stale) == len(self._idle):
            stale = stale[1:]  # the one we are about to use anyway
        for member in stale:
            self._idle.remove(member)
            member.close()


class Attempt:
    """One attempt: a container to itself, a fresh copy of the state, calls one at a time."""

    def __init__(self, pool: CallPool, state_master: Path | None, state_name: str):
        if state_master is not None and not state_master.is_file():
            raise FileNotFoundError(f"state master not found: {state_master}")
        self.pool, self.state_master, self.state_name = pool, state_master, os.path.basename(state_name)
        self.modules: dict[str, str] = {}
        self.crashes = 0
        self._member: _Member | None = None

    @property
    def state_path(self) -> str:
        """Where the calls find the state (also in their environment as SANDBOX_STATE)."""
        return f"{WORK}/{self.state_name}"

    def __enter__(self) -> "Attempt":
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        if self._member is not None:
            member, self._member = self._member, None
            self.pool._give_back(member)

    # ---- calls

    def load(self, name: str, source: str) -> None:
        """A module the calls of this attempt can import (`import name`) or call into (`call_module`)."""
        self.modules[name] = source
        if self._member is not None:
            self._request({"op": "load", "name": name, "source": source}, 10)

    def call(self, source: str, function: str, args: Any = None, **limits: float) -> CallResult:
        """Run `function` defined by `source` with `args` (a dict: keywords; a list: positional). `limits`
        override the pool's: timeout_s, cpu_s, memory_bytes, processes, file_size_bytes, output_cap."""
        return self._call({"source": source, "function": function, "args": args}, limits)

    def call_module(self, module: str, function: str, args: Any = None, **limits: float) -> CallResult:
        if module not in self.modules:
            raise KeyError(f"module {module!r} was not loaded in this attempt")
        return self._call({"module": module, "function": function, "args": args}, limits)

    def read_file(self, path: str, max_bytes: int = 64 * 1024 * 1024) -> bytes:
        """A file of the container (the state after the calls, say), read as the untrusted user."""
        reply = self._request({"op": "read_file", "path": path, "max_bytes": max_bytes}, 30)
        if "error" in reply:
            raise FileNotFoundError(f"{path}: {reply['error']}")
        return base64.b64decode(reply["data"])

    def _call(self, request: dict[str, Any], limits: dict[str, float]) -> CallResult:
        unknown = set(limits) - set(self.pool.call_limits)
        if unknown:
            raise TypeError(f"unknown call limits: {', '.join(sorted(unknown))}")
        merged = {**self.pool.call_limits, **limits}
        started = time.monotonic()
        try:
            reply = self._request({"op": "call", **request, "limits": merged}, float(merged["timeout_s"]))
        except SupervisorGone as exc:
            self.crashes += 1
            return CallResult("sandbox_crash", reason=f"{exc}; the call's container is replaced",
                              seconds=time.monotonic() - started)
        except SandboxInfraError as exc:
            return CallResult("infra_error", reason=str(exc), seconds=time.monotonic() - started)
        return CallResult.from_reply(reply)

    def _request(self, message: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        """Send to this attempt's container, getting and preparing one first. A container that dies on the
        way is `SupervisorGone` for this request; the next one gets a new container."""
        member = self._ready_member()
        try:
            reply = member.container.request(message, timeout_s=timeout_s)
        except SupervisorGone:
            self._member = None
            self.pool._discard(member)
            raise
        if member.container.unusable:  # answered, but cannot serve again: the rest of the attempt moves
            self.crashes += 1
            self._member = None
            self.pool._discard(member)
        return reply

    def _ready_member(self) -> _Member:
        if self._member is not None:
            return self._member
        error: Exception | None = None
        for _ in range(self.pool.retries + 1):
            member = None
            try:
                member = self.pool._acquire()
                self._prepare(member)
                self._member = member
                return member
            except SandboxInfraError as exc:
                error = exc
                if member is not None:
                    self.pool._discard(member)
        raise SandboxInfraError(f"no sandbox container after {self.pool.retries + 1} tries: {error}")

    def _prepare(self, member: _Member) -> None:
        """Reset the container for this attempt: nothing of the previous one left, the state copied in, the
        modules loaded so far sent along."""
        message = {"op": "reset", "state_name": self.state_name, "modules": self.modules}
        if self.state_master is None:
            member.container.request(message, timeout_s=30)
        else:
            fd = os.open(self.state_master, os.O_RDONLY)
            try:
                member.container.request(message, fds=[fd], timeout_s=30)
            finally:
                os.close(fd)
