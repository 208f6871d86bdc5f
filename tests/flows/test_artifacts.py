"""A flow run publishes its funnel and costs as Prefect artifacts, read back here through Prefect's client."""

from __future__ import annotations

import asyncio


def test_the_code_flow_publishes_its_funnel_and_costs(config):
    from flows.runtime import prepare_prefect

    prepare_prefect(config)
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    from flows.code import code_pipeline, sample_paths
    from tasksynth.store import open_store

    summary = code_pipeline(config=config, build=False, validate=False, **sample_paths(config))
    run_id = summary["run_id"]

    async def read():
        async with get_client() as client:
            return await client.read_artifacts(artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[run_id])))

    artifacts = {a.key: a for a in asyncio.run(read())}
    assert set(artifacts) == {"code-funnel", "code-costs", "code-environments"}
    table = artifacts["code-funnel"].data
    rows = table if isinstance(table, list) else __import__("json").loads(table)
    with open_store(config, read_only=True) as store:
        mined = store.query("select count(*) n from candidates")[0]["n"]
        dropped = store.query("select count(*) n from discards where source = 'git'")[0]["n"]
    assert {"stage": "candidates mined", "count": mined} in rows and mined > 0
    assert sum(r["count"] for r in rows if r["stage"].startswith("discarded at ")) == dropped
    assert "Kept tasks: 0" in artifacts["code-costs"].data
    environments = artifacts["code-environments"].data
    rows = environments if isinstance(environments, list) else __import__("json").loads(environments)
    assert {"stage": "candidates", "count": mined} in rows and {"stage": "valid", "count": 0} in rows
