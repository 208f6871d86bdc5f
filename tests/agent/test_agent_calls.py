"""Robust calls (retries, timeouts, per-endpoint concurrency) and accounting (agent_calls, trajectories, costs
queried with `tasksynth sql`), against scripted servers on 127.0.0.1 and a real DuckDB store."""

from __future__ import annotations

import asyncio
import json
import os
import pickle
import socket
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from scripted_server import error, reply, tool_call

from agent import Agent, BufferedRecorder, StopReason, StoreRecorder, write_records
from agent.endpoint import backoff_delay
from tasksynth.store import open_store


def add(a: int, b: int) -> int:
    """Add two integers.

    Args:
        a: First.
        b: Second.
    """
    return a + b


# ---------------------------------------------------------------------------------------------- retries


def test_429_and_5xx_are_retried_and_every_attempt_is_accounted(scripted, make_config):
    server = scripted([error(429, "slow down", retry_after=0), error(503, "overloaded"), error(500), reply("ok")])
    agent = Agent("answerer", make_config(answerer=server.role(max_retries=3)))
    result = agent.run_sync("hi")

    assert result.ok and result.final_answer == "ok" and result.usage.calls == 4
    calls = agent.recorder.calls
    assert [c.status for c in calls] == ["error", "error", "error", "ok"]
    assert [c.error for c in calls[:3]] == ["HTTP 429: slow down", "HTTP 503: overloaded",
                                            "HTTP 500: scripted error"]
    assert all(c.trajectory_id == result.trajectory_id for c in calls)


def test_retry_after_from_the_server_is_respected(scripted, make_config):
    server = scripted([error(429, retry_after=0.6), reply("ok")])
    started = time.monotonic()
    result = Agent("answerer", make_config(answerer=server.role(backoff_s=0.01))).run_sync("hi")
    assert result.ok
    assert server.requests[1].at - server.requests[0].at >= 0.6
    assert time.monotonic() - started < 3


def test_backoff_grows_exponentially_with_jitter():
    for attempt in range(8):
        ceiling = min(60.0, 0.5 * 2 ** attempt)
        delays = {backoff_delay(attempt, 0.5) for _ in range(50)}
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert len(delays) > 1  # jittered: agents that failed together do not retry together
    assert backoff_delay(0, 0.5, server_asked=7.0) == 7.0


def test_a_client_error_is_not_retried(scripted, make_config):
    server = scripted([error(400, "maximum context length is 8192 tokens"), reply("never")])
    result = Agent("answerer", make_config(answerer=server.role())).run_sync("hi")
    assert result.stop_reason == StopReason.ERROR
    assert result.error == "HTTP 400: maximum context length is 8192 tokens"
    assert len(server.requests) == 1


def test_the_run_stops_with_an_error_when_retries_run_out(scripted, make_config):
    server = scripted([error(500)] * 4)
    result = Agent("answerer", make_config(answerer=server.role(max_retries=2))).run_sync("hi")
    assert result.stop_reason == StopReason.ERROR
    assert result.error == "HTTP 500: scripted error after 3 attempts"
    assert len(server.requests) == 3 and server.remaining == 1


def test_a_slow_reply_times_out_and_is_retried(scripted, make_config):
    server = scripted([reply("late", delay_s=2.0), reply("on time")])
    agent = Agent("answerer", make_config(answerer=server.role(timeout_s=0.3)))
    result = agent.run_sync("hi")
    assert result.ok and result.final_answer == "on time"
    assert agent.recorder.calls[0].error == "timeout: the endpoint did not answer in time"
    assert agent.recorder.calls[0].latency_s == pytest.approx(0.3, abs=0.2)


def test_an_endpoint_that_is_down_gives_a_connection_error(make_config):
    with socket.socket() as probe:  # a loopback port that nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    from tasksynth.config import RoleConfig

    role = RoleConfig(base_url=f"http://127.0.0.1:{port}/v1", max_retries=1, backoff_s=0.01, timeout_s=2)
    result = Agent("answerer", make_config(answerer=role)).run_sync("hi")
    assert result.stop_reason == StopReason.ERROR
    assert result.error.startswith("connection error") and result.error.endswith("after 2 attempts")


# ---------------------------------------------------------------------------------------------- concurrency


def test_concurrency_is_limited_per_endpoint_across_threads(scripted, make_config):
    server = scripted(lambda body: reply("ok", delay_s=0.15))
    config = make_config(answerer=server.role(concurrency=2))

    def batch() -> list[str]:
        async def many():
            return await asyncio.gather(*(Agent("answerer", config).run(f"q{i}") for i in range(3)))

        return [r.stop_reason for r in asyncio.run(many())]

    with ThreadPoolExecutor(max_workers=2) as pool:  # two event loops in two threads, one endpoint
        outcomes = [s for f in [pool.submit(batch) for _ in range(2)] for s in f.result()]
    assert outcomes == [StopReason.ANSWER] * 6
    assert server.peak_concurrency == 2


def test_hundreds_of_agents_run_at_once(scripted, make_config):
    server = scripted(lambda body: reply(f"answer to {body['messages'][-1]['content']}", delay_s=0.05))
    config = make_config(answerer=server.role(concurrency=64))
    recorder = BufferedRecorder()

    async def many():
        return await asyncio.gather(*(Agent("answerer", config, recorder=recorder).run(f"q{i}")
                                      for i in range(200)))

    started = time.monotonic()
    results = asyncio.run(many())
    elapsed = time.monotonic() - started
    assert [r.final_answer for r in results] == [f"answer to q{i}" for i in range(200)]
    assert server.peak_concurrency > 8  # they really overlapped
    assert len(recorder.calls) == 200 and len(recorder.trajectories) == 200
    assert elapsed < 30, f"200 one-call agents took {elapsed:.1f}s"


# ---------------------------------------------------------------------------------------------- accounting


def _question_builder_script():
    return [reply(tool_calls=[tool_call("add", {"a": 1, "b": 2})], usage=(1200, 80)),
            reply("What is 1 + 2?", usage=(1400, 20))]


def test_calls_and_trajectories_are_stored_and_cost_per_role_is_one_query(scripted, make_config, tmp_path):
    qb = scripted(_question_builder_script())
    ans = scripted([error(429, retry_after=0), reply("3", usage=(500, 5))])
    config = make_config(question_builder=qb.role(), answerer=ans.role())
    with open_store(config) as store:
        recorder = StoreRecorder(store)
        question = Agent("question_builder", config, tools=[add], recorder=recorder, flow_run_id="run-1",
                         system_prompt="Write a question.").run_sync("Use add.")
        answer = Agent("answerer", config, recorder=recorder, flow_run_id="run-1").run_sync(question.final_answer)

        today = store.query("""
            select role, count(*) as calls, sum(prompt_tokens) as prompt, sum(completion_tokens) as completion,
                   sum(cost_usd) as cost, count(*) filter (where status = 'error') as failed
            from agent_calls where created_at >= current_date group by role order by role""")
        assert today == [
            {"role": "answerer", "calls": 2, "prompt": 500, "completion": 5,
             "cost": pytest.approx((500 * 0.28 + 5 * 0.42) / 1e6), "failed": 1},
            {"role": "question_builder", "calls": 2, "prompt": 2600, "completion": 100,
             "cost": pytest.approx((2600 * 0.28 + 100 * 0.42) / 1e6), "failed": 0},
        ]
        assert question.cost_usd == pytest.approx(today[1]["cost"])
        rows = store.query("select endpoint, model, flow_run_id, trajectory_id, latency_s from agent_calls "
                           "where role = 'question_builder'")
        assert {(r["endpoint"], r["model"], r["flow_run_id"], r["trajectory_id"]) for r in rows} == {
            (qb.base_url, "scripted-model", "run-1", question.trajectory_id)}
        assert all(r["latency_s"] > 0 for r in rows)

        trajectories = store.query("select * from trajectories order by role")
        assert [(t["role"], t["turns"], t["stop_reason"], t["flow_run_id"]) for t in trajectories] == [
            ("answerer", 1, "answer", "run-1"), ("question_builder", 2, "answer", "run-1")]
        transcript = json.loads(store.get_text(trajectories[1]["transcript"]))
        assert transcript["final_answer"] == "What is 1 + 2?"
        assert [m["role"] for m in transcript["messages"]] == ["system", "user", "assistant", "tool", "assistant"]
        assert transcript["usage"] == {"calls": 2, "prompt_tokens": 2600, "completion_tokens": 100}
        blob = store.query("select media_type from blobs where sha256 = ?", [trajectories[1]["transcript"]])
        assert blob == [{"media_type": "application/json"}]
        assert answer.ok

    # the same question through the command line
    sql = ("select round(sum(cost_usd), 8) as cost from agent_calls "
           "where role = 'question_builder' and created_at >= current_date")
    out = subprocess.run([sys.executable, "-m", "tasksynth.cli.main", "sql", "--json", sql], cwd=tmp_path,
                         env={**os.environ, "TASKSYNTH_HOME": config.home}, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == [{"cost": pytest.approx(round((2600 * 0.28 + 100 * 0.42) / 1e6, 8))}]


def test_buffered_records_travel_to_the_flow_process_and_are_written_once(scripted, make_config, store):
    server = scripted(lambda body: reply("ok", usage=(10, 2)))
    config = make_config(answerer=server.role())

    def task(i: int) -> bytes:  # a worker: runs an agent, hands its records back pickled
        recorder = BufferedRecorder()
        Agent("answerer", config, recorder=recorder, flow_run_id="run-2").run_sync(f"q{i}")
        return pickle.dumps(recorder)

    with ThreadPoolExecutor(max_workers=3) as pool:
        recorders = [pickle.loads(blob) for blob in pool.map(task, range(3))]
    assert store.query("select count(*) as n from agent_calls") == [{"n": 0}]  # workers never touched it
    for recorder in recorders:
        calls, trajectories = recorder.drain()
        write_records(store, calls, trajectories)
        write_records(store, calls, trajectories)  # a retried flush writes nothing twice
    assert store.query("select count(*) as n, sum(prompt_tokens) as p from agent_calls") == [{"n": 3, "p": 30}]
    assert store.query("select count(distinct trajectory_id) as n from trajectories where flow_run_id = 'run-2'") \
        == [{"n": 3}]


def test_missing_usage_is_estimated_so_budgets_and_costs_still_count(scripted, make_config):
    server = scripted([reply("An answer of some length.", usage=None)])
    agent = Agent("answerer", make_config(answerer=server.role()), system_prompt="Answer briefly.")
    result = agent.run_sync("What is the capital of France? " * 10)
    call = agent.recorder.calls[0]
    assert call.prompt_tokens > 75 and 5 <= call.completion_tokens < 20
    assert result.usage.total_tokens == call.prompt_tokens + call.completion_tokens and result.cost_usd > 0


def test_the_api_key_is_read_from_its_variable_and_never_stored(scripted, make_config, monkeypatch, tmp_path):
    key = f"sk-test-{uuid.uuid4().hex}"
    monkeypatch.setenv("AGENT_TEST_API_KEY", key)
    keyed = scripted([reply("ok"), reply("ok")])
    open_role = scripted([reply("ok")])
    config = make_config(answerer=keyed.role(api_key_env="AGENT_TEST_API_KEY"), grader=open_role.role())
    with open_store(config) as store:
        Agent("answerer", config, recorder=StoreRecorder(store)).run_sync("hi")
        monkeypatch.setenv("AGENT_TEST_API_KEY", key + "-rotated")  # read at each run, not cached
        Agent("answerer", config, recorder=StoreRecorder(store)).run_sync("hi")
        Agent("grader", config, recorder=StoreRecorder(store)).run_sync("hi")
    assert [r.headers["authorization"] for r in keyed.requests] == [f"Bearer {key}", f"Bearer {key}-rotated"]
    assert open_role.requests[0].headers["authorization"] == "Bearer not-needed"
    for path in Path(config.home).rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert key.encode() not in data, f"the key leaked into {path}"
    import zstandard

    for blob in Path(config.home, "blobs").rglob("*.zst"):
        assert key.encode() not in zstandard.ZstdDecompressor().decompress(blob.read_bytes())


def test_a_store_recorder_is_safe_from_many_threads(scripted, make_config, store):
    server = scripted(lambda body: reply("ok"))
    config = make_config(answerer=server.role())
    recorder = StoreRecorder(store)
    barrier = threading.Barrier(4)

    def worker(i: int) -> str:
        barrier.wait()
        return Agent("answerer", config, recorder=recorder).run_sync(f"q{i}").stop_reason

    with ThreadPoolExecutor(max_workers=4) as pool:
        assert list(pool.map(worker, range(4))) == [StopReason.ANSWER] * 4
    assert store.query("select count(*) as n from agent_calls") == [{"n": 4}]
    assert store.query("select count(*) as n from trajectories") == [{"n": 4}]


def test_a_cancelled_run_is_still_accounted(scripted, make_config):
    server = scripted([reply("too slow", delay_s=2.0)])
    agent = Agent("answerer", make_config(answerer=server.role()))

    async def impatient():
        await asyncio.wait_for(agent.run("hi"), timeout=0.3)

    with pytest.raises(TimeoutError):
        asyncio.run(impatient())
    assert [(c.status, c.error) for c in agent.recorder.calls] == [("error", "cancelled")]
    assert [t.stop_reason for t in agent.recorder.trajectories] == ["cancelled"]


def test_the_endpoint_limit_survives_cancelled_waiters():
    from agent import EndpointLimiter

    async def scenario():
        limiter = EndpointLimiter(1)
        await limiter.acquire()                          # A holds the only slot
        waiting = asyncio.ensure_future(limiter.acquire())   # B waits
        await asyncio.sleep(0.01)
        waiting.cancel()                                 # B gives up
        with pytest.raises(asyncio.CancelledError):
            await waiting
        limiter.release()                                # A done: the slot must not go to B
        await asyncio.wait_for(limiter.acquire(), 1)     # C gets it at once
        assert limiter.in_flight == 1
        limiter.release()
        return limiter.in_flight, limiter.peak

    assert asyncio.run(scenario()) == (0, 1)
