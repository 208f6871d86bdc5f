"""Code-interpreter tasks: datasets -> a task per (dataset, index) -> gold, shortcut, ambiguity -> pass@k.

    packaged tables (and a user's folder) -> <home>/notebook/data, mounted read-only at /data in every kernel
    dataset x index -> task writer in a kernel -> solution run twice -> shortcut check -> second solution
    every task that passed -> solver x k (batches, each attempt its own kernel) -> graded by the format's rule
    -> c, n, pass@k -> kept if c >= 1

Each stage is `run_steps` over its items, keyed by a content hash, so a rerun after a crash resumes where it
stopped (finished tasks and attempt batches are not redone; rows are keyed, so nothing is written twice).
The steps live in `notebook_env/`; the flow strings them together, shares one warm kernel pool between its
tasks and publishes the funnel as Prefect artifacts.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from prefect import flow

from agent import BufferedRecorder
from flows.funnels import publish_kind
from flows.runtime import flow_run, run_steps
from notebook_env.datasets import DEFAULT_DATASETS, data_root, materialise
from notebook_env.funnel import notebook_funnel
from notebook_env.kernel import KernelPool
from notebook_env.kernel_image import kernel_image
from notebook_env.records import record_attempts, record_datasets, record_pass_at_k, record_task, tasks_to_attempt
from notebook_env.synthesis import attempt_batch, synthesize_task, task_id
from tasksynth.config import Config, load_config
from tasksynth.hashing import content_hash
from tasksynth.store import open_store


@flow(name="notebook-pipeline", validate_parameters=False)
def notebook_pipeline(config: Config | None = None, datasets: list[str] | None = None, data_dir: str | None = None,
                      tasks: int = 4, k: int = 8, attempt_batch_size: int = 4, pool_size: int = 2, seed: int = 0,
                      config_path: str | None = None) -> dict[str, Any]:
    config = config or load_config(config_path)
    names = list(datasets) if datasets is not None else list(DEFAULT_DATASETS)
    params = {"datasets": names, "data_dir": data_dir, "tasks": tasks, "k": k, "seed": seed}
    image = kernel_image(config).tag
    data = materialise(config, names, folder=Path(data_dir) if data_dir else None)
    with open_store(config) as store, flow_run(store, "notebook", params) as summary, \
            KernelPool(config, image, data_root=data_root(config), size=pool_size) as pool:
        run_id = summary["run_id"]
        record_datasets(store, data, data_root(config))
        items = [(data[index % len(data)], index) for index in range(tasks)]
        summary["tasks"] = run_steps(
            store, "notebook.task", items, lambda item: synthesize_task(config, pool, item[0], item[1], seed),
            key=lambda item: task_id(item[0], item[1], seed),
            record=lambda item, outcome: record_task(store, outcome, run_id), config=config, run_id=run_id).as_dict()

        by_name = {dataset.name: dataset for dataset in data}
        candidates = tasks_to_attempt(store, [task_id(dataset, index, seed) for dataset, index in items])
        batch = max(1, min(attempt_batch_size, k))
        batches = [(task, list(range(start, min(start + batch, k)))) for task in candidates
                   for start in range(0, k, batch)]

        def attempts(item):
            recorder = BufferedRecorder()
            outcomes = attempt_batch(config, pool, item[0], by_name[item[0]["dataset"]], item[1], recorder,
                                     on_image=lambda png: "blob " + hashlib.sha256(png).hexdigest())
            return outcomes, recorder

        summary["attempts"] = run_steps(
            store, "notebook.attempts", batches, attempts,
            key=lambda item: content_hash("notebook.attempts", item[0]["task_id"], item[1]),
            record=lambda item, output: record_attempts(store, output[0], output[1], run_id), config=config,
            run_id=run_id).as_dict()
        summary["pass_at_k"] = {task["task_id"]: record_pass_at_k(store, task["task_id"], k) for task in candidates}
        summary["funnel"] = notebook_funnel(store)
        publish_kind(store, "code_interpreter")
    return summary
