"""The demo's code-interpreter part on the real sandbox kernel, with a task writer that cannot write a task
(as the small bundled model usually cannot): the shipped notebook repository is mined into one kept task
(its data file shipped with it in the export) and one discard, the synthesized task is discarded with its
reason, and the demo prints both as the README says."""

from __future__ import annotations

import hashlib
import json

import pytest
from scripted_server import ScriptedServer, reply

pytestmark = pytest.mark.docker
QUESTION = "How many days of 2015 had more than 10 mm of precipitation?"


def test_the_demo_mines_the_sample_repository_and_reports_the_synthesis(home, tmp_path, kernel_image_tag):
    from flows.demo import demo_agents
    from flows.notebook import notebook_demo
    from flows.runtime import prepare_prefect
    from notebook_env.datasets import PACKAGED, packaged_file
    from tasksynth.cli.doctor import notebook_summary
    from tasksynth.config import RoleConfig, load_config
    from tasksynth.export import export_tasks
    from tasksynth.store import open_store
    from verifiers.notebook import grade_answer

    (tmp_path / "tasksynth.toml").write_text('[docker]\nmemory = "768m"\n\n[flows]\nretries = 0\n')
    config = load_config()
    prepare_prefect(config)
    with ScriptedServer(lambda body: reply("I am not sure what to ask.")) as server:
        # the demo's agents: every notebook role at the one endpoint, with the demo's small budgets
        config = demo_agents(config, RoleConfig(base_url=server.base_url, model="demo-agent", max_retries=1,
                                                backoff_s=0.01))
        result = notebook_demo(config)
    # the task writer was asked, with the demo's budget for it
    assert [r.body.get("max_tokens") for r in server.requests][:1] == [256]

    assert result["mined"] == {"repo": "seattle-notebooks", "outcomes": {"discarded: unexecuted": 1, "kept": 1}}
    funnel = result["synth"]["funnel"]
    assert funnel["tasks_written"] == 1 and funnel["kept"] == 0 and funnel["discards"] == {"unparseable": 1}
    assert notebook_summary(result) == [
        "notebook: mined seattle-notebooks: 1 of 2 notebook(s) kept; discards: unexecuted 1",
        "          synthesized on seattle-weather: 1 task(s) written, 0 kept (0 of 0 attempts solved); "
        "discards: unparseable 1"]

    table = packaged_file(PACKAGED["seattle-weather"]).read_bytes()
    with open_store(config) as store:
        mined = store.query("SELECT question, answer, data_files FROM notebook_tasks WHERE source = 'mine' "
                            "AND status = 'kept'")
        exported = export_tasks(store, tmp_path / "export", overwrite=True)
    assert [(m["question"], m["answer"]) for m in mined] == [(QUESTION, "34")]
    files = mined[0]["data_files"]
    assert (json.loads(files) if isinstance(files, str) else files) == {
        "data/seattle-weather.csv": hashlib.sha256(table).hexdigest()}
    assert exported.counts["code_interpreter"] == 1
    import pyarrow.parquet as pq

    row = next(row for path in (tmp_path / "export").rglob("*.parquet") for row in pq.read_table(path).to_pylist())
    assert "/data/seattle-notebooks/data/seattle-weather.csv" in row["prompt"][1]["content"]
    verifier = json.loads(row["verifier"])
    assert grade_answer(verifier["answer_format"], verifier["answer"], "34").correct
    shipped = tmp_path / "export" / "code_interpreter" / "files" / "seattle-notebooks" / "data" / "seattle-weather.csv"
    assert shipped.read_bytes() == table
