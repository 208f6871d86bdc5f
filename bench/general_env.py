"""Benchmark: pass@k attempts per second on a general tool environment.

(1) The harness alone: a solver scripted by a zero-latency OpenAI-compatible server on 127.0.0.1 (the test
    suite's scripted server) makes two tool calls and answers; every tool call runs in the sandbox's call
    pool on the attempt's own copy of the database, and each attempt is graded from its trajectory exactly as
    `general_env.attempts` does in the pipeline (the checks on the state its episode left, one call; a replay
    on a fresh copy when the episode's calls are not the trajectory's). Baseline, same run: the same loop
    with the tools and checks run in this process with no isolation at all (the floor the sandbox adds its
    cost to). Target: >= 50 attempts/s on 2 cores. Besides attempts/s it prints the CPU-seconds one attempt
    costs, in this process and in the containers, the figure to compare on a machine other work also loads.
(2) With the bundled runner (`--runner-url URL`, a `tasksynth runner serve` already started): attempts per
    second of the real model on the same task, and where the time goes (model, sandbox, the rest).

    python bench/general_env.py [--attempts 200] [--concurrency 4] [--runner-url http://127.0.0.1:8000/v1]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "support"), str(ROOT / "tests" / "general_env")]

from scripted_server import ScriptedServer, reply, tool_call  # noqa: E402
from world_fixtures import TOOLS, VERIFIER, make_world  # noqa: E402

from agent import Agent, BufferedRecorder  # noqa: E402
from general_env import harness  # noqa: E402
from general_env.attempts import Episode, environment_tools, graded_in_episode, replay_grade  # noqa: E402
from general_env.bundle import Bundle  # noqa: E402
from general_env.execution import WorldExecutor  # noqa: E402
from general_env.tool_code import parse_tool_module  # noqa: E402
from tasksynth.config import Config, RoleConfig  # noqa: E402
from verifiers.general import grade_episode  # noqa: E402

TASK = {"task_id": "bench", "prompt": "Book the cheapest flight from LIS to OSL for Ada Lovelace; answer its id.",
        "verifier": VERIFIER, "expected_state_hash": None}


def solver_script(body: dict) -> dict:
    done = sum(m["role"] == "tool" for m in body["messages"])
    if done == 0:
        return reply(tool_calls=[tool_call("search_flights", {"origin": "LIS", "destination": "OSL"})])
    if done == 1:
        return reply(tool_calls=[tool_call("book_flight", {"flight_id": 2, "passenger": "Ada Lovelace"})])
    return reply("2")


class InProcessWorld:
    """The baseline: the harness in this process, a temporary copy of the database per attempt."""

    state_intact = True

    def __init__(self, database: Path):
        self.folder = tempfile.mkdtemp(prefix="bench-general-")
        self.db_path = str(shutil.copy(database, Path(self.folder) / "state.sqlite"))

    def run(self, entry: str, **arguments):
        if "db_path" in getattr(harness, entry).__code__.co_varnames:
            arguments.setdefault("db_path", self.db_path)
        return getattr(harness, entry)(**arguments)

    def close(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


class InProcessWorlds:
    """`WorldExecutor`'s shape with no sandbox at all."""

    @contextlib.contextmanager
    def attempt(self, database: Path):
        world = InProcessWorld(database)
        try:
            yield world
        finally:
            world.close()


def one_attempt(config: Config, bundle: Bundle, worlds, timings: dict, lock: threading.Lock) -> bool:
    """Solve and grade once, as `general_env.attempts.attempt_task` does; returns whether it was solved."""
    started = time.perf_counter()
    grade = None
    with worlds.attempt(bundle.database) as world:
        episode = Episode()
        agent = Agent("solver", config, tools=environment_tools(bundle, world, episode), recorder=BufferedRecorder(),
                      system_prompt="Solve it.")
        result = agent.run_sync(TASK["prompt"])
        solved_at = time.perf_counter()
        if graded_in_episode(world, episode, result.transcript):
            grade = grade_episode(TASK, result.transcript, episode.calls, db_path=world.db_path, run=world.run)
    if grade is None:
        grade = replay_grade(worlds, bundle, TASK, result.transcript)
    with lock:
        timings["solve"] += solved_at - started
        timings["grade"] += time.perf_counter() - solved_at
    return grade.reward == 1.0


def measure(config: Config, bundle: Bundle, worlds, attempts: int, concurrency: int,
            containers=lambda: []) -> tuple[float, float, dict]:
    """attempts/s, share solved, and where the time went: solve/grade seconds summed over threads, and
    CPU-seconds per attempt of this process (loop, endpoint, host side of the sandbox) and of the sandbox
    containers (their cgroups), comparable on a loaded machine where wall-clock rates are not."""
    timings = {"solve": 0.0, "grade": 0.0}
    lock = threading.Lock()
    one_attempt(config, bundle, worlds, timings, lock)  # warm: containers started, imports done
    timings = {"solve": 0.0, "grade": 0.0}
    containers_before = container_cpu_seconds(containers())
    host_before = time.process_time()
    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        solved = list(pool.map(lambda _: one_attempt(config, bundle, worlds, timings, lock), range(attempts)))
    wall = time.perf_counter() - started
    timings["host_cpu"] = (time.process_time() - host_before) / attempts
    after = container_cpu_seconds(containers())
    timings["container_cpu"] = sum(after[name] - containers_before.get(name, 0.0) for name in after) / attempts
    return attempts / wall, sum(solved) / attempts, timings


def container_cpu_seconds(names: list[str]) -> dict[str, float]:
    """CPU-seconds each running container has used so far (cgroup v1 cpuacct, or v2 cpu.stat)."""
    seconds = {}
    for name in names:
        inspected = subprocess.run(["docker", "inspect", "--format", "{{.Id}}", name], capture_output=True,
                                   text=True, check=False)
        container = inspected.stdout.strip()
        v1 = Path(f"/sys/fs/cgroup/cpuacct/docker/{container}/cpuacct.usage")
        v2 = Path(f"/sys/fs/cgroup/system.slice/docker-{container}.scope/cpu.stat")
        if container and v1.is_file():
            seconds[name] = int(v1.read_text()) / 1e9
        elif container and v2.is_file():
            usage = next(line for line in v2.read_text().splitlines() if line.startswith("usage_usec"))
            seconds[name] = int(usage.split()[1]) / 1e6
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--attempts", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--runner-url", default="", help="a running bundled runner, for part (2)")
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="bench-general-home-"))
    config = Config(home=str(home))
    config.sandbox.max_containers = max(config.sandbox.max_containers, args.concurrency)
    module = parse_tool_module(TOOLS)
    bundle = Bundle("travel planning", TOOLS, [t.spec() for t in module.tools],
                    {"search_flights": "read", "book_flight": "write"}, make_world(home / "master.sqlite"))
    print(f"machine: {os.cpu_count()} cores; load average before: {os.getloadavg()[0]:.2f}")
    with ScriptedServer(solver_script) as server:
        config.agents["solver"] = RoleConfig(base_url=server.base_url, model="scripted", concurrency=64,
                                             backoff_s=0.01)

        base_rate, base_solved, base_times = measure(config, bundle, InProcessWorlds(), args.attempts,
                                                     args.concurrency)
        with WorldExecutor(config) as worlds:
            rate, solved, times = measure(config, bundle, worlds, args.attempts, args.concurrency,
                                          worlds.pool.container_names)
    print(f"(1) harness alone, {args.attempts} attempts, concurrency {args.concurrency}, zero-latency endpoint:")
    print(f"    sandboxed (call pool):   {rate:7.1f} attempts/s  (solved {solved:.0%}; solve {times['solve']:.1f} s, "
          f"grade {times['grade']:.1f} s summed over threads)")
    print(f"        CPU per attempt: {times['host_cpu'] * 1000:.1f} ms in this process (loop, endpoint, host side) "
          f"+ {times['container_cpu'] * 1000:.1f} ms in the containers = "
          f"{(times['host_cpu'] + times['container_cpu']) * 1000:.1f} ms; "
          f"{os.cpu_count()} cores at that cost: {os.cpu_count() / (times['host_cpu'] + times['container_cpu']):.0f} "
          "attempts/s")
    print(f"    in-process, no isolation: {base_rate:7.1f} attempts/s  (solved {base_solved:.0%}; "
          f"{base_times['host_cpu'] * 1000:.1f} ms CPU per attempt)")
    print(f"    ratio sandboxed / in-process: {rate / base_rate:.2f}; target >= 50 attempts/s: "
          f"{'met' if rate >= 50 else 'missed'}")
    if args.runner_url:
        runner_part(config, bundle, args.runner_url)
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    shutil.rmtree(home, ignore_errors=True)


def runner_part(config: Config, bundle: Bundle, url: str, attempts: int = 8) -> None:
    """(2): the bundled runner as the solver; time in the model vs the sandbox vs the rest."""
    config.agents["solver"] = RoleConfig(base_url=url, model="smollm2-135m-dsa", max_tokens=96, max_turns=4,
                                         timeout_s=300, temperature=0.7)
    model_seconds = 0.0
    sandbox_seconds = 0.0
    started = time.perf_counter()
    solved = 0
    with WorldExecutor(config) as worlds:
        for _ in range(attempts):
            grade = None
            with worlds.attempt(bundle.database) as world:
                original = world.run

                def timed(entry, **kw):
                    nonlocal sandbox_seconds
                    t0 = time.perf_counter()
                    try:
                        return original(entry, **kw)
                    finally:
                        sandbox_seconds += time.perf_counter() - t0

                world.run = timed
                recorder = BufferedRecorder()
                episode = Episode()
                agent = Agent("solver", config, tools=environment_tools(bundle, world, episode), recorder=recorder)
                result = agent.run_sync(TASK["prompt"])
                model_seconds += sum(c.latency_s for c in recorder.calls)
                if graded_in_episode(world, episode, result.transcript):
                    grade = grade_episode(TASK, result.transcript, episode.calls, db_path=world.db_path, run=timed)
            if grade is None:
                t0 = time.perf_counter()
                grade = replay_grade(worlds, bundle, TASK, result.transcript)
                sandbox_seconds += time.perf_counter() - t0
            solved += grade.reward == 1.0
    wall = time.perf_counter() - started
    print(f"(2) bundled runner on the CPU, {attempts} attempts one at a time: {attempts / wall:.3f} attempts/s, "
          f"solved {solved}/{attempts}; time in the model {model_seconds / wall:.0%}, in the sandbox "
          f"{sandbox_seconds / wall:.0%}, the rest {(wall - model_seconds - sandbox_seconds) / wall:.0%}")


if __name__ == "__main__":
    main()
