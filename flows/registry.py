"""The flows a user can run or schedule by name."""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tasksynth.config import Config
from tasksynth.errors import ConfigError


@dataclass(frozen=True)
class FlowEntry:
    module: str
    function: str
    description: str
    # Flows whose tasks write pages to the store as they go can only use threads of the flow process.
    threads_only: bool = False

    def load(self) -> Callable[..., Any]:
        return getattr(importlib.import_module(self.module), self.function)


FLOWS: dict[str, FlowEntry] = {
    "demo": FlowEntry("flows.demo", "demo_flow", "the main job on shipped data: code environments -> store -> export"),
    "code": FlowEntry("flows.code", "code_pipeline", "mine -> build -> validate code-agent environments"),
    "github": FlowEntry("flows.github", "github_mining", "mine GitHub issue->PR pairs over a list of repositories",
                        threads_only=True),
    "search": FlowEntry("flows.search", "search_pipeline",
                        "search QA: long-tail entities -> question agent -> verifier -> answer agents -> keep",
                        threads_only=True),
    "search-import": FlowEntry("flows.search", "search_import",
                               "import QA items, kept where search raises accuracy by a margin",
                               threads_only=True),
}


def _entry(name: str) -> FlowEntry:
    if name not in FLOWS:
        raise ConfigError(f"no flow named {name!r}; choose from {', '.join(FLOWS)}")
    return FLOWS[name]


def run_flow(config: Config, name: str, params: dict[str, Any]) -> Any:
    """Run a flow in this process (Prefect's ephemeral mode when no PREFECT_API_URL is set)."""
    from flows.runtime import prepare_prefect

    prepare_prefect(config)
    entry = _entry(name)
    flow = entry.load()
    return flow.with_options(task_runner=_task_runner(config, entry))(config=config, **params)


def _task_runner(config: Config, entry: FlowEntry):
    from flows.runtime import task_runner

    if entry.threads_only and config.flows.task_runner != "thread":
        config = dataclasses.replace(config, flows=dataclasses.replace(config.flows, task_runner="thread"))
    return task_runner(config)


def serve_flows(config: Config) -> None:
    """Serve every scheduled flow (Prefect `serve`): each becomes a deployment with its cron schedule."""
    from flows.runtime import prepare_prefect

    prepare_prefect(config)
    from prefect import serve

    deployments = []
    for name, cron in config.flows.schedules.items():
        flow = _entry(name).load()
        deployments.append(flow.to_deployment(name=f"tasksynth-{name}", cron=cron,
                                              parameters={"config_path": None}))
    serve(*deployments)
