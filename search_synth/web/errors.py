"""The web search domain's one exception type."""

from tasksynth.errors import TasksynthError


class WebError(TasksynthError):
    """A web search or page fetch failed or was refused (bad URL, private address, HTTP error, too large)."""
