"""Writing what the code-interpreter pipeline's steps return into the store, and reading it back.

Only the flow process calls these (the store's one writer). Every discard also lands in `discards` with its
reason (source `notebook`), so the funnel of `tasksynth notebook report` is a query. Notebooks (.ipynb) and
images are blobs.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

from agent import write_records
from notebook_env.datasets import Dataset
from notebook_env.synthesis import ERROR, SOLVED, AttemptOutcome, TaskOutcome
from verifiers.pass_at_k import pass_at_k, pass_at_ks

SOURCE = "notebook"
NOTEBOOK_MEDIA = "application/x-ipynb+json"


def record_datasets(store, datasets: list[Dataset], root: Path) -> None:
    rows = [{**d.row(), "files": json.dumps(d.files), "folder": str(root / d.name)} for d in datasets]
    store.insert("notebook_datasets", rows, on_conflict="replace")


def record_task(store, outcome: TaskOutcome, run_id: str | None) -> None:
    write_records(store, outcome.recorder.calls, outcome.recorder.trajectories)
    blob = store.put_blob(outcome.solution_notebook, NOTEBOOK_MEDIA) if outcome.solution_notebook else None
    with store.transaction():
        store.insert("notebook_tasks", [outcome.row(run_id, blob)], on_conflict="replace")
        if outcome.status == "discarded":
            _discard(store, "notebook.task", outcome.task_id, outcome.dataset.name, outcome.reason, outcome.detail,
                     run_id)


def record_attempts(store, outcomes: list[AttemptOutcome], recorder, run_id: str | None) -> None:
    write_records(store, recorder.calls, recorder.trajectories)
    for outcome in outcomes:
        for png in notebook_images(outcome.notebook):
            store.put_blob(png, "image/png")
    rows = [o.row(run_id, store.put_blob(o.notebook, NOTEBOOK_MEDIA) if o.notebook else None) for o in outcomes]
    store.insert("notebook_attempts", rows, on_conflict="replace")


def notebook_images(notebook: str | None) -> list[bytes]:
    """The PNG images of a notebook's outputs (each a blob of its own, besides the notebook)."""
    if not notebook:
        return []
    cells = json.loads(notebook).get("cells", [])
    return [base64.b64decode(output["data"]["image/png"]) for cell in cells for output in cell.get("outputs", [])
            if "image/png" in output.get("data", {})]


def record_pass_at_k(store, task_id: str, k: int) -> dict[str, Any]:
    """c and n from the task's graded attempts (errors left out), the unbiased pass@1/8/n; kept when c >= 1."""
    rows = store.query("SELECT outcome FROM notebook_attempts WHERE task_id = ? AND outcome <> ?", [task_id, ERROR])
    n = len(rows)
    c = sum(r["outcome"] == SOLVED for r in rows)
    values = pass_at_ks(n, c, [1, 8, n]) if n else {}
    at_k = pass_at_k(n, c, min(k, n)) if n else None
    status = "kept" if c >= 1 else "discarded" if n else "attempting"
    with store.transaction():
        store.execute("UPDATE notebook_tasks SET c = ?, n = ?, pass_at = ?, pass_at_k = ?, k = ?, status = ?, "
                      "reason = ? WHERE task_id = ?",
                      [c, n, json.dumps(values), at_k, k, status, "never_solved" if status == "discarded" else None,
                       task_id])
        if status == "discarded":
            _discard(store, "notebook.pass_at_k", task_id, None, "never_solved", f"0 of {n} attempts solved it",
                     None)
    return {"c": c, "n": n, **values}


def tasks_to_attempt(store, task_ids: list[str]) -> list[dict[str, Any]]:
    if not task_ids:
        return []
    marks = ", ".join("?" for _ in task_ids)
    return store.query(f"SELECT * FROM notebook_tasks WHERE status <> 'discarded' AND reason IS DISTINCT FROM "
                       f"'never_solved' AND task_id IN ({marks}) ORDER BY task_id", task_ids)


def _discard(store, stage: str, item: str, repo: str | None, reason: str | None, detail: str | None,
             run_id: str | None) -> None:
    store.insert("discards", [{"stage": stage, "source": SOURCE, "item": item, "repo": repo,
                               "reason": reason or "unknown", "detail": (detail or "")[:2000], "run_id": run_id}],
                 on_conflict="replace")


def record_mined(store, mined, repo: str, run_id: str | None) -> None:
    """A mined notebook as a task (source `mine`: verified by re-running it, no pass@k), or its discard."""
    row = {"task_id": mined.content_id, "dataset": repo, "task_index": 0, "source": "mine", "status": mined.status,
           "reason": mined.reason, "detail": f"{mined.path}: {mined.detail}"[:2000], "question": mined.question,
           "answer_format": json.dumps(mined.answer_format) if mined.answer_format else None,
           "solution": None, "answer": json.dumps(mined.answer), "data_files": json.dumps(mined.data_files or {}),
           "run_id": run_id}
    with store.transaction():
        store.insert("notebook_tasks", [row], on_conflict="replace")
        if mined.status == "discarded":
            _discard(store, "notebook.mine", mined.content_id, repo, mined.reason, f"{mined.path}: {mined.detail}",
                     run_id)
