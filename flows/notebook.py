"""Code-interpreter tasks: datasets -> a task per (dataset, index) -> gold, shortcut, ambiguity -> pass@k.

    packaged tables (and a user's folder) -> <home>/notebook/data, mounted read-only at /data in every kernel
    dataset x index -> task writer in a kernel -> solution run twice -> shortcut check -> second solution
    every task that passed -> solver x k (batches, each attempt its own kernel) -> graded by the format's rule
    -> c, n, pass@k -> kept if c >= 1

`notebook_demo` is the demo's part: the shipped notebook repository mined (a kept task whatever the model),
then this flow with one task and k = 2 on the demo's agents; `kernel_image_in_background` lets the demo build
the kernel image (once per machine) while its other kinds run.

Each stage is `run_steps` over its items, keyed by a content hash, so a rerun after a crash resumes where it
stopped (finished tasks and attempt batches are not redone; rows are keyed, so nothing is written twice).
The steps live in `notebook_env/`; the flow strings them together, shares one warm kernel pool between its
tasks and publishes the funnel as Prefect artifacts.
"""

from __future__ import annotations

import hashlib
import threading
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from agent import BufferedRecorder
from flows.funnels import publish_kind
from flows.prefect_flow import flow
from flows.runtime import flow_run, run_steps
from notebook_env.datasets import DEFAULT_DATASETS, data_root, materialise
from notebook_env.funnel import notebook_funnel
from notebook_env.kernel import KernelPool
from notebook_env.kernel_image import kernel_image
from notebook_env.mining import KernelsOnFirstUse, git_notebooks, mine_repository
from notebook_env.records import record_attempts, record_datasets, record_pass_at_k, record_task, tasks_to_attempt
from notebook_env.samples import SAMPLE_NAME, build_notebook_sample
from notebook_env.synthesis import attempt_batch, synthesize_task, task_id
from tasksynth.config import Config, load_config
from tasksynth.errors import TasksynthError
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


DEMO_DATASET = "seattle-weather"


def kernel_image_in_background(config: Config, say=print) -> Future:
    """The kernel image found or built on a thread of its own; `.result()` is its tag. The thread is a daemon:
    a demo that ends early (an error, Ctrl-C) does not wait for the build."""
    future: Future = Future()

    def build() -> None:
        try:
            future.set_result(kernel_image(config, log=say).tag)
        except BaseException as exc:  # noqa: BLE001 - handed to whoever asks for the result
            future.set_exception(exc)

    threading.Thread(target=build, name="kernel-image", daemon=True).start()
    return future


def notebook_demo(config: Config, image: Future | None = None) -> dict[str, Any]:
    """Mine the shipped notebook repository, then synthesize one task (k = 2) with the configured agents. A
    kernel that cannot be had is the result's `error`, not the demo's end."""
    try:
        tag = image.result() if image is not None else kernel_image(config).tag
        repo = build_notebook_sample(config.home_path / "repos" / "samples")
        kernels = KernelsOnFirstUse(config, lambda: tag)
        try:
            with open_store(config) as store:
                mined = mine_repository(store, kernels, repo, SAMPLE_NAME, git_notebooks(repo),
                                        data_dir=data_root(config))
        finally:
            kernels.close()
        synthesized = notebook_pipeline(config=config, datasets=[DEMO_DATASET], tasks=1, k=2, attempt_batch_size=2,
                                        pool_size=1)
    except TasksynthError as exc:
        return {"error": str(exc)}
    with open_store(config) as store:
        funnel = notebook_funnel(store, source="synth")
    return {"mined": {"repo": SAMPLE_NAME, "outcomes": mined}, "synth": {"dataset": DEMO_DATASET, "funnel": funnel},
            "errors": [e for step in synthesized.values() if isinstance(step, dict) for e in step.get("errors", [])]}
