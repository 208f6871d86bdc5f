"""Everything that runs code we did not write: one-shot runs, the warm call pool and agent sessions.

See docs/sandbox.md for what is isolated, how, and the outcomes a run or call can have.
"""

from tasksynth.sandbox.isolation import (SUPERVISOR_CAPS, UNTRUSTED_UID, Limits, Mount, drop_privileges_prefix,
                                         isolated_run_args)

__all__ = ["SUPERVISOR_CAPS", "UNTRUSTED_UID", "Limits", "Mount", "drop_privileges_prefix", "isolated_run_args"]
