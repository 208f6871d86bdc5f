"""The one exception of the code-interpreter pipeline's domain."""

from tasksynth.errors import TasksynthError


class NotebookEnvError(TasksynthError):
    """The kernel image could not be built, or a kernel could not be started (not the code's fault)."""
