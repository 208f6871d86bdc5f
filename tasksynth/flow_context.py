"""Which Prefect flow run, if any, the calling code runs in: the id that ties store rows to a run."""

from __future__ import annotations

import sys


def current_flow_run_id() -> str | None:
    if "prefect" not in sys.modules:  # not inside a flow; importing Prefect just to learn that is slow
        return None
    try:
        from prefect.runtime import flow_run

        return str(flow_run.id) if flow_run.id else None
    except Exception:  # noqa: BLE001 - outside a flow run there is no id
        return None
