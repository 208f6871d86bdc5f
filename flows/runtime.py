"""What every flow shares: Prefect's settings, the task runner from config, and resumable steps.

A step is a pure function of its inputs that runs as a Prefect task (with retries and exponential backoff)
anywhere the task runner puts it: a thread here, a Dask worker elsewhere. Its output comes back to the flow
process, the store's only writer, which records it together with the step's content-hash key in one
transaction. A rerun after a crash (SIGKILL included) skips every key already recorded, so finished work is
not redone and nothing is written twice; work that was in flight when the crash came is simply done again.
"""

from __future__ import annotations

import contextlib
import os
import sys
import uuid
from pathlib import Path
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from tasksynth.config import Config
from tasksynth.flow_context import current_flow_run_id


def prepare_prefect(config: Config) -> None:
    """Keep Prefect's own database and logs in the tasksynth home unless the user points Prefect elsewhere.

    Must run before `prefect` is imported: Prefect reads these settings at import time. With no
    PREFECT_API_URL, flows run against the home's long-lived local server (started here when none runs), or
    against a temporary server per process when `flows.prefect_server = "ephemeral"`."""
    os.environ.setdefault("PREFECT_HOME", str(config.home_path / "prefect"))
    Path(os.environ["PREFECT_HOME"]).expanduser().mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # Prefect's client sends usage events to a third-party service unless told not to; nothing of ours leaves
    # the machine uninvited (this also spares each command that service's start-up and its settings request).
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("PREFECT_SERVER_LOGGING_LEVEL", "WARNING")
    # Prefect gives its ephemeral server 20 s to start; a busy machine (CI on two cores) can take longer.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    os.environ.setdefault("PREFECT_UI_ENABLED", "false" if not os.environ.get("PREFECT_API_URL") else "true")
    # Our store keeps results; Prefect's result persistence would only duplicate them on disk.
    os.environ.setdefault("PREFECT_RESULTS_PERSIST_BY_DEFAULT", "false")
    _use_home_server(config)


def _use_home_server(config: Config) -> None:
    """Point Prefect at this home's long-lived server (flows/prefect_server.py), started on demand, unless the
    user set PREFECT_API_URL (their server is used as it is) or chose Prefect's ephemeral mode."""
    from flows import prefect_server

    owned = os.environ.get(prefect_server.OWNED_URL_ENV)
    configured = os.environ.get("PREFECT_API_URL")
    if configured and configured != owned:
        return
    prefect_server.reap_orphaned_ephemeral_servers(config)
    if config.flows.prefect_server != "home":
        return
    url = prefect_server.ensure_server(config)
    os.environ["PREFECT_API_URL"] = os.environ[prefect_server.OWNED_URL_ENV] = url
    if "prefect" in sys.modules:  # Prefect read its settings when it was imported: refresh them if they differ
        from prefect.context import refresh_global_settings_context
        from prefect.settings import get_current_settings

        if get_current_settings().api.url != url:
            refresh_global_settings_context()


def task_runner(config: Config):
    """Prefect's thread pool, or Dask through prefect-dask so steps can spread over many machines."""
    if config.flows.task_runner == "dask":
        try:
            from prefect_dask import DaskTaskRunner
        except ImportError as exc:  # an optional extra
            from tasksynth.errors import ConfigError

            raise ConfigError("flows.task_runner = 'dask' needs `pip install tasksynth[dask]`") from exc
        if config.flows.dask_address:
            return DaskTaskRunner(address=config.flows.dask_address)
        return DaskTaskRunner(cluster_kwargs={"n_workers": config.flows.max_workers, "threads_per_worker": 1,
                                              "processes": True, "host": "127.0.0.1",
                                              "dashboard_address": None})
    from prefect.task_runners import ThreadPoolTaskRunner

    return ThreadPoolTaskRunner(max_workers=config.flows.max_workers)


def step_task(fn: Callable[..., Any], config: Config, *, name: str | None = None, retries: int | None = None):
    """`fn` as a Prefect task with the configured retries and exponential backoff with jitter."""
    from prefect import task
    from prefect.tasks import exponential_backoff

    retries = config.flows.retries if retries is None else retries
    return task(fn, name=name or fn.__name__, retries=retries,
                retry_delay_seconds=exponential_backoff(backoff_factor=config.flows.retry_delay_s),
                retry_jitter_factor=0.5, persist_result=False)


@dataclass
class StepReport:
    """The funnel of one step: how many items it saw, skipped as already done, ran, and failed."""

    step: str
    seen: int = 0
    already_done: int = 0
    ran: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"seen": self.seen, "already_done": self.already_done, "ran": self.ran, "failed": self.failed,
                "errors": self.errors[:20]}


_progress_listeners: list[Callable[[StepReport, int], None]] = []


@contextlib.contextmanager
def progress_listener(listener: Callable[[StepReport, int], None]) -> Iterator[None]:
    """Receive (report, total) as every step advances; the CLI draws its progress bars from this."""
    _progress_listeners.append(listener)
    try:
        yield
    finally:
        _progress_listeners.remove(listener)


def _notify(report: StepReport, total: int) -> None:
    for listener in list(_progress_listeners):
        listener(report, total)


def run_steps(store, step: str, items: Iterable[Any], run: Callable[[Any], Any], *, key: Callable[[Any], str],
              record: Callable[[Any, Any], None], config: Config, run_id: str | None = None,
              on_progress: Callable[[StepReport], None] | None = None) -> StepReport:
    """Run `run(item)` as Prefect tasks for every item whose key is not yet finished, and `record(item, output)`
    in the flow process, in the same transaction that marks the key finished.

    An item whose task fails after its retries is counted and reported, not recorded: the rest go on and a
    rerun tries it again."""
    from prefect.futures import as_completed

    report = StepReport(step)
    pending = {}
    task = step_task(run, config, name=step)
    for item in items:
        report.seen += 1
        item_key = key(item)
        if store.finished_step(step, item_key) is not None:
            report.already_done += 1
            continue
        pending[task.submit(item)] = (item, item_key)
    _notify(report, report.seen)
    for future in as_completed(list(pending)):
        item, item_key = pending[future]
        try:
            output = future.result()
        except Exception as exc:  # noqa: BLE001 - one failed item must not stop the batch
            report.failed += 1
            report.errors.append(f"{item_key}: {type(exc).__name__}: {exc}")
        else:
            with store.transaction():
                record(item, output)
                store.finish_step(step, item_key, {"ok": True}, run_id)
            report.ran += 1
        if on_progress:
            on_progress(report)
        _notify(report, report.seen)
    return report


@contextlib.contextmanager
def flow_run(store, flow: str, params: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Record a flow run in the store: running, then completed with its summary, or failed. Runs that an
    earlier, killed process left `running` are marked crashed first."""
    from tasksynth.docker.ownership import process_start_time

    prefect_run_id = current_flow_run_id()
    run_id = prefect_run_id or str(uuid.uuid4())
    summary: dict[str, Any] = {"run_id": run_id}
    crashed = mark_crashed_runs(store)
    if crashed and prefect_run_id:
        mark_crashed_in_prefect(crashed)
    store.insert("flow_runs", [{"run_id": run_id, "flow": flow, "params": params, "status": "running",
                                "pid": os.getpid(), "process_started": process_start_time(os.getpid())}],
                 on_conflict="replace")
    try:
        yield summary
    except BaseException:
        store.execute("UPDATE flow_runs SET status = 'failed', finished_at = current_timestamp, summary = ? "
                      "WHERE run_id = ?", [_json(summary), run_id])
        raise
    store.execute("UPDATE flow_runs SET status = 'completed', finished_at = current_timestamp, summary = ? "
                  "WHERE run_id = ?", [_json(summary), run_id])


def mark_crashed_runs(store) -> list[str]:
    """Mark `crashed` every run still `running` whose process is gone (same pid and same start time, or none
    recorded); returns their run ids. A flow holds the store, its only writer, for as long as it runs, so a run
    of another process that is still `running` when a flow starts was killed."""
    from tasksynth.docker.ownership import process_start_time

    running = store.query("SELECT run_id, pid, process_started FROM flow_runs WHERE status = 'running'")
    gone = [r["run_id"] for r in running
            if r["pid"] is None or process_start_time(r["pid"]) != r["process_started"]]
    if gone:
        store.execute("UPDATE flow_runs SET status = 'crashed', finished_at = current_timestamp "
                      f"WHERE run_id IN ({', '.join('?' for _ in gone)})", gone)
    return gone


def mark_crashed_in_prefect(run_ids: list[str]) -> list[str]:
    """Mark Crashed, on the Prefect server this flow runs against, the runs among `run_ids` (crashed runs of
    the store, whose ids are their Prefect flow run ids) that it still shows unfinished; returns their ids.

    A run that a SIGKILL ended could not report its end, and our runs send no heartbeats to the home's server
    (flows/prefect_flow.py): without this, the UI would show it running for ever. Runs the server does not
    know (made against another server) are left alone; a server that does not answer costs a warning, not
    the flow."""
    import logging

    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound
    from prefect.states import Crashed

    marked = []
    try:
        with get_client(sync_client=True) as client:
            for run_id in run_ids:
                try:
                    run = client.read_flow_run(uuid.UUID(run_id))
                except (ValueError, ObjectNotFound):  # not a Prefect run id, or another server's run
                    continue
                if run.state is not None and run.state.is_final():
                    continue
                client.set_flow_run_state(run.id, Crashed(message="its process ended without reporting "
                                                                  "(killed); found by the next flow of its home"),
                                          force=True)
                marked.append(run_id)
    except Exception as exc:  # noqa: BLE001 - the store already records the crash; the UI is a view of it
        logging.getLogger(__name__).warning("could not mark crashed runs on the Prefect server: %s", exc)
    return marked


def _json(value: Any) -> str:
    import json

    return json.dumps(value, default=str)
