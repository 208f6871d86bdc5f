"""The main job on shipped data, end to end: the sample repository's history -> candidates -> Docker
environments -> validation -> problem statements drafted by an agent -> the store -> a Parquet export.
What `tasksynth demo` and `make demo` run.

The agent is whatever the statement_writer role points at. With the default (the bundled runner on
127.0.0.1) and nothing answering there, the demo starts `tasksynth runner serve` itself, lets the model load
while Docker works, and stops it at the end (`flows.runner_process`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow

import dataclasses

from envbuilder.statements import ROLE as STATEMENT_ROLE
from flows.code import code_pipeline, sample_paths
from flows.general import general_pipeline
from flows.runner_process import local_runner, say_on_stderr
from tasksynth.config import Config, load_config
from tasksynth.export import export_tasks
from tasksynth.store import open_store


GENERAL_ROLES = ("tool_writer", "task_writer", "solution_writer", "verifier_writer", "solver")
DEMO_CATEGORY = "library loans"
# The demo's agents are the bundled runner with short turns, so that every kind runs within minutes on a CPU;
# a role the user configured keeps its own settings.
DEMO_ROLE_SETTINGS = {"max_tokens": 256, "max_turns": 4, "timeout_s": 300.0}


def demo_roles(config: Config, base_url: str, roles: tuple[str, ...]) -> Config:
    agents = dict(config.agents)
    for role in roles:
        if role not in agents:
            agents[role] = dataclasses.replace(config.role(role), base_url=base_url, **DEMO_ROLE_SETTINGS)
    return dataclasses.replace(config, agents=agents)


@flow(name="demo", validate_parameters=False)
def demo_flow(config: Config | None = None, out_dir: str | None = None, config_path: str | None = None,
              sample: str = "minicalc") -> dict[str, Any]:
    config = config or load_config(config_path)
    out = Path(out_dir) if out_dir else config.home_path / "export" / "demo"
    with local_runner(config, STATEMENT_ROLE, say=say_on_stderr) as runner:
        code = code_pipeline(config=config, **sample_paths(config, sample))
        runner.wait_ready()
        drafted = code_pipeline(config=config, build=False, validate=False, draft_statements=True)
        general = general_pipeline(config=demo_roles(config, runner.base_url, GENERAL_ROLES), category=DEMO_CATEGORY,
                                   envs=1, tasks_per_env=1, levels=1, k=2)
    with open_store(config) as store:
        exported = export_tasks(store, out, overwrite=True)
        tasks = store.query("SELECT t.instance_id, t.verdict, t.reason, len(t.fail_to_pass) AS f2p, "
                            "len(t.pass_to_pass) AS p2p, d.status AS draft, d.reason AS draft_reason "
                            "FROM code_tasks t LEFT JOIN statement_drafts d USING (candidate_id) "
                            "ORDER BY t.instance_id")
    return {"code": {k: code.get(k) for k in ("mine", "verdicts") if k in code}, "drafts": drafted.get("drafts"),
            "runner": {"endpoint": runner.base_url, "started": runner.started, "pid": runner.pid,
                       "ready_s": runner.ready_s},
            "tasks": tasks,
            "general": {"category": DEMO_CATEGORY, "funnel": general["funnel"]},
            "export": {"dir": str(exported.out_dir), "counts": exported.counts,
                       "shards": [s["path"] for s in exported.shards]}}
