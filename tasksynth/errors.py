"""One exception type per domain. The CLI turns any `TasksynthError` into one clear line and exit code 1;
steps turn the domain ones into a stored reason on the item they were working on."""


class TasksynthError(Exception):
    """Base of every error the user should see as one line, not a traceback."""


class ConfigError(TasksynthError):
    """A bad config file, key or value."""


class StoreError(TasksynthError):
    """The store cannot be opened or is in an unexpected state."""


class StoreLocked(StoreError):
    """Another process holds the store for writing."""


class DockerUnavailable(TasksynthError):
    """No Docker engine answers."""


class ImageBuildFailed(TasksynthError):
    """An image could not be built; the message carries the tail of the build log."""


class ExportError(TasksynthError):
    """An export was refused or failed."""
