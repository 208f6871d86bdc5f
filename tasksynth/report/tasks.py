"""The tasks a report embeds: a stratified sample of the store's tasks (every kind and outcome represented in
proportion, at least one of each when the sample allows), each as the export writes it, with the trajectories
that made or attempted it (cut to a size a page can carry)."""

from __future__ import annotations

import json
import random
from collections import defaultdict
from typing import Any

from tasksynth.export import TASK_READERS

MAX_TRAJECTORIES = 3
MAX_TRANSCRIPT_CHARS = 12_000


def task_rows(store, kinds: list[str]) -> list[dict[str, Any]]:
    """Every task of the given kinds, accepted or not, in the export's row shape (plus `accepted`)."""
    rows = []
    for kind in kinds:
        for row in TASK_READERS[kind](store, True):
            row.pop("_run_id", None)
            row.pop("_files", None)
            row["accepted"] = _accepted(kind, row)
            rows.append(row)
    return rows


def stratified_sample(rows: list[dict[str, Any]], size: int, seed: int = 0) -> list[dict[str, Any]]:
    """At most `size` rows, drawn per (kind, accepted) stratum in proportion to its size, each stratum with at
    least one row while the budget allows."""
    if len(rows) <= size:
        return rows
    strata: dict[tuple[str, bool], list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        strata[(row["kind"], row["accepted"])].append(row)
    rng = random.Random(seed)
    keys = sorted(strata)
    quotas = {key: max(1, round(size * len(strata[key]) / len(rows))) for key in keys}
    while sum(quotas.values()) > size:
        largest = max(keys, key=lambda k: quotas[k])
        quotas[largest] -= 1
    chosen = []
    for key in keys:
        chosen += rng.sample(strata[key], min(quotas[key], len(strata[key])))
    return sorted(chosen, key=lambda r: r["task_id"])


def with_trajectories(store, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    for row in rows:
        ids = _trajectory_ids(store, row)[:MAX_TRAJECTORIES]
        row["trajectories"] = [t for t in (_transcript(store, i) for i in ids) if t]
    return rows


def _accepted(kind: str, row: dict[str, Any]) -> bool:
    metadata = json.loads(row["metadata"])
    if kind == "code":
        return metadata.get("verdict") == "valid"
    if kind == "search":
        return metadata.get("verdict") == "kept"
    if kind == "general":
        return bool(metadata.get("c"))
    return bool(metadata.get("accepted"))


def _trajectory_ids(store, row: dict[str, Any]) -> list[str]:
    kind, key = row["task_id"].split("/", 1)
    if kind == "code":
        found = store.query("SELECT trajectory_id FROM statement_drafts WHERE instance_id = ? AND trajectory_id "
                            "IS NOT NULL", [key])
    elif kind == "general":
        found = store.query("SELECT trajectory_id FROM general_tasks WHERE task_id = ? AND trajectory_id IS NOT NULL "
                            "UNION ALL (SELECT trajectory_id FROM general_attempts WHERE task_id = ? AND "
                            "trajectory_id IS NOT NULL ORDER BY reward DESC, attempt LIMIT 2)", [key, key])
    else:
        metadata = json.loads(row["metadata"])
        return [t for t in metadata.get("trajectories", []) if isinstance(t, str)]
    return [r["trajectory_id"] for r in found]


def _transcript(store, trajectory_id: str) -> dict[str, Any] | None:
    rows = store.query("SELECT role, transcript, stop_reason FROM trajectories WHERE trajectory_id = ?",
                       [trajectory_id])
    if not rows:
        return None
    try:
        data = json.loads(store.get_text(rows[0]["transcript"]))
    except (ValueError, OSError, Exception):  # noqa: BLE001 - a missing blob must not break the page
        return {"role": rows[0]["role"], "stop_reason": rows[0]["stop_reason"], "messages": [], "cut": True}
    messages, size = [], 0
    for message in data.get("messages", []):
        text = json.dumps(message, ensure_ascii=False)
        if size + len(text) > MAX_TRANSCRIPT_CHARS:
            return {"role": rows[0]["role"], "stop_reason": rows[0]["stop_reason"], "messages": messages, "cut": True}
        messages.append(message)
        size += len(text)
    return {"role": rows[0]["role"], "stop_reason": rows[0]["stop_reason"], "messages": messages, "cut": False}
