"""`tasksynth search synth` killed with SIGKILL in the middle, then run again: no finished agent call is made
again, no row is written twice, and the funnel is the one an uninterrupted run gives."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "support"))

from corpus_fixtures import make_corpus  # noqa: E402
from pipeline_script import DOCUMENTS, EXPECTED_FUNNEL, script, write_config  # noqa: E402
from scripted_server import ScriptedServer  # noqa: E402

from tasksynth.config import load_config  # noqa: E402
from tasksynth.store import Store  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
KILL_AFTER_REQUESTS = 24  # of 51 in a whole run: the questions are done, answers and judgements are not


def slow(body):
    step = script(body)
    return {**step, "delay_s": 0.15}


def synth(cwd: Path) -> subprocess.Popen:
    exe = Path(sys.executable).with_name("tasksynth")
    env = {**os.environ, "PYTHONPATH": f"{ROOT}:{os.environ.get('PYTHONPATH', '')}"}
    env.pop("TASKSYNTH_HOME", None)
    return subprocess.Popen([str(exe), "search", "synth", "--entities", "8", "--seed", "3"], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def counts(store: Store) -> dict[str, int]:
    tables = ("agent_calls", "trajectories", "search_entities", "search_questions", "search_candidates",
              "search_verdicts", "search_items", "discards")
    return {t: store.query(f"SELECT count(*) AS n FROM {t}")[0]["n"] for t in tables}


def test_sigkill_mid_run_then_rerun_resumes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with ScriptedServer(slow) as server:
        config = load_config(write_config(tmp_path / "tasksynth.toml", tmp_path / "home", server.base_url))
        make_corpus(config, "valley", DOCUMENTS)
        child = synth(tmp_path)
        deadline = time.monotonic() + 240
        while len(server.requests) < KILL_AFTER_REQUESTS:
            assert child.poll() is None, child.stdout.read()
            assert time.monotonic() < deadline, "the flow made no progress"
            time.sleep(0.05)
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        requests_before = len(server.requests)
        with Store(config.store_path, read_only=True) as store:
            before = counts(store)
            assert store.query("SELECT status FROM flow_runs WHERE flow = 'search'")[0]["status"] == "running"
        assert 0 < before["agent_calls"] <= requests_before
        assert before["search_items"] < 5  # it was stopped before the end

        rerun = synth(tmp_path)
        output, _ = rerun.communicate(timeout=300)
        assert rerun.returncode == 0, output
        rerun_requests = len(server.requests) - requests_before

    with Store(config.store_path, read_only=True) as store:
        after = counts(store)
        duplicated = store.query("SELECT count(*) - count(DISTINCT (trajectory_id, created_at)) AS n FROM agent_calls")
    # every finished agent call was kept and not made again: the rerun made exactly the calls that were missing
    assert after["agent_calls"] == before["agent_calls"] + rerun_requests
    assert after["agent_calls"] == 51 and duplicated[0]["n"] == 0
    # the same rows as an uninterrupted run, none twice (verdicts: 5 truth checks, 12 judgements, 7 second
    # checks of wrong answers; no answer at all needs no second check)
    assert after == {"agent_calls": 51, "trajectories": after["trajectories"], "search_entities": 8,
                     "search_questions": 8, "search_candidates": 12, "search_verdicts": 5 + 12 + 7,
                     "search_items": 5, "discards": 7}
    for stage, number in EXPECTED_FUNNEL.items():
        assert f"{stage.replace('_', ' '):<10} {number}" in output

    # `search report` prints the same funnel from the store, with the discards and the cost per kept item
    env = {**os.environ, "PYTHONPATH": f"{ROOT}:{os.environ.get('PYTHONPATH', '')}"}
    env.pop("TASKSYNTH_HOME", None)
    report = subprocess.run([str(Path(sys.executable).with_name("tasksynth")), "search", "report", "--corpus",
                             "valley"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert report.returncode == 0, report.stderr
    for stage, number in EXPECTED_FUNNEL.items():
        assert f"{stage.replace('_', ' '):<10} {number}" in report.stdout
    assert ["search.keep", "ambiguous", "1"] in [line.split() for line in report.stdout.splitlines()]
    assert "per kept item: " in report.stdout
    assert "51 calls" in report.stdout
