"""The main job on shipped data, end to end: the sample repository's history -> candidates -> Docker
environments -> validation -> problem statements drafted by an agent -> a small search QA run (a corpus of
country facts from the installed `pycountry` package, two entities) -> one small general tool environment
-> code-interpreter: a shipped notebook repository mined, one task synthesized (k = 2) -> the store -> a
Parquet export. The kernel image (built once per machine) is built in the background from the start.
What `tasksynth demo` and `make demo` run.

The agent is whatever the statement_writer role points at. With the default (the bundled runner on
127.0.0.1) and nothing answering there, the demo starts `tasksynth runner serve` itself, lets the model load
while Docker works, and stops it at the end (`flows.runner_process`)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from envbuilder.statements import ROLE as STATEMENT_ROLE
from flows.code import code_pipeline, sample_paths
from flows.general import general_pipeline
from flows.notebook import kernel_image_in_background, notebook_demo
from flows.prefect_flow import flow
from flows.search import search_pipeline
from flows.runner_process import local_runner, say_on_stderr
from tasksynth.config import Config, RoleConfig, load_config
from tasksynth.export import export_tasks
from tasksynth.store import open_store


@flow(name="demo", validate_parameters=False)
def demo_flow(config: Config | None = None, out_dir: str | None = None, config_path: str | None = None,
              sample: str = "minicalc") -> dict[str, Any]:
    config = config or load_config(config_path)
    out = Path(out_dir) if out_dir else config.home_path / "export" / "demo"
    kernel = kernel_image_in_background(config, say=say_on_stderr)
    with local_runner(config, STATEMENT_ROLE, say=say_on_stderr) as runner:
        code = code_pipeline(config=config, **sample_paths(config, sample))
        runner.wait_ready()
        drafted = code_pipeline(config=config, build=False, validate=False, draft_statements=True)
        agents = demo_agents(config, config.role(STATEMENT_ROLE))
        demo_search_corpus(config)
        search = search_pipeline(config=demo_search_config(agents), corpus=DEMO_CORPUS, entities=2, seed=0)
        general = general_pipeline(config=agents, category=DEMO_CATEGORY, envs=1, tasks_per_env=1, levels=1, k=2)
        notebook = notebook_demo(agents, kernel)
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
            "search": {k: search[k] for k in ("funnel",) if k in search},
            "notebook": notebook,
            "export": {"dir": str(exported.out_dir), "counts": exported.counts,
                       "shards": [s["path"] for s in exported.shards]}}


DEMO_CORPUS = "demo-facts"
DEMO_CATEGORY = "library loans"
# Roles the user has not configured use the demo's agent endpoint (the bundled runner, usually), with budgets
# (max_tokens, max_turns) a small CPU model gets through in a minute or two; a configured role keeps its own.
# The notebook task writer gets one turn: a second one (its prompt grown by the kernel's output) took past the
# call's timeout on a loaded 2-core machine, and the 135M model seldom writes a usable task either way.
DEMO_ROLES = {"question_builder": (256, 3), "answerer": (48, 2), "verifier": (48, 2), "grader": (32, 1),
              "tool_writer": (256, 4), "task_writer": (160, 1), "solution_writer": (256, 1),
              "verifier_writer": (256, 1), "solver": (96, 4),
              "notebook_task_writer": (256, 1), "notebook_solution_writer": (192, 2), "notebook_answerer": (32, 1),
              "notebook_solver": (96, 2)}


def demo_agents(config: Config, agent: RoleConfig) -> Config:
    agents = dict(config.agents)
    for role, (max_tokens, max_turns) in DEMO_ROLES.items():
        if role not in agents:
            agents[role] = dataclasses.replace(agent, prompt="", max_tokens=max_tokens, max_turns=max_turns,
                                               context_window=2048, max_tool_result_chars=1500)
    return dataclasses.replace(config, agents=agents)


def demo_search_corpus(config: Config) -> None:
    """Ingest (once) 200 country facts from the installed pycountry package as the demo's corpus."""
    from search_synth.corpus import FactsSource, Limited, ingest

    ingest(config, DEMO_CORPUS, Limited(FactsSource(["pycountry"]), 200), progress=False)


def demo_search_config(config: Config) -> Config:
    from tasksynth.config import AnswererConfig

    search = dataclasses.replace(config.search, answerers=[AnswererConfig(name="search", temperature=0.3),
                                                           AnswererConfig(name="no-search", search=False,
                                                                          temperature=0.3, max_turns=1)])
    return dataclasses.replace(config, search=search)
