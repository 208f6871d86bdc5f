"""The code-environment domain's errors. Each is turned into a stored reason on the candidate it concerns
(or into one line at the CLI), never into a traceback for the user.

Two kinds: a candidate's own fault (`RecipeFailed`, `PatchOutsideRepo`, `SourceError`) ends that candidate with
a reason; the machine's fault (`DiskFull`, and `DockerUnavailable` from `tasksynth.errors`) leaves the
candidate unrecorded, so a rerun picks it up again once the machine is healthy.
"""

from tasksynth.errors import TasksynthError


class CodeEnvError(TasksynthError):
    """Base of the code-environment errors."""


class SourceError(CodeEnvError):
    """A repository, history or SWE-bench file that cannot be read."""


class RecipeFailed(CodeEnvError):
    """An install recipe failed while building an image; the message carries the tail of the build log."""

    def __init__(self, message: str, log: str = ""):
        super().__init__(message)
        self.log = log


class UnsupportedProject(CodeEnvError):
    """No recipe or test runner exists for this project (its language, or no Python version fits)."""


class UnsupportedBuildSystem(UnsupportedProject):
    """A build system that cannot be served honestly offline (Gradle: resolving runs its build scripts, and no
    Gradle that runs on the image's JDK is packaged); the candidate's reason is `unsupported_build_system`."""

    reason = "unsupported_build_system"


class DiskFull(CodeEnvError):
    """The disk (Docker's or ours) is full: a fault of the machine, not of the candidate."""
