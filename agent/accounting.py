"""Accounting: every call an agent makes and every trajectory it ends, as records that reach the store.

The store has one writer, the flow process, while agents may run in worker threads or in other processes
(Dask). So the loop only produces records and hands them to a `Recorder`:

- `StoreRecorder(store)` writes each record as it comes (thread-safe: the store serialises its writers);
  use it where the store is open in the same process.
- `BufferedRecorder()` keeps them in memory; a task returns it (it pickles) and the flow calls
  `recorder.flush(store)`, or the task returns `recorder.drain()` and the flow calls `write_records`.

Rows go to `agent_calls` (one per HTTP attempt, failed ones included, so retries are visible) and
`trajectories` (the whole transcript as a compressed blob). Cost is computed from `config.prices[model]`::

    tasksynth sql "select sum(cost_usd) from agent_calls
                   where role = 'question_builder' and created_at >= current_date"
"""

from __future__ import annotations

import datetime as dt
import threading
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from tasksynth.config import Price


@dataclass
class CallRecord:
    """One chat-completion attempt: a row of `agent_calls`."""

    call_id: str
    role: str
    endpoint: str
    model: str
    prompt_tokens: int | None
    completion_tokens: int | None
    latency_s: float
    cost_usd: float
    status: str  # ok | error
    error: str | None = None
    flow_run_id: str | None = None
    trajectory_id: str | None = None
    created_at: dt.datetime = field(default_factory=dt.datetime.now)

    def row(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TrajectoryRecord:
    """One agent run: a row of `trajectories`; `transcript` is the JSON text stored as a blob."""

    trajectory_id: str
    role: str
    transcript: str
    turns: int
    stop_reason: str
    flow_run_id: str | None = None
    created_at: dt.datetime = field(default_factory=dt.datetime.now)

    def row(self, transcript_blob: str) -> dict[str, Any]:
        row = asdict(self)
        row["transcript"] = transcript_blob
        return row


class Recorder(Protocol):
    """Where an agent's records go."""

    def record_call(self, call: CallRecord) -> None: ...

    def record_trajectory(self, trajectory: TrajectoryRecord) -> None: ...


class NullRecorder:
    """Keeps nothing (for one-off use where no store exists)."""

    def record_call(self, call: CallRecord) -> None:
        pass

    def record_trajectory(self, trajectory: TrajectoryRecord) -> None:
        pass


class StoreRecorder:
    """Writes each record to the store at once; only in the process that holds the store for writing."""

    def __init__(self, store) -> None:
        self.store = store

    def record_call(self, call: CallRecord) -> None:
        write_records(self.store, [call], [])

    def record_trajectory(self, trajectory: TrajectoryRecord) -> None:
        write_records(self.store, [], [trajectory])


class BufferedRecorder:
    """Keeps records in memory to be written by the store's writer later; safe to share between threads
    and to pickle (to return it from a task that ran in another process)."""

    def __init__(self) -> None:
        self.calls: list[CallRecord] = []
        self.trajectories: list[TrajectoryRecord] = []
        self._lock = threading.Lock()

    def record_call(self, call: CallRecord) -> None:
        with self._lock:
            self.calls.append(call)

    def record_trajectory(self, trajectory: TrajectoryRecord) -> None:
        with self._lock:
            self.trajectories.append(trajectory)

    def drain(self) -> tuple[list[CallRecord], list[TrajectoryRecord]]:
        """Everything kept so far, which is then forgotten here."""
        with self._lock:
            calls, trajectories = self.calls, self.trajectories
            self.calls, self.trajectories = [], []
        return calls, trajectories

    def flush(self, store) -> tuple[int, int]:
        """Write everything kept so far to the store, in one transaction; (calls, trajectories) written."""
        calls, trajectories = self.drain()
        write_records(store, calls, trajectories)
        return len(calls), len(trajectories)

    def __getstate__(self) -> dict[str, Any]:
        with self._lock:
            return {"calls": list(self.calls), "trajectories": list(self.trajectories)}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.calls, self.trajectories = state["calls"], state["trajectories"]
        self._lock = threading.Lock()


def write_records(store, calls: list[CallRecord], trajectories: list[TrajectoryRecord]) -> None:
    """Write records in one transaction; a record already written (same id) is not written twice.
    Transcript blobs are written first, so no row points at a missing blob."""
    blobs = [store.put_blob(t.transcript, "application/json") for t in trajectories]
    with store.transaction():
        if calls:
            store.insert("agent_calls", [c.row() for c in calls])
        if trajectories:
            store.insert("trajectories", [t.row(b) for t, b in zip(trajectories, blobs, strict=True)])


def call_cost(prices: dict[str, Price], model: str, prompt_tokens: int | None,
              completion_tokens: int | None) -> float:
    """US dollars for one call at the configured per-million-token prices (0 for a model with no price)."""
    price = prices.get(model)
    if price is None:
        return 0.0
    return ((prompt_tokens or 0) * price.input_per_mtok + (completion_tokens or 0) * price.output_per_mtok) / 1e6
