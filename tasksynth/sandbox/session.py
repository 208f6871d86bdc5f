"""Sessions: one sandbox container per agent episode (a shell for an agent, a notebook kernel's host).

    with Session(config, image, mounts=[Mount(repo, "/repo")]) as session:
        session.write_file("/work/notes.txt", b"...")
        r = session.run("pytest -q", timeout_s=120)          # -> RunResult
        text = session.read_file("/work/out.log")
        session.start_service(["/opt/venv/bin/python", "/opt/driver.py"])   # a long-lived process
        reply = session.service_call('{"op": "ping"}', timeout_s=5)        # -> ServiceReply (one line)

Commands run through the container's supervisor as the untrusted user (`sh -c`), with a per-command
wall-clock timeout, an output cap and the file-size and process limits; when a command ends, every process
of the untrusted user is killed (background jobs and daemons included), so nothing runs between commands.
Files are read and written by a child that has become the untrusted user: a link the code planted leads
nowhere it could not go itself, and the host never opens a path inside the container.

A session's writable places are its tmpfs folders (`/work`, `/tmp`) and any mount given writable; the
rest of the image is read-only. A container that dies ends the session: that command's outcome is
`sandbox_crash`, and so is every later one's.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any, Sequence

from tasksynth.sandbox.container import WORK, SupervisedContainer
from tasksynth.sandbox.isolation import Limits, Mount
from tasksynth.sandbox.pool import PROCESS_HEADROOM, default_image
from tasksynth.sandbox.results import RunResult, SandboxInfraError, SupervisorGone
from tasksynth.errors import TasksynthError


class SandboxFileError(TasksynthError):
    """A session file could not be read or written (missing, not a regular file, no permission)."""


@dataclass
class ServiceReply:
    outcome: str  # ok | timeout | output_capped | oom | service_gone | sandbox_crash
    line: str  # the service's answer (ok only), without its newline
    reason: str = ""


class Session:
    """One isolated container for one agent episode. A context manager; `close()` removes the container."""

    def __init__(self, config: Any, image: str | None = None, *, mounts: Sequence[Mount] = (),
                 limits: Limits | None = None, tmpfs: dict[str, str] | None = None, workdir: str = WORK,
                 env: dict[str, str] | None = None, output_cap: int | None = None):
        self.config = config
        self.limits = limits or Limits.from_config(config)
        self.workdir, self.env = workdir, dict(env or {})
        self.output_cap = output_cap or config.sandbox.output_cap_bytes
        self.crashed = False
        error: Exception | None = None
        for _ in range(config.sandbox.infra_retries + 1):
            try:
                self.container = SupervisedContainer(config, image or default_image(config), role="session",
                                                     limits=self.limits, mounts=mounts, tmpfs=tmpfs).start()
                break
            except SandboxInfraError as exc:
                error = exc
        else:
            raise SandboxInfraError(f"could not start a session container: {error}")
        try:
            self.container.request({"op": "reset"}, timeout_s=30)
        except SandboxInfraError:
            self.container.close()
            raise

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self.container.close()

    @property
    def name(self) -> str:
        return self.container.name

    def run(self, command: str, *, timeout_s: float | None = None, output_cap: int | None = None,
            stdin: bytes | str | None = None, cwd: str | None = None, env: dict[str, str] | None = None) -> RunResult:
        """Run a shell command as the untrusted user; the outcome says whether it ran to the end."""
        if self.crashed:
            return RunResult("sandbox_crash", None, reason="the session's container died earlier")
        timeout_s = timeout_s or self.limits.wall_s
        data = stdin.encode() if isinstance(stdin, str) else stdin or b""
        limits = {"timeout_s": timeout_s, "output_cap": output_cap or self.output_cap,
                  "file_size_bytes": self.limits.file_size_bytes,
                  "processes": max(1, self.limits.pids - PROCESS_HEADROOM)}
        message = {"op": "run", "command": command, "cwd": cwd or self.workdir, "env": {**self.env, **(env or {})},
                   "stdin": base64.b64encode(data).decode(), "limits": limits}
        try:
            reply = self.container.request(message, timeout_s=timeout_s)
        except SupervisorGone as exc:
            self.crashed = True
            return RunResult("sandbox_crash", None, reason=str(exc))
        except SandboxInfraError as exc:
            return RunResult("infra_error", None, reason=str(exc))
        return RunResult(reply["outcome"], reply.get("exit_code"), reply.get("stdout", ""), reply.get("stderr", ""),
                         float(reply.get("seconds", 0.0)), reply.get("reason", ""))

    def start_service(self, argv: Sequence[str], *, env: dict[str, str] | None = None,
                      cwd: str | None = None) -> None:
        """Start a long-lived process of the untrusted user (a kernel's driver) that answers one line per
        line on its stdin. It outlives requests until `stop_service`, `reset`, the next `run` (whose sweep
        kills every process of that user) or another `start_service`. Its stderr is discarded."""
        limits = {"file_size_bytes": self.limits.file_size_bytes,
                  "processes": max(1, self.limits.pids - PROCESS_HEADROOM)}
        self._service_request({"op": "service_start", "argv": list(argv), "cwd": cwd or self.workdir,
                               "env": {**self.env, **(env or {})}, "limits": limits}, timeout_s=30)

    def service_call(self, line: str, *, timeout_s: float, output_cap: int | None = None) -> ServiceReply:
        """Send one line to the service and wait for its one-line answer. Any outcome but `ok` (timeout,
        output_capped, oom, service_gone, sandbox_crash) means the service is no longer running."""
        if self.crashed:
            return ServiceReply("sandbox_crash", "", "the session's container died earlier")
        message = {"op": "service_call", "line": line, "timeout_s": timeout_s,
                   "output_cap": output_cap or self.output_cap}
        try:
            reply = self._service_request(message, timeout_s=timeout_s)
        except SupervisorGone as exc:
            return ServiceReply("sandbox_crash", "", str(exc))
        return ServiceReply(reply["outcome"], reply.get("line", ""), reply.get("reason", ""))

    def stop_service(self) -> None:
        self._service_request({"op": "service_stop"}, timeout_s=30)

    def reset(self) -> None:
        """Kill every process of the untrusted user (the service too) and empty /work, /tmp and the IPC
        places: the container is as fresh as a new one for the next episode."""
        self._service_request({"op": "reset"}, timeout_s=30)

    def _service_request(self, message: dict[str, Any], *, timeout_s: float) -> dict[str, Any]:
        if self.crashed:
            raise SupervisorGone("the session's container died earlier")
        try:
            return self.container.request(message, timeout_s=timeout_s)
        except SupervisorGone:
            self.crashed = True
            raise

    def read_file(self, path: str, *, max_bytes: int = 16 * 1024 * 1024, follow_links: bool = True) -> bytes:
        """The first `max_bytes` (at most) of a regular file, read as the untrusted user (SandboxFileError
        otherwise: missing, not a regular file, not readable by it)."""
        reply = self._file_request({"op": "read_file", "path": path, "max_bytes": max_bytes,
                                    "no_follow": not follow_links})
        return base64.b64decode(reply["data"])

    def write_file(self, path: str, data: bytes | str, *, mode: int = 0o644) -> None:
        """Write a file as the untrusted user (so only where it may write)."""
        payload = data.encode() if isinstance(data, str) else data
        self._file_request({"op": "write_file", "path": path, "data": base64.b64encode(payload).decode(),
                            "mode": mode})

    def _file_request(self, message: dict[str, Any]) -> dict[str, Any]:
        if self.crashed:
            raise SandboxFileError("the session's container died earlier")
        try:
            reply = self.container.request(message, timeout_s=30)
        except SupervisorGone as exc:
            self.crashed = True
            raise SandboxFileError(str(exc)) from None
        if "error" in reply:
            raise SandboxFileError(f"{message['path']}: {reply['error']}")
        return reply
