"""The demo with its agent: the bundled runner started by the demo itself when nothing answers, problem
statements drafted by it, the store and the export; and the runner helper's decisions on its own."""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "support"))

from scripted_server import ScriptedServer  # noqa: E402

from flows.runner_process import RunnerUnavailable, endpoint_answers, local_runner, start_runner  # noqa: E402
from tasksynth.config import load_config  # noqa: E402
from tasksynth.store import open_store  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.mark.docker
@pytest.mark.model
def test_the_demo_starts_the_runner_drafts_statements_and_stops_it(home, monkeypatch, capfd):
    from flows.registry import run_flow
    from tasksynth.docker.engine import engine_status

    status = engine_status()
    if not status.ok:
        pytest.fail(f"this test needs a Docker engine (`make test` starts one): {status.detail}")
    url = f"http://127.0.0.1:{free_port()}/v1"
    monkeypatch.setenv("TASKSYNTH_AGENTS__STATEMENT_WRITER__BASE_URL", url)
    monkeypatch.setenv("TASKSYNTH_AGENTS__STATEMENT_WRITER__MAX_TOKENS", "48")  # a sentence or two; fast
    monkeypatch.setenv("TASKSYNTH_FLOWS__RETRIES", "0")
    config = load_config()
    assert not endpoint_answers(url)

    result = run_flow(config, "demo", {"out_dir": str(home / "export" / "demo")})

    runner = result["runner"]
    assert runner["started"] and runner["endpoint"] == url and runner["ready_s"] > 0
    err = capfd.readouterr().err
    assert f"starting the bundled runner (`tasksynth runner serve --port {url.split(':')[2][:-3]}`" in err
    assert "runner: ready at" in err and "runner: stopped" in err
    # The runner is gone: its process and its port.
    assert gone(runner["pid"]) and not endpoint_answers(url)
    assert "runner serve --host 127.0.0.1" in (home / "logs" / "runner.log").read_text()

    with open_store(config, read_only=True) as store:
        valid = store.query("SELECT t.instance_id, t.candidate_id, d.status, d.reason, d.statement, d.model "
                            "FROM code_tasks t LEFT JOIN statement_drafts d USING (candidate_id) "
                            "WHERE t.verdict = 'valid' ORDER BY t.instance_id")
        calls = store.query("SELECT * FROM agent_calls WHERE role = 'statement_writer'")
        untouched = store.query("SELECT count(*) AS n FROM candidates WHERE problem_statement IS NULL")
    assert valid, "the demo made no valid task"
    for task in valid:
        assert task["status"] in ("ok", "rejected"), task  # an answer came back for every valid task
        assert task["model"] == "smollm2-135m-dsa"
        if task["status"] == "ok":
            assert task["statement"] and "diff --git" not in task["statement"]
        else:
            assert task["reason"] and task["statement"] is None
    assert untouched == [{"n": 0}]
    # What the README promises: a draft was asked for every valid task, and the output counts them by outcome
    # (accepted, or the reason each was rejected), as the store has them.
    outcomes = result["drafts"]["outcomes"]
    assert sum(outcomes.values()) == len(valid)
    assert outcomes.get("ok", 0) == sum(task["status"] == "ok" for task in valid)
    assert {k: v for k, v in outcomes.items() if k != "ok"} == dict(
        Counter(task["reason"] for task in valid if task["status"] == "rejected"))
    assert len(calls) >= len(valid)
    for call in calls:
        assert call["model"] == "smollm2-135m-dsa" and call["status"] == "ok"
        assert call["prompt_tokens"] > 0 and 0 < call["completion_tokens"] <= 48

    # the general kind ran on the same runner: one environment, built or discarded with its reason
    funnel = result["general"]["funnel"]
    assert funnel["environments"]["made"] == 1
    with open_store(config, read_only=True) as store:
        envs = store.query("SELECT status, reason FROM general_environments")
        builder_calls = store.query("SELECT model, status FROM agent_calls WHERE role = 'tool_writer'")
    assert envs[0]["status"] == "built" or envs[0]["reason"]
    assert builder_calls and all(c["model"] == "smollm2-135m-dsa" for c in builder_calls)

    # the code-interpreter part: the sample notebook repository mined (one kept whatever the model does, one
    # discarded), one task synthesized by the model, kept or discarded with its reason; the mined task exported
    notebook = result["notebook"]
    assert notebook["mined"]["outcomes"] == {"discarded: unexecuted": 1, "kept": 1}
    synthesized = notebook["synth"]["funnel"]
    assert synthesized["tasks_written"] == 1 and (synthesized["kept"] == 1 or sum(synthesized["discards"].values()))
    assert result["export"]["counts"]["code_interpreter"] >= 1

    exported = {}
    for shard in (home / "export" / "demo" / "code").glob("*.parquet"):
        for row in pq.read_table(shard).to_pylist():
            exported[json.loads(row["metadata"])["instance_id"]] = row
    assert set(exported) == {t["instance_id"] for t in valid}
    for task in valid:
        metadata = json.loads(exported[task["instance_id"]]["metadata"])
        if task["status"] == "ok":
            assert metadata["drafted_statement"] == task["statement"]
        else:
            assert "drafted_statement" not in metadata


def test_an_endpoint_that_already_answers_is_used_and_nothing_is_started(tmp_path):
    lines: list[str] = []
    with ScriptedServer() as server:
        url = server.base_url
        config = load_config(environ={"TASKSYNTH_HOME": str(tmp_path / "home"),
                                      "TASKSYNTH_AGENTS__STATEMENT_WRITER__BASE_URL": url})
        with local_runner(config, "statement_writer", say=lines.append) as runner:
            assert runner.wait_ready() == 0.0
    assert not runner.started and runner.pid is None
    assert lines == [f"runner: an endpoint already answers at {url}; using it "
                     f"(model smollm2-135m-dsa)"]
    assert not (tmp_path / "home" / "logs" / "runner.log").exists()


def test_a_remote_endpoint_is_used_as_configured(tmp_path):
    lines: list[str] = []
    config = load_config(environ={"TASKSYNTH_HOME": str(tmp_path / "home"),
                                  "TASKSYNTH_AGENTS__STATEMENT_WRITER__BASE_URL": "https://api.deepseek.com/v1",
                                  "TASKSYNTH_AGENTS__STATEMENT_WRITER__MODEL": "deepseek-chat"})
    runner = start_runner(config, "statement_writer", say=lines.append)  # no request is sent to it
    assert not runner.started
    assert lines == ["runner: using the configured endpoint https://api.deepseek.com/v1 (model deepseek-chat)"]


def test_a_runner_that_dies_at_start_is_a_clear_error_with_its_log(tmp_path):
    lines: list[str] = []
    port = free_port()
    config = load_config(environ={"TASKSYNTH_HOME": str(tmp_path / "home"),
                                  "TASKSYNTH_AGENTS__STATEMENT_WRITER__BASE_URL": f"http://127.0.0.1:{port}/v1",
                                  "TASKSYNTH_RUNNER__MODEL": str(tmp_path / "no-such-model.gguf")})
    started = time.monotonic()
    with pytest.raises(RunnerUnavailable) as raised:
        with local_runner(config, "statement_writer", say=lines.append, ready_timeout_s=120) as runner:
            runner.wait_ready()
    message = str(raised.value)
    assert f"the bundled runner exited with code 1 before it answered at http://127.0.0.1:{port}/v1" in message
    assert "no-such-model.gguf" in message  # the tail of runner.log says what went wrong
    assert gone(runner.pid) and time.monotonic() - started < 120


def test_the_demo_prints_a_line_per_kind():
    from tasksynth.cli.doctor import demo_summary

    result = {"code": {"verdicts": {"valid": 4, "by_verdict": {"valid": 4, "flaky": 1}}},
              "drafts": {"outcomes": {"ok": 3, "rejected": 1}},
              "search": {"funnel": {"entities": 2, "questions": 0, "kept": 0,
                                    "discards": [{"stage": "search.question", "reason": "unparseable_question",
                                                  "items": 2}]}},
              "general": {"category": "library loans", "funnel": {"environments": {"made": 1, "built": 0},
                                                                  "kept_tasks": 0,
                                                                  "discards": {"general.environment: no_manifest": 1}}},
              "notebook": {"mined": {"repo": "seattle-notebooks", "outcomes": {"discarded: unexecuted": 1, "kept": 1}},
                           "synth": {"dataset": "seattle-weather", "funnel": {
                               "tasks_written": 1, "passed_filters": 0, "kept": 0,
                               "attempts": {"graded": 0, "solved": 0, "errors": 0},
                               "discards": {"unparseable": 1}}}},
              "export": {"counts": {"code": 4}, "dir": "/x"}}
    lines = demo_summary(result)
    assert [line.split(":")[0].strip() for line in lines if not line.startswith(" ")] == \
        ["code", "search", "general", "notebook", "export"]
    assert "search:  2 entities, 0 questions, 0 kept; discards: unparseable_question 2" in lines
    assert "notebook: mined seattle-notebooks: 1 of 2 notebook(s) kept; discards: unexecuted 1" in lines
    assert ("          synthesized on seattle-weather: 1 task(s) written, 0 kept (0 of 0 attempts solved); "
            "discards: unparseable 1") in lines
    assert demo_summary({"notebook": {"error": "the kernel's libraries cannot be had: x"}})[2] == \
        "notebook: not run: the kernel's libraries cannot be had: x"
