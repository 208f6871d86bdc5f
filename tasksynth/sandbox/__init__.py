"""Everything that runs code we did not write: one-shot runs, the warm call pool and agent sessions.

- `run_oneshot(config, image, command, ...)`: a fresh isolated container per command -> RunResult
- `CallPool(config)` / `pool.attempt(state_master=...)` / `attempt.call(source, fn, args)`: model-written
  functions in warm containers, forked per call under limits -> CallResult
- `Session(config, image, mounts=...)`: one container per agent episode; `run`, `read_file`, `write_file`

All of them start containers with `isolated_run_args` (isolation.py). docs/sandbox.md says what is isolated,
how, the limits and the outcomes.
"""

from tasksynth.sandbox.isolation import (SUPERVISOR_CAPS, UNTRUSTED_UID, Limits, Mount, drop_privileges_prefix,
                                         isolated_run_args)
from tasksynth.sandbox.oneshot import run_oneshot
from tasksynth.sandbox.pool import Attempt, CallPool
from tasksynth.sandbox.results import OUTCOMES, CallResult, RunResult, SandboxInfraError
from tasksynth.sandbox.session import SandboxFileError, ServiceReply, Session

__all__ = ["OUTCOMES", "SUPERVISOR_CAPS", "UNTRUSTED_UID", "Attempt", "CallPool", "CallResult", "Limits", "Mount",
           "RunResult", "SandboxFileError", "SandboxInfraError", "ServiceReply", "Session", "drop_privileges_prefix",
           "isolated_run_args", "run_oneshot"]
