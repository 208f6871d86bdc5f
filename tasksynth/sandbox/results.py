"""What a sandboxed run or call gives back, and who is to blame when it did not go well.

An outcome caused by the code under test (it ran too long, used too much memory or too many processes,
wrote too much, took its container down) is that run's or call's *outcome*, with a one-line reason. Only a
failure outside it (the engine does not answer, `docker run` fails) is an error: `SandboxInfraError`,
retried a bounded number of times, then recorded as the outcome `infra_error`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tasksynth.errors import TasksynthError

OUTCOMES = {
    "ok": "ran to the end (a run: any exit code; a call: returned a JSON result)",
    "exception": "the function raised; `exception` holds its type, message and traceback",
    "timeout": "ran past its wall-clock or CPU-time limit and was killed",
    "oom": "ran out of memory (address-space limit or the container's memory limit)",
    "pids": "could not start another process (pids or process-count limit)",
    "file_size": "wrote a file larger than the file size limit",
    "disk_full": "filled its size-capped work folder",
    "output_capped": "wrote more than the output cap on stdout or stderr (or returned a larger result); stopped",
    "killed": "ended by a signal it did not get from us (or without a result)",
    "sandbox_crash": "its container died while it ran (it is replaced; the state restarts from the master)",
    "infra_error": "the engine failed, also after retries; not the code's fault",
}


class SandboxInfraError(TasksynthError):
    """The sandbox could not be provided (engine down, `docker run` failed): not the code's fault."""


class SupervisorGone(SandboxInfraError):
    """The connection to a container's supervisor broke: the container died or stopped answering."""


@dataclass
class RunResult:
    """A shell command or a one-shot container run."""

    outcome: str
    exit_code: int | None  # None when it never ran; negative: killed by that signal
    stdout: str = ""  # at most the output cap, cut before it was read into memory
    stderr: str = ""
    seconds: float = 0.0
    reason: str = ""

    @property
    def ok(self) -> bool:
        return self.outcome == "ok" and self.exit_code == 0


@dataclass
class CallResult:
    """A function call in the call pool."""

    outcome: str
    result: Any = None  # the function's return value, through JSON
    exception: dict[str, Any] | None = None  # type, message, traceback when the function raised
    stdout: str = ""
    stderr: str = ""
    seconds: float = 0.0  # in the sandbox, from fork to reap
    reason: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.outcome == "ok"

    @classmethod
    def from_reply(cls, reply: dict[str, Any]) -> "CallResult":
        return cls(outcome=reply["outcome"], result=reply.get("result"), exception=reply.get("exception"),
                   stdout=reply.get("stdout", ""), stderr=reply.get("stderr", ""),
                   seconds=float(reply.get("seconds", 0.0)), reason=reply.get("reason", ""))
