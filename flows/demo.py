"""The main job on shipped data, end to end: the sample repository's history -> candidates -> Docker
environments -> validation -> the store -> a Parquet export. What `tasksynth demo` and `make demo` run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow

from flows.code import code_pipeline, sample_paths
from tasksynth.config import Config, load_config
from tasksynth.export import export_tasks
from tasksynth.store import open_store


@flow(name="demo", validate_parameters=False)
def demo_flow(config: Config | None = None, out_dir: str | None = None, config_path: str | None = None,
              sample: str = "minicalc") -> dict[str, Any]:
    config = config or load_config(config_path)
    out = Path(out_dir) if out_dir else config.home_path / "export" / "demo"
    code = code_pipeline(config=config, **sample_paths(config, sample))
    with open_store(config) as store:
        exported = export_tasks(store, out, overwrite=True)
        tasks = store.query("SELECT instance_id, verdict, reason, len(fail_to_pass) AS f2p, "
                            "len(pass_to_pass) AS p2p FROM code_tasks ORDER BY instance_id")
    return {"code": {k: code.get(k) for k in ("mine", "verdicts") if k in code}, "tasks": tasks,
            "export": {"dir": str(exported.out_dir), "counts": exported.counts,
                       "shards": [s["path"] for s in exported.shards]}}
