"""The agent domain's one exception type."""

from tasksynth.errors import TasksynthError


class AgentError(TasksynthError):
    """An agent cannot be set up: a prompt file, a tool, an API key variable or a role setting is wrong.

    What goes wrong while an agent runs (an endpoint that keeps failing, a budget spent) is not raised: the
    run stops and its `AgentResult` carries the `stop_reason` and the error text."""
