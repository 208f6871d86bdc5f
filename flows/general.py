"""General tool environments: category -> environments -> tasks by level -> pass@k -> kept tasks.

    category x envs -> tool_writer in a sandbox session -> database + tools -> quality gate -> bundle
    bundle x tasks_per_env -> task / solution / verifier writers -> self-checks -> level-1 task
    kept level L-1 task -> made harder (+ a new tool: new bundle version) -> self-checks -> level-L task
                                                                                  (L = 2 .. levels)
    every verified task -> solver x k (batches) -> graded from its trajectory -> c, n, pass@k -> kept if c >= 1

Each stage is `run_steps` over its items, keyed by a content hash, so a rerun after a crash resumes where it
stopped (an attempt batch in flight is made again). The steps live in `general_env/`; the flow only strings
them together and publishes the funnel as Prefect artifacts.
"""

from __future__ import annotations

from typing import Any

from flows.prefect_flow import flow
from flows.runtime import flow_run, run_steps
from general_env.attempts import attempt_batch
from general_env.environment_building import build_environment, environment_id
from flows.funnels import publish_kind
from general_env.funnel import general_funnel
from general_env.records import (built_environments, record_attempts, record_environment, record_pass_at_k,
                                 record_task, task_bundle, verified_tasks)
from general_env.tasks import task_id, write_task
from tasksynth.config import Config, load_config
from tasksynth.hashing import content_hash
from tasksynth.store import open_store


@flow(name="general-pipeline", validate_parameters=False)
def general_pipeline(config: Config | None = None, category: str = "travel planning", envs: int | None = None,
                     tasks_per_env: int | None = None, levels: int | None = None, k: int | None = None,
                     stop_after_first_success: bool | None = None, seed: int = 0,
                     config_path: str | None = None) -> dict[str, Any]:
    config = config or load_config(config_path)
    settings = config.general
    envs = settings.envs if envs is None else envs
    tasks_per_env = settings.tasks_per_env if tasks_per_env is None else tasks_per_env
    levels = settings.levels if levels is None else levels
    k = settings.k if k is None else k
    stop_early = settings.stop_after_first_success if stop_after_first_success is None else stop_after_first_success
    params = {"category": category, "envs": envs, "tasks_per_env": tasks_per_env, "levels": levels, "k": k,
              "stop_after_first_success": stop_early, "seed": seed}
    with open_store(config) as store, flow_run(store, "general", params) as summary:
        run_id = summary["run_id"]
        env_items = [(category, index, seed) for index in range(envs)]
        summary["environments"] = run_steps(
            store, "general.environment", env_items, lambda item: build_environment(config, *item),
            key=lambda item: environment_id(config, *item),
            record=lambda item, outcome: record_environment(store, outcome, run_id), config=config,
            run_id=run_id).as_dict()
        bundles = built_environments(store, [environment_id(config, *item) for item in env_items])

        for level in range(1, levels + 1):
            if level == 1:
                items = [(env_id, bundle, index, None) for env_id, bundle in bundles for index in range(tasks_per_env)]
            else:  # a harder task starts from its parent's bundle version (with the tools its level added)
                items = [(env_id, task_bundle(store, parent, bundle), 0, parent) for env_id, bundle in bundles
                         for parent in verified_tasks(store, env_id, level - 1)]
            summary[f"level_{level}"] = run_steps(
                store, "general.task", items,
                lambda item, level=level: write_task(config, item[1], item[0], item[2], level=level, parent=item[3]),
                key=lambda item, level=level: task_id(item[0], item[2], level, item[3]["task_id"] if item[3] else None),
                record=lambda item, outcome: record_task(store, outcome, item[1].bundle_id, run_id), config=config,
                run_id=run_id).as_dict()

        tasks = [(task_bundle(store, task, bundle), task) for env_id, bundle in bundles
                 for level in range(1, levels + 1) for task in verified_tasks(store, env_id, level)]
        batch = k if stop_early else max(1, min(config.general.attempt_batch, k))
        batches = [(bundle, task, list(range(start, min(start + batch, k))))
                   for bundle, task in tasks for start in range(0, k, batch)]
        summary["attempts"] = run_steps(
            store, "general.attempts", batches,
            lambda item: attempt_batch(config, item[0], item[1], item[2], stop_after_first_success=stop_early),
            key=lambda item: content_hash("general.attempts", item[1]["task_id"], item[2], stop_early),
            record=lambda item, outcomes: record_attempts(store, outcomes, run_id), config=config,
            run_id=run_id).as_dict()
        summary["pass_at_k"] = {task["task_id"]: record_pass_at_k(store, task["task_id"], k, estimated=not stop_early)
                                for _, task in tasks}
        summary["funnel"] = general_funnel(store, category=category)
        publish_kind(store, "general")
    return summary

