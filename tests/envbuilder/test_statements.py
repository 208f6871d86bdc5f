"""Problem-statement drafting: the statement_writer agent against a scripted OpenAI-compatible server on
127.0.0.1, driven through the code flow (a real Prefect run) over a real DuckDB store, then exported."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "support"))

from scripted_server import ScriptedServer, error, reply  # noqa: E402

from envbuilder.statements import parse_statement  # noqa: E402
from tasksynth.config import load_config  # noqa: E402
from tasksynth.export import export_tasks  # noqa: E402
from tasksynth.store import open_store  # noqa: E402

COMMIT_MESSAGE = "Fix subtract: it added its arguments"
GOLD_PATCH = """diff --git a/minicalc/ops.py b/minicalc/ops.py
--- a/minicalc/ops.py
+++ b/minicalc/ops.py
@@ -4,2 +4,2 @@ def add(a, b):
 def subtract(a, b):
-    return a + b
+    return a - b
"""
TEST_PATCH = """diff --git a/tests/test_ops.py b/tests/test_ops.py
--- a/tests/test_ops.py
+++ b/tests/test_ops.py
@@ -1,0 +1,2 @@
+def test_subtract():
+    assert subtract(5, 3) == 2
"""
GOOD = ("Calling minicalc.ops.subtract(5, 3) returns 8 instead of 2: subtract gives the sum of its arguments. "
        "It should return the first argument minus the second.")
DIFF = "Here is what changed:\ndiff --git a/minicalc/ops.py b/minicalc/ops.py\n-    return a + b\n+    return a - b"


@pytest.fixture
def server():
    with ScriptedServer() as started:
        yield started


@pytest.fixture
def make_config(tmp_path, server):
    """A config whose statement_writer role points at the scripted server (quick retries, no Prefect retries)."""
    from flows.runtime import prepare_prefect

    def make(**role):
        environ = {"TASKSYNTH_HOME": str(tmp_path / "home"), "TASKSYNTH_FLOWS__RETRIES": "0",
                   "TASKSYNTH_AGENTS__STATEMENT_WRITER__BASE_URL": server.base_url,
                   "TASKSYNTH_AGENTS__STATEMENT_WRITER__MODEL": "scripted-model",
                   "TASKSYNTH_AGENTS__STATEMENT_WRITER__BACKOFF_S": "0.01",
                   "TASKSYNTH_AGENTS__STATEMENT_WRITER__MAX_RETRIES": "1",
                   "TASKSYNTH_AGENTS__STATEMENT_WRITER__TIMEOUT_S": "5",
                   **{f"TASKSYNTH_AGENTS__STATEMENT_WRITER__{k.upper()}": str(v) for k, v in role.items()}}
        config = load_config(environ=environ)
        config.home_path.mkdir(parents=True, exist_ok=True)
        prepare_prefect(config)
        with open_store(config) as store:
            _validated_tasks(store)
        return config

    return make


def _validated_tasks(store) -> None:
    """Two candidates as the validation leaves them: one valid task, one rejected."""
    for name, verdict in (("valid", "valid"), ("rejected", "rejected")):
        store.insert("candidates", [{"candidate_id": f"c-{name}", "source": "git", "instance_id": f"calc-{name}",
                                     "repo": "tasksynth/minicalc", "base_commit": "abc", "patch": GOLD_PATCH,
                                     "test_patch": TEST_PATCH, "problem_statement": COMMIT_MESSAGE}])
        store.insert("code_tasks", [{"instance_id": f"calc-{name}", "candidate_id": f"c-{name}",
                                     "repo": "tasksynth/minicalc", "base_commit": "abc", "image": "img",
                                     "verdict": verdict, "reason": None if verdict == "valid" else "pass_to_fail",
                                     "fail_to_pass": ["tests/test_ops.py::test_subtract"]}])


def draft(config) -> dict:
    """The code flow with only the drafting stage, as `tasksynth` runs it."""
    from flows.code import code_pipeline
    from flows.runtime import task_runner

    summary = code_pipeline.with_options(task_runner=task_runner(config))(
        config=config, build=False, validate=False, draft_statements=True)
    return summary["drafts"]


def stored(config, sql: str) -> list[dict]:
    with open_store(config, read_only=True) as store:
        return store.query(sql)


def exported_metadata(config, tmp_path) -> dict:
    with open_store(config) as store:
        export_tasks(store, tmp_path / "export", kinds=["code"], overwrite=True)
    (row,) = pq.read_table(next((tmp_path / "export" / "code").glob("*.parquet"))).to_pylist()
    return row


def test_a_good_draft_is_stored_with_its_agent_records_and_exported(server, make_config, tmp_path):
    server.add(reply(GOOD, usage=(180, 40)))
    config = make_config()
    report = draft(config)

    assert report["ran"] == 1 and report["outcomes"] == {"ok": 1}  # the rejected task is not drafted
    (row,) = stored(config, "SELECT * FROM statement_drafts")
    assert (row["instance_id"], row["status"], row["statement"], row["reason"]) == ("calc-valid", "ok", GOOD, None)
    assert (row["role"], row["model"]) == ("statement_writer", "scripted-model")
    # The agent saw the commit message, the gold patch and the test file names, with drafting's settings.
    (request,) = server.requests
    user = request.messages[-1]["content"]
    assert COMMIT_MESSAGE in user and "return a - b" in user and "tests/test_ops.py" in user
    assert request.messages[0]["role"] == "system" and "issue" in request.messages[0]["content"]
    assert (request.body["max_tokens"], request.body["temperature"]) == (200, 0.2)
    assert "tools" not in request.body
    # Its call and trajectory are in the store, written by the flow process.
    (call,) = stored(config, "SELECT * FROM agent_calls")
    assert (call["role"], call["model"], call["prompt_tokens"], call["completion_tokens"], call["status"]) == (
        "statement_writer", "scripted-model", 180, 40, "ok")
    (trajectory,) = stored(config, "SELECT * FROM trajectories")
    assert trajectory["trajectory_id"] == row["trajectory_id"] == call["trajectory_id"]
    # The original statement stays; the draft goes to the export's metadata.
    assert stored(config, "SELECT problem_statement FROM candidates WHERE candidate_id = 'c-valid'") == [
        {"problem_statement": COMMIT_MESSAGE}]
    task = exported_metadata(config, tmp_path)
    assert task["prompt"][-1]["content"] == COMMIT_MESSAGE
    assert json.loads(task["metadata"])["drafted_statement"] == GOOD


def test_a_draft_that_shows_the_diff_is_rejected_with_a_reason(server, make_config, tmp_path):
    server.add(reply(DIFF))
    config = make_config()
    assert draft(config)["outcomes"] == {"contains_diff": 1}
    (row,) = stored(config, "SELECT status, statement, reason, detail FROM statement_drafts")
    assert (row["status"], row["statement"], row["reason"]) == ("rejected", None, "contains_diff")
    assert "diff --git" in row["detail"]
    assert "drafted_statement" not in json.loads(exported_metadata(config, tmp_path)["metadata"])


def test_an_endpoint_error_is_recorded_and_the_next_run_tries_again(server, make_config):
    server.add(error(500, "model crashed"), error(500, "model crashed"))  # the first try and its one retry
    config = make_config()
    assert draft(config)["outcomes"] == {"endpoint_error": 1}
    (row,) = stored(config, "SELECT status, reason, detail, statement FROM statement_drafts")
    assert (row["status"], row["reason"], row["statement"]) == ("error", "endpoint_error", None)
    assert "HTTP 500: model crashed" in row["detail"]
    calls = stored(config, "SELECT status, error FROM agent_calls")
    assert [c["status"] for c in calls] == ["error", "error"]

    server.add(reply(GOOD))
    report = draft(config)
    assert (report["ran"], report["outcomes"]) == (1, {"ok": 1})
    assert stored(config, "SELECT status, statement FROM statement_drafts") == [{"status": "ok", "statement": GOOD}]


def test_a_rerun_skips_drafted_tasks_until_the_role_settings_change(server, make_config, tmp_path):
    server.add(reply(GOOD))
    config = make_config()
    assert draft(config)["ran"] == 1

    report = draft(config)  # the script is empty: a request now would be answered 500
    assert (report["ran"], report["already_done"]) == (0, 1)
    assert len(server.requests) == 1 and server.exhausted == 0

    server.add(reply("Subtracting with minicalc gives the sum of both numbers, not their difference."))
    changed = make_config(max_tokens=120)  # same home and store, other settings: a new draft replaces the old
    assert draft(changed)["ran"] == 1
    assert server.requests[-1].body["max_tokens"] == 120
    (row,) = stored(changed, "SELECT statement FROM statement_drafts")
    assert row["statement"].startswith("Subtracting with minicalc")


@pytest.mark.parametrize("text, reason", [
    ("", "empty"),
    ("<think>the fix is easy</think>", "empty"),
    ("### ?? ... !!! 0x0 == 12 ** ((()))", "garbled"),
    ("subtract broken", "too_short"),
    ("the bug " * 30, "repetitive"),
    ("subtract is wrong; change it to `return a - b` and it works.", "reveals_fix"),
    ("Subtract is wrong:\n@@ -4,2 +4,2 @@\nplease look", "contains_diff"),
    ("Subtract is wrong:\n+    return b - a\nplease look at it soon", "contains_diff"),
])
def test_unusable_replies_give_no_statement_and_a_reason(text, reason):
    assert parse_statement(text, GOLD_PATCH)[:2] == (None, reason)


def test_a_reply_in_a_fence_cut_by_max_tokens_or_looping_is_kept_up_to_its_last_good_sentence():
    fenced = f"```\n{GOOD}\n```"
    assert parse_statement(fenced, GOLD_PATCH) == (GOOD, None, None)
    cut = GOOD + " Also the docs of subtract say it"
    assert parse_statement(cut, GOLD_PATCH, cut=True) == (GOOD, None, None)
    # What a 135M model does until max_tokens: the same paragraph again and again, the last one cut.
    looping = "\n\n".join([GOOD] * 4) + "\n\nCalling minicalc.ops.subtract(5, 3) ret"
    assert parse_statement(looping, GOLD_PATCH, cut=True) == (GOOD, None, None)
