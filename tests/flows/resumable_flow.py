"""A small flow built only from the product's flow runtime, run by the tests in a child process so that it
can be killed (SIGKILL) in the middle and run again."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from flows.runtime import flow_run, prepare_prefect, run_steps, task_runner
from tasksynth.config import load_config
from tasksynth.store import open_store

EXECUTIONS = Path(os.environ["EXECUTIONS_LOG"])
DELAY = float(os.environ.get("STEP_DELAY", "0.2"))


def square(n: int) -> dict:
    with EXECUTIONS.open("a") as log:  # one line per execution, so the test can count re-runs
        log.write(f"{n}\n")
    time.sleep(DELAY)
    return {"n": n, "square": n * n}


def main(count: int) -> None:
    config = load_config()
    prepare_prefect(config)
    from flows.prefect_flow import flow  # as the product's flows: no heartbeats to the home's server

    @flow(name="squares", task_runner=task_runner(config), validate_parameters=False)
    def squares(count: int) -> dict:
        with open_store(config) as store, flow_run(store, "squares", {"count": count}) as summary:
            store.execute("create table if not exists squares (n integer primary key, square integer)")

            def record(item, output):
                store.insert("squares", [output])

            report = run_steps(store, "square", range(count), square, key=str, record=record, config=config,
                               run_id=summary["run_id"],
                               on_progress=lambda r: print(f"done {r.ran}", flush=True))
            summary.update(report.as_dict())
            return summary

    print(squares(count), flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]))
